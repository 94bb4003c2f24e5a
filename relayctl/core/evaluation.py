"""How every caller evaluates gates: `relayctl check`, `checklist`, `status` and the console.

The thresholds and sources come from one `GateConfig`, merged from `--config` and the global
options and validated once, so the console and the CLI give the same verdict on the same data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from relayctl.core.checklist import ChecklistState, read_checklist
from relayctl.core.config import Config
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.exitcodes import ExitCode
from relayctl.core.gates import (
    METRIC_NAMES,
    THRESHOLDS,
    GateContext,
    GateResult,
    WindowTooShort,
    evaluate_phase,
    overall,
)
from relayctl.core.keys import KeySchema
from relayctl.core.phases import LAST_PHASE, PHASES, phase
from relayctl.core.scrape import Prometheus, PromOptions, parse_header, parse_selector

AUDIT_SCAN = 5000  # audit entries the time gates look back through (newest first)


@dataclass(frozen=True)
class GateConfig:
    """Where the gates read and which thresholds they apply (every threshold present)."""

    redis_url: str | None = None
    metrics_urls: tuple[str, ...] = ()
    prometheus_url: str | None = None
    window_s: float | None = None
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(THRESHOLDS))
    schema: KeySchema = field(default_factory=KeySchema)
    audit_scan: int = AUDIT_SCAN
    prometheus: PromOptions | None = None
    metric_names: Mapping[str, str] = field(default_factory=dict)


def gate_config(config: Config, *, redis_url: str | None = None,
                metrics_urls: list[str] | tuple[str, ...] = (),
                prometheus_url: str | None = None,
                window_s: float | None = None,
                prometheus_selector: str | None = None,
                prometheus_bearer_token_file: str | None = None,
                prometheus_ca: str | None = None,
                prometheus_headers: list[str] | tuple[str, ...] = ()) -> GateConfig:
    """The config file's thresholds over the seeds' defaults, with the given sources.

    A threshold the gates do not know, or one that is not a finite number >= 0, is a
    UsageError naming it (a typo must not silently leave the default in force).
    """
    unknown = set(config.thresholds) - set(THRESHOLDS)
    if unknown:
        raise UsageError(f"unknown threshold(s) in config: {', '.join(sorted(unknown))}")
    for name, value in sorted(config.thresholds.items()):
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"threshold {name} in config must be a finite number >= 0, "
                             f"not {value!r}")
    if window_s is not None and not (math.isfinite(window_s) and window_s > 0):
        raise UsageError(f"--window must be a positive number of seconds, not {window_s!r}")
    unknown = set(config.metric_names) - set(METRIC_NAMES)
    if unknown:
        raise UsageError(f"unknown metric(s) in [metrics.names]: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(METRIC_NAMES)})")
    urls = tuple(u.strip() for u in metrics_urls if u.strip())
    prom_url = (prometheus_url or "").strip() or None
    options = None
    if prom_url:
        options = PromOptions(
            prom_url, selector=parse_selector(prometheus_selector or config.prometheus_selector),
            bearer_token_file=prometheus_bearer_token_file or None, ca=prometheus_ca or None,
            headers=tuple(parse_header(h) for h in prometheus_headers))
        Prometheus(options)  # a bad URL, CA or token file fails here, not in every gate
    return GateConfig(redis_url=redis_url, metrics_urls=urls, prometheus_url=prom_url,
                      window_s=window_s, thresholds={**THRESHOLDS, **config.thresholds},
                      schema=config.schema, prometheus=options,
                      metric_names=dict(config.metric_names))


def gate_context(gates: GateConfig, client: redis.Redis | None, state: ChecklistState | None,
                 number: int, *, now: Callable[[], float] = time.time,
                 shared: dict[str, Any] | None = None) -> GateContext:
    """The GateContext of phase `number`: the configured sources and thresholds plus the
    baselines the checklist recorded when the phase was applied."""
    ctx = GateContext(client=client, redis_url=gates.redis_url,
                      metrics_urls=list(gates.metrics_urls), prometheus_url=gates.prometheus_url,
                      window_s=gates.window_s, schema=gates.schema,
                      prometheus_options=gates.prometheus, metric_names=dict(gates.metric_names),
                      thresholds=dict(gates.thresholds), now=now,
                      shared={} if shared is None else shared, audit_scan=gates.audit_scan)
    if state is not None:
        ctx.baseline = state.baselines.get(number)
        ctx.baseline_memory = state.memory.get(number)
        # a phase with no flags to apply records nothing: the last baseline before it counts
        # (no eviction since then covers this phase too)
        earlier = [n for n in state.evicted if n <= number]
        ctx.baseline_evicted = state.evicted[max(earlier)] if earlier else None
    ctx.target_flags = phase(number).target_flags if number <= LAST_PHASE else None
    return ctx


@dataclass(frozen=True)
class PhaseCheck:
    number: int
    title: str
    gates: list[GateResult]

    @property
    def exit(self) -> ExitCode:
        return overall(self.gates)


@dataclass(frozen=True)
class CheckReport:
    phases: list[PhaseCheck]
    metrics_read: list[str] = field(default_factory=list)
    prometheus_queries: list[str] = field(default_factory=list)
    redis_error: str | None = None  # Redis unreachable: its gates are UNKNOWN, the exit 4

    @property
    def exit(self) -> ExitCode:
        if self.redis_error is not None:
            return ExitCode.LOST
        return overall([g for p in self.phases for g in p.gates])

    def as_dict(self) -> dict[str, Any]:
        return {"phases": [{"phase": p.number, "title": p.title, "exit": p.exit,
                            "gates": [g.as_dict() for g in p.gates]} for p in self.phases],
                "metrics_read": self.metrics_read,
                "prometheus_queries": len(self.prometheus_queries), "exit": self.exit,
                "redis_error": self.redis_error}


def check_phases(gates: GateConfig, connect: Callable[[], redis.Redis],
                 numbers: list[int] | None = None, *,
                 now: Callable[[], float] = time.time) -> CheckReport:
    """Evaluate the given phases (default: the checklist's current one), scraping once.

    An unreachable Redis still yields a report: its gates say UNKNOWN, the metric gates still
    answer, the current phase is taken as 0, and the report's exit is 4 (Redis lost).
    """
    client: redis.Redis | None
    redis_error: str | None = None
    try:
        client = connect()
        state: ChecklistState | None = read_checklist(client)
    except (RedisUnavailableError, redis.ConnectionError, redis.TimeoutError) as exc:
        client, state = None, None
        redis_error = str(exc) if isinstance(exc, RedisUnavailableError) \
            else f"Redis unreachable ({type(exc).__name__})"
    if numbers is None:
        numbers = [min(state.phase if state is not None else 0, LAST_PHASE)]
    shared: dict[str, Any] = {}
    checks = [PhaseCheck(n, phase(n).title, evaluate_phase(
        gate_context(gates, client, state, n, now=now, shared=shared), phase(n)))
        for n in numbers]
    window = shared.get("prom:window")
    if isinstance(window, WindowTooShort):
        raise UsageError(str(window))
    return CheckReport(checks, metrics_read=sorted(shared.get("names_read", ())),
                       prometheus_queries=list(shared.get("prom:queries", ())),
                       redis_error=redis_error)


ALL_PHASES = [p.number for p in PHASES]
