"""What the console shows, gathered in one bounded pass per refresh tick.

A tick issues a fixed set of Redis commands (no SCAN, nothing that grows with the keyspace)
and one scrape per /metrics endpoint; rates come from deltas between consecutive ticks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from relayctl.core import audit, fleet
from relayctl.core.backfill import BackfillKeys
from relayctl.core.census import Census, parse_census
from relayctl.core.checklist import ChecklistState, gate_context, parse_checklist
from relayctl.core.connection import describe_redis_error
from relayctl.core.flags import DEFAULTS, FLAG_NAMES, stored_flags
from relayctl.core.gates import GateResult, evaluate
from relayctl.core.keys import AUDIT_KEY, CENSUS_KEY, CHECKLIST_KEY, VERIFY_KEY, KeySchema
from relayctl.core.phases import LAST_PHASE, phase
from relayctl.core.scrape import Snapshot, SourceError, scrape
from relayctl.core.serverinfo import memory_info
from relayctl.core.verify import parse_verify

HISTORY = 60
AUDIT_ROWS = 30
FLAG_HISTORY_SCAN = 200


@dataclass
class FlagRow:
    name: str
    value: bool
    stored: bool | None
    actor: str = ""
    ts: float = 0.0
    reason: str = ""
    agree: int = 0
    pinned: list[str] = field(default_factory=list)


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
    last_scrape: Snapshot | None = None

    @property
    def phase_number(self) -> int:
        return min(self.checklist.phase, LAST_PHASE)


def _flag_rows(client: redis.Redis, instances: list[fleet.Instance]) -> list[FlagRow]:
    stored = stored_flags(client)
    last: dict[str, audit.AuditEntry] = {}
    for entry in reversed(audit.recent(client, FLAG_HISTORY_SCAN)):
        if entry.action == "flag.set":
            last[entry.target] = entry
    rows = []
    for name in FLAG_NAMES:
        value = stored.get(name, DEFAULTS[name])
        e = last.get(name)
        want = "on" if value else "off"
        rows.append(FlagRow(
            name=name, value=value, stored=stored.get(name),
            actor=e.actor if e else "", ts=e.ts if e else 0.0, reason=e.reason if e else "",
            agree=sum(1 for i in instances if i.flags.get(name) == want),
            pinned=[i.instance for i in instances if name in i.pinned],
        ))
    return rows


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
            thresholds: dict[str, float] | None = None,
            schema: KeySchema | None = None) -> ConsoleState:
    """One tick: update `state` in place from Redis and /metrics; failures mark sources
    DOWN/STALE and keep the last values."""
    state.ts = time.time() if now is None else now
    shared: dict = {}
    if metrics_urls:
        try:
            snap = scrape(metrics_urls)
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
    bk = backfill_keys or BackfillKeys()
    try:
        instances = fleet.live_instances(client, now=time.time())
        state.flags = _flag_rows(client, instances)
        state.instances = len(instances)
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(bk.state)
        pipe.exists(bk.lease)
        pipe.xrevrange(AUDIT_KEY, count=AUDIT_ROWS)
        pipe.hgetall(CENSUS_KEY)
        pipe.hgetall(VERIFY_KEY)
        pipe.hgetall(CHECKLIST_KEY)
        bf, lease, rows, census_raw, verify_raw, checklist_raw = pipe.execute()
        state.backfill, state.engine_alive = bf, bool(lease)
        state.memory = memory_info(client) or {}
        state.audit = [audit.AuditEntry.from_stream(i, f) for i, f in rows]
        state.census = parse_census(census_raw)
        state.verify = parse_verify(verify_raw)
        state.checklist = parse_checklist(checklist_raw)
        number = state.phase_number
        ctx = gate_context(client, state.checklist, number, redis_url=redis_url,
                           metrics_urls=metrics_urls, now=lambda: state.ts, shared=shared,
                           schema=schema or KeySchema())
        ctx.audit_scan = FLAG_HISTORY_SCAN
        # what this tick already read, the gates reuse instead of reading again
        ctx._cache.update({"census": state.census, "verify": state.verify, "backfill": bf,
                           "fleet": instances, "memory": state.memory or None})
        if thresholds:
            ctx.thresholds = {**ctx.thresholds, **thresholds}
        p = phase(number)
        state.gates = evaluate(ctx, p.gates)
        state.triggers = evaluate(ctx, p.trigger_gates)
        state.redis_status, state.redis_error = "CONNECTED", ""
        state.redis_updated = state.ts
    except (redis.RedisError, OSError) as exc:
        state.redis_status = "RECONNECTING" if state.redis_updated else "DOWN"
        state.redis_error = describe_redis_error(exc)
    return state
