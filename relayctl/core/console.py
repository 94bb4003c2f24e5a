"""What the console shows, gathered in one bounded pass per refresh tick.

A tick is the read `relayctl status` makes (`overview.read_overview`: a fixed set of Redis
commands, no SCAN) plus one scrape per /metrics endpoint; rates come from deltas between
consecutive ticks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from relayctl.core import audit
from relayctl.core.backfill import BackfillKeys
from relayctl.core.census import Census
from relayctl.core.checklist import ChecklistState
from relayctl.core.connection import describe_redis_error
from relayctl.core.engine_version import server_identity
from relayctl.core.evaluation import GateConfig
from relayctl.core.gates import GateResult
from relayctl.core.overview import FlagRow, read_overview
from relayctl.core.phases import LAST_PHASE
from relayctl.core.scrape import Snapshot, SourceError, scrape

__all__ = ["ConsoleState", "FlagRow", "Rates", "refresh"]

HISTORY = 60


@dataclass
class Rates:
    """Counts over the last tick interval, from scrape deltas."""

    reads: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("new", "old", "miss"), 0.0))
    lists: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("new", "mixed", "old"), 0.0))
    dual_ok: float = 0.0
    dual_failed: float = 0.0
    seconds: float = 0.0

    def share(self, path: str) -> float | None:
        total = sum(self.reads.values())
        return self.reads[path] / total if total else None

    def list_share(self, path: str) -> float | None:
        total = sum(self.lists.values())
        return self.lists[path] / total if total else None

    @property
    def dual_success(self) -> float | None:
        total = self.dual_ok + self.dual_failed
        return self.dual_ok / total if total else None

    @property
    def failures_per_min(self) -> float:
        return self.dual_failed * 60 / self.seconds if self.seconds else 0.0


@dataclass
class ConsoleState:
    """Everything a frame draws. Kept between ticks so a failed source shows stale values."""

    ts: float = 0.0
    redis_status: str = "CONNECTING"
    redis_error: str = ""
    metrics_status: str = "NONE"
    metrics_error: str = ""
    flags: list[FlagRow] = field(default_factory=list)
    instances: int = 0
    backfill: dict[str, str] = field(default_factory=dict)
    engine_alive: bool = False
    census: Census | None = None
    verify: dict | None = None
    memory: dict[str, int] = field(default_factory=dict)
    audit: list[audit.AuditEntry] = field(default_factory=list)
    checklist: ChecklistState = field(default_factory=ChecklistState)
    gates: list[GateResult] = field(default_factory=list)
    triggers: list[GateResult] = field(default_factory=list)
    rates: Rates = field(default_factory=Rates)
    new_share_history: list[float] = field(default_factory=list)
    redis_updated: float = 0.0
    metrics_updated: float = 0.0
    server: str = ""  # "Redis 7.0.15" / "Valkey 9.1.2": read once per client
    # wall-clock time of the last good Redis read: an engine's heartbeat is wall-clock time,
    # while `ts` may run on the demo's scaled clock (or a test's offset)
    read_wall: float = 0.0
    last_scrape: Snapshot | None = None

    @property
    def phase_number(self) -> int:
        return min(self.checklist.phase, LAST_PHASE)


def _rates(now: Snapshot, before: Snapshot | None) -> Rates:
    rates = Rates()
    if before is None:
        return rates
    d = now.minus(before)
    rates.seconds = max(now.ts - before.ts, 0.0)
    for p in rates.reads:
        rates.reads[p] = d.total("relay_job_read_path_total", path=p)
    for p in rates.lists:
        rates.lists[p] = d.total("relay_job_list_read_path_total", path=p)
    rates.dual_ok = d.total("relay_dual_write_attempt_total", result="succeeded")
    rates.dual_failed = d.total("relay_dual_write_attempt_total", result="failed")
    return rates


def refresh(state: ConsoleState, client: redis.Redis | None, metrics_urls: list[str],
            redis_url: str | None, now: float | None = None,
            backfill_keys: BackfillKeys | None = None,
            gates: GateConfig | None = None) -> ConsoleState:
    """One tick: update `state` in place from Redis and /metrics; failures mark sources
    DOWN/STALE and keep the last values.

    `gates` (thresholds and sources, from `evaluation.gate_config`) defaults to the seeds'
    thresholds over `metrics_urls` and `redis_url`; when given, its metrics URLs are scraped.
    """
    if gates is None:
        gates = GateConfig(redis_url=redis_url, metrics_urls=tuple(metrics_urls))
    state.ts = time.time() if now is None else now
    shared: dict = {}
    if gates.metrics_urls:
        try:
            snap = scrape(gates.metrics_urls)
            state.rates = _rates(snap, state.last_scrape)
            state.last_scrape = snap
            state.metrics_status, state.metrics_error = "OK", ""
            state.metrics_updated = state.ts
            share = state.rates.share("new")
            if share is not None:
                state.new_share_history = [*state.new_share_history, share][-HISTORY:]
            shared["raw"] = (snap, None)
        except SourceError as exc:
            state.metrics_status = "STALE" if state.metrics_updated else "DOWN"
            state.metrics_error = str(exc)
            shared["raw"] = exc
    else:
        state.metrics_status = "NONE"
    if client is None:
        state.redis_status = "DOWN"
        return state
    try:
        view = read_overview(client, gates, now=lambda: state.ts, shared=shared,
                             backfill_keys=backfill_keys)
        ident = server_identity(client)
    except (redis.RedisError, OSError) as exc:
        state.redis_status = "RECONNECTING" if state.redis_updated else "DOWN"
        state.redis_error = describe_redis_error(exc)
        return state
    state.flags, state.instances = view.flags, len(view.instances)
    state.backfill, state.engine_alive = view.backfill, view.engine_alive
    state.census, state.verify, state.memory = view.census, view.verify, view.memory
    state.audit, state.checklist = view.audit, view.checklist
    state.gates, state.triggers = view.gates, view.triggers
    state.redis_status, state.redis_error = "CONNECTED", ""
    state.redis_updated = state.ts
    state.server = ident.label if ident else ""
    state.read_wall = time.time()
    return state
