"""How `relayctl backfill` shows a running backfill: a rich bar on a TTY, JSON lines otherwise."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from relayctl.core import formatting as fmt
from relayctl.core.backfill import BackfillProgress


class BackfillView:
    """Receives engine events; never touches Redis."""

    def __init__(self, as_json: bool = False, tty: bool | None = None) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._console = Console(stderr=False)

    def _line(self, event: str, p: BackfillProgress) -> None:
        click.echo(json.dumps({"event": event, "time": fmt.iso_ms(time.time()), **p.as_dict()},
                              sort_keys=True))

    def event(self, event: str, p: BackfillProgress) -> None:
        if self.as_json:
            return
        if not self.tty:
            self._line(event, p)
            return
        if event == "start":
            for line in p.preflight:
                click.echo(f"preflight: {line}", err=True)
            for line in p.refusals:
                click.echo(f"preflight: would refuse --execute: {line}", err=True)
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[rate]:>9,.0f} keys/s"), TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"),
                console=self._console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(p.mode, total=1000, rate=0.0, counts="")
        counts = (f"scanned {p.scanned:,} migrated {p.migrated:,} "
                  + " ".join(f"{k} {v:,}" for k, v in p.skipped.items() if v))
        desc = f"{p.mode} [{p.status}]"
        self._bar.update(self._task, completed=int(p.fraction * 1000), rate=p.rate,
                         counts=counts, description=desc)
        if event in ("checkpoint", "retry", "paused", "resumed", "stopped", "lost", "partial",
                     "throttled", "unthrottled", "tuned"):
            self._bar.console.print(
                f"{event}: scanned {p.scanned:,} migrated {p.migrated:,} cursor {p.cursor} "
                f"{p.message}".rstrip())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def summary(self, p: BackfillProgress, redis_display: str) -> None:
        data = {**p.as_dict(), "redis": redis_display}
        if self.as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=True))
        elif not self.tty:
            self._line("summary", p)
        else:
            skipped = ", ".join(f"{k}={v:,}" for k, v in p.skipped.items())
            click.echo(f"{p.mode} {p.status}: scanned {p.scanned:,}, migrated {p.migrated:,}, "
                       f"indexed {p.indexed:,}, healed {p.healed:,}, "
                       f"skipped {skipped}; {p.rate:,.0f} keys/s; run {p.run_id}")
