"""What every command shares: the global options' Context, JSON output, confirmation, gates."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from relayctl.core.config import Config
from relayctl.core.connection import TLSOptions, connect, parse_target, redact_text
from relayctl.core.errors import UsageError

if TYPE_CHECKING:
    import redis

    from relayctl.core.evaluation import GateConfig
    from relayctl.core.gates import GateResult


@dataclass(frozen=True)
class PromFlags:
    """The --prometheus-* connection options (the URL itself is Context.prometheus_url)."""

    selector: str | None = None
    bearer_token_file: str | None = None
    ca: str | None = None
    headers: tuple[str, ...] = ()


@dataclass
class Context:
    """Global options shared by every command."""

    redis_url: str | None
    metrics_urls: list[str]
    prometheus_url: str | None
    actor: str
    allow_plaintext: bool
    config: Config
    tls: TLSOptions = field(default_factory=TLSOptions)
    config_path: str | None = None
    prometheus: PromFlags = field(default_factory=PromFlags)
    _client: redis.Redis | None = field(default=None, repr=False)
    _demo: Any = field(default=False, repr=False)  # False: not looked up yet

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.redis_url, allow_plaintext=self.allow_plaintext,
                                   tls=self.tls)
        return self._client

    @property
    def redis_display(self) -> str:
        return parse_target(self.redis_url, self.allow_plaintext).display

    def demo_clock(self) -> Any:
        """The embedded demo's scaled clock when this Redis is the demo's (one HGETALL, once
        per process, only once connected), so the CLI reads time as the demo's console does."""
        if self._demo is False and self._client is not None:
            from relayctl.core.demo import stored_clock

            try:
                self._demo = stored_clock(self._client)
            except Exception:  # no such key, or no permission: the wall clock
                self._demo = None
        return self._demo or None

    def now(self) -> float:
        """Wall clock (the demo's scaled clock on the demo), shifted by
        RELAYCTL_CLOCK_OFFSET_S (tests and demos of time gates)."""
        try:
            offset = float(os.environ.get("RELAYCTL_CLOCK_OFFSET_S", "0") or 0)
        except ValueError:
            raise UsageError("RELAYCTL_CLOCK_OFFSET_S must be a number of seconds") from None
        demo = self.demo_clock()
        return (demo() if demo else time.time()) + offset

    def gates(self, window: float | None = None) -> GateConfig:
        """The gates' thresholds and sources, merged and validated by core (as the console)."""
        from relayctl.core.evaluation import gate_config

        p = self.prometheus
        config = gate_config(self.config, redis_url=self.redis_url,
                             metrics_urls=self.metrics_urls,
                             prometheus_url=self.prometheus_url, window_s=window,
                             prometheus_selector=p.selector,
                             prometheus_bearer_token_file=p.bearer_token_file,
                             prometheus_ca=p.ca, prometheus_headers=p.headers)
        demo = self.demo_clock()
        if demo is None:
            return config
        from dataclasses import replace

        from relayctl.core.demo import scaled_thresholds

        return replace(config, thresholds=scaled_thresholds(dict(config.thresholds), demo.speed))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int) -> None:
    click.echo(f"relayctl: error: {redact_text(message)}", err=True)
    sys.exit(code)


def confirm_dangerous(action: str, yes: bool) -> None:
    """Dangerous commands ask on a TTY and need --yes otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {action} without --yes (no TTY to confirm on)")
    if not click.confirm(f"{action[0].upper()}{action[1:]}?", default=False):
        raise UsageError("cancelled")


_STATUS_STYLE = {"PASS": "green", "FAIL": "red", "WAIT": "yellow", "UNKNOWN": "magenta"}


def print_gates(results: list[GateResult], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("gate", no_wrap=True)
    table.add_column("status")
    table.add_column("value")
    table.add_column("threshold")
    table.add_column("detail")
    for r in results:
        style = _STATUS_STYLE[r.status]
        table.add_row(r.gate, f"[{style}]{r.status}[/]", r.value, r.threshold, r.detail)
    Console().print(table)
