"""Dashboard panels. Each renders a ConsoleState; none talks to Redis."""

from __future__ import annotations

import time

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from relayctl.core.console import ConsoleState
from relayctl.core.gates import THRESHOLDS
from relayctl.core.phases import phase

STATUS_STYLE = {"PASS": "bold green", "FAIL": "bold red", "WAIT": "bold yellow",
                "UNKNOWN": "bold magenta"}
BADGE = {"CONNECTED": "on dark_green", "OK": "on dark_green", "RECONNECTING": "on dark_orange3",
         "STALE": "on dark_orange3", "DOWN": "on red", "CONNECTING": "on grey30",
         "NONE": "on grey30"}


def pct(x: float | None) -> str:
    return "  -  " if x is None else f"{x * 100:5.1f}%"


def ago(ts: float, now: float) -> str:
    if not ts:
        return "-"
    s = max(now - ts, 0)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    if s < 2 * 86400:
        return f"{s / 3600:.1f}h ago"
    return f"{s / 86400:.1f}d ago"


def share_style(share: float | None) -> str:
    """The seed's thresholds as colours: <50% red, <80% yellow, else green."""
    if share is None:
        return "dim"
    if share < THRESHOLDS["new_read_share_50"]:
        return "bold red"
    if share < THRESHOLDS["new_read_share_80"]:
        return "bold yellow"
    return "bold green"


class HeaderBar(Static):
    """Badges: Redis, metrics, LIVE/PAUSED + interval, READ-ONLY, phase."""

    def show(self, state: ConsoleState, *, redis_display: str, tls: bool, paused: bool,
             interval: float, read_only: bool) -> None:
        compact = self.size.width and self.size.width < 120
        t = Text()
        if not compact:
            t.append(" relayctl ", style="bold reverse")
            t.append(" ")
        t.append(f" {redis_display}{' TLS' if tls else ''} ", style="bold")
        t.append(f" {state.redis_status} ", style=f"bold white {BADGE[state.redis_status]}")
        t.append(" metrics " if compact else "  metrics ")
        t.append(f" {state.metrics_status} ", style=f"bold white {BADGE[state.metrics_status]}")
        t.append("  ")
        if paused:
            t.append(" PAUSED ", style="bold black on yellow")
        else:
            t.append(" LIVE ", style="bold white on dark_green")
        t.append(f" {interval:g}s ")
        if read_only:
            t.append(" READ-ONLY ", style="bold white on blue")
            t.append(" ")
        if state.checklist.complete:
            t.append(" DONE " if compact else " ROLLOUT COMPLETE ",
                     style="bold white on dark_green")
        else:
            p = phase(state.phase_number)
            label = f" phase {p.number} " if compact else f" phase {p.number}: {p.title} "
            t.append(label, style="bold white on grey23")
        if state.redis_status in ("DOWN", "RECONNECTING") and state.redis_error:
            t.append(f"  {state.redis_error}", style="bold red")
        elif state.metrics_status in ("DOWN", "STALE") and state.metrics_error:
            t.append(f"  {state.metrics_error}", style="yellow")
        self.update(t)


class Panel(Vertical):
    """A bordered panel with a title; subclasses fill `body`."""

    DEFAULT_CLASSES = "panel"

    def __init__(self, title: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.border_title = title

    def compose(self) -> ComposeResult:
        yield Static(id=f"{self.id}-body", classes="body")

    @property
    def body(self) -> Static:
        return self.query_one(".body", Static)

    def show(self, state: ConsoleState) -> None:
        raise NotImplementedError

    def mark_stale(self, stale: bool) -> None:
        self.set_class(stale, "stale")


BLOCKS = " ▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int) -> Text:
    """New-read share history on a fixed 0-100% scale, coloured by the seed's thresholds."""
    t = Text()
    for v in values[-width:]:
        t.append(BLOCKS[min(int(v * (len(BLOCKS) - 1) + 0.5), len(BLOCKS) - 1)],
                 style=share_style(v))
    return t


class ReadPathPanel(Panel):

    def show(self, state: ConsoleState) -> None:
        r = state.rates
        t = Text()
        for path in ("new", "old", "miss"):
            share = r.share(path)
            style = share_style(share) if path == "new" else ""
            t.append(f"{path:>5} ", style="bold")
            t.append(pct(share), style=style)
            t.append(f"  {r.reads[path]:>6.0f}\n")
        t.append("target >80% new, rollback <50%\n", style="dim")
        t.append("history ", style="dim")
        t.append_text(spark(state.new_share_history, 40))
        self.body.update(t)


class ListPathPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        r = state.rates
        t = Text()
        for path in ("new", "mixed", "old"):
            t.append(f"{path:>6} ", style="bold")
            t.append(f"{pct(r.list_share(path))}  {r.lists[path]:>5.0f}\n")
        self.body.update(t)


class DualWritePanel(Panel):
    def show(self, state: ConsoleState) -> None:
        r = state.rates
        success = r.dual_success
        t = Text()
        t.append("success ", style="bold")
        style = "dim" if success is None else (
            "bold green" if success >= 1 - THRESHOLDS["dual_write_failure_1"] else
            "bold yellow" if success >= 1 - THRESHOLDS["dual_write_failure_5"] else "bold red")
        t.append(pct(success) + "\n", style=style)
        t.append("failed/min ", style="bold")
        t.append(f"{r.failures_per_min:.1f}\n",
                 style="bold red" if r.dual_failed else "")
        t.append(f"writes {r.dual_ok + r.dual_failed:.0f} this tick\n")
        t.append("fail <1%, rollback >5%", style="dim")
        self.body.update(t)


class BackfillPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        bf = state.backfill
        if not bf:
            self.body.update(Text("no backfill has run\n[b] start one", style="dim"))
            return
        scanned = int(bf.get("scanned", 0) or 0)
        total = state.census.old if state.census and state.census.old else 0
        status = bf.get("status", "?")
        head = Text()
        head.append(f"{status.upper():<10}", style="bold green" if status == "completed" else
                    "bold yellow" if status in ("paused", "partial", "stopped") else
                    "bold red" if status in ("lost", "failed") else "bold cyan")
        head.append(f" run {bf.get('run_id', '?')}")
        head.append("  engine alive" if state.engine_alive else "  engine not running",
                    style="green" if state.engine_alive else "dim")
        completed = total if status == "completed" else min(scanned, total)
        rate = float(bf.get("rate", 0) or 0)
        counts = Text(
            f"scanned {scanned:,}  migrated {int(bf.get('migrated', 0) or 0):,}\n"
            f"exists {bf.get('skipped_exists', 0)}  invalid {bf.get('skipped_invalid', 0)}  "
            f"filtered {bf.get('skipped_filtered', 0)}  errors {bf.get('errors', 0)}\n"
            f"owner {bf.get('owner', '-')}  heartbeat "
            f"{ago(float(bf.get('heartbeat', 0) or 0), state.ts)}")
        eta = ""
        if rate > 0 and total > scanned:
            eta = f"  ETA {(total - scanned) / rate:,.0f}s"
        # A ProgressBar ends without a newline: in a Group the rate would be drawn on the
        # bar's line and clipped (the ETA was lost). A grid row keeps both.
        bar = Table.grid(expand=True, padding=(0, 1))
        bar.add_column(ratio=1)
        bar.add_column(no_wrap=True, justify="right")
        bar.add_row(ProgressBar(total=max(total, 1), completed=completed),
                    Text(f"{rate:,.0f} keys/s{eta}"))
        self.body.update(Group(head, bar, counts))


class FlagsPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("flag", no_wrap=True)
        table.add_column("value", no_wrap=True, min_width=5)
        table.add_column("changed", no_wrap=True)
        table.add_column("fleet", no_wrap=True)
        for row in state.flags:
            value = Text("on" if row.value else "off",
                         style="bold green" if row.value else "bold")
            changed = Text(f"{row.actor} {ago(row.ts, state.ts)}") if row.actor else Text(
                "default" if row.stored is None else "-", style="dim")
            fleet = f"{row.agree}/{state.instances}"
            if row.pinned:
                fleet += " pinned: " + ",".join(row.pinned)
            style = "" if row.agree == state.instances else "bold yellow"
            table.add_row(row.name, value, changed, Text(fleet, style=style))
        self.body.update(table)


class KeyspacePanel(Panel):
    def show(self, state: ConsoleState) -> None:
        t = Text()
        c = state.census
        if c is None:
            t.append("no census yet  [u] run one\n", style="dim")
        else:
            t.append(f"old {c.old:,}  new {c.new:,}  index {c.index_entries:,}\n")
            t.append(f"census {ago(c.ts, state.ts)}\n", style="dim")
        m = state.memory
        if m:
            used = m.get("used", 0) / 2**20
            cap = m.get("maxmemory", 0)
            cap_txt = f"{cap / 2**20:,.0f} MiB" if cap else "no maxmemory"
            t.append(f"memory {used:,.1f} MiB / {cap_txt}\n")
            t.append(f"evictions {m.get('evicted', 0)}",
                     style="bold red" if m.get("evicted") else "")
        v = state.verify
        if v:
            t.append(f"\nverify {'CLEAN' if v['clean'] else 'DIFFERS'}",
                     style="bold green" if v["clean"] else "bold red")
            t.append(f" ({v['checked']:,} checked, {ago(v['ts'], state.ts)})")
        self.body.update(t)


class GatesPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("gate", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("value", no_wrap=True)
        # One line per row at any width: the grid sizes the row of a column-spanning panel
        # from its height at one column's width, so a table that wraps there leaves a hole.
        table.add_column("threshold", no_wrap=True, overflow="ellipsis")
        table.add_column("detail", ratio=1, no_wrap=True, overflow="ellipsis")
        for g in state.gates:
            table.add_row(g.gate, Text(g.status, style=STATUS_STYLE[g.status]), g.value,
                          g.threshold, Text(g.detail, style="dim"))
        firing = [g for g in state.triggers if g.status == "FAIL"]
        footer = Text()
        if firing:
            footer.append("ROLLBACK TRIGGER FIRING: " + ", ".join(g.gate for g in firing),
                          style="bold white on red")
        self.body.update(Group(table, footer))


class AuditPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("when", no_wrap=True)
        table.add_column("actor", no_wrap=True)
        table.add_column("action", no_wrap=True)
        for name in ("target", "change", "reason"):  # one line per entry (see GatesPanel)
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        for e in state.audit:
            change = f"{e.before}->{e.after}" if (e.before or e.after) else ""
            table.add_row(time.strftime("%m-%d %H:%M:%S", time.gmtime(e.ts)), e.actor, e.action,
                          e.target, change, e.reason)
        self.body.update(table)
