"""Machine-checked gates with the seeds' thresholds: PASS / FAIL / WAIT / UNKNOWN (SPEC §6).

Sources: Redis (flags, audit times, census, verify, fleet, INFO memory, backfill state), the
/metrics endpoints (summed; over a window, or since the phase was applied, or cumulative)
and, when given, a Prometheus server (the same counters' increase over the window, every
query once per check at one evaluation time, restricted to the configured selector).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import redis

from relayctl.core import fleet
from relayctl.core import formatting as fmt
from relayctl.core.backfill import ACTIVE, lease_owner, read_state, run_health
from relayctl.core.census import Census, last_census
from relayctl.core.cluster import is_cluster
from relayctl.core.connection import is_loopback_host, parse_target
from relayctl.core.exitcodes import ExitCode
from relayctl.core.flags import (
    DEFAULTS,
    DUAL_WRITE,
    FALLBACK_OLD,
    PREFERS_NEW,
    stored_flags,
    word,
)
from relayctl.core.keys import AUDIT_KEY, KeySchema
from relayctl.core.layout import ALWAYS, hash_tagged, slot_layout
from relayctl.core.phases import Phase
from relayctl.core.replies import as_str_dict
from relayctl.core.scrape import Prometheus, PromOptions, Snapshot, SourceError, scrape
from relayctl.core.serverinfo import memory_info
from relayctl.core.verify import last_verify

T = TypeVar("T")

PASS, FAIL, WAIT, UNKNOWN = "PASS", "FAIL", "WAIT", "UNKNOWN"
DAY = 86400.0
PROM_DEFAULT_WINDOW_S = 3600.0
MIN_WINDOW_SCRAPES = 4  # a Prometheus window must hold this many scrapes of every target

# The counters the gates read, by the name `[metrics.names]` maps to what a fleet exports.
METRIC_NAMES: dict[str, str] = {
    "read_path": "relay_job_read_path_total",
    "list_read_path": "relay_job_list_read_path_total",
    "dual_write": "relay_dual_write_attempt_total",
    "workspace_mismatch": "relay_workspace_mismatch_total",
    "deserialize_errors": "relay_job_deserialize_errors_total",
    "requests": "relay_job_requests_total",
}

# Every number is from the seeds (000 checklist, 003 release notes) unless noted.
THRESHOLDS: dict[str, float] = {
    "new_read_share_50": 0.50,      # rollback trigger: <50% new
    "new_read_share_60": 0.60,      # step 1: should increase to 60-80%; alert <60% for 1h
    "new_read_share_80": 0.80,      # step 2/3: >80% new schema
    "new_read_share_98": 0.98,      # step 4: 98%+ of queries hit new schema
    "old_read_share_2": 0.02,       # step 5: <2% of reads still hitting old
    "old_read_share_0": 0.0,        # step 5/6: all "new", zero queries on old
    "miss_increase": 0.10,          # 404 increase >10%
    "dual_write_failure_1": 0.01,   # failed <1%
    "dual_write_failure_5": 0.05,   # rollback trigger >5%
    "dual_write_success": 0.99,     # succeeded ~100% (99% taken as "~100%": our choice)
    "redis_memory": 0.50,           # memory spike >50%
    "memory_headroom": 0.85,        # projected use after the copy, share of maxmemory
    "replica_lag_s": 2.0,           # a replica's last ack older than this is out of sync
    "verify_max_age": 3600.0,       # verify_fresh: archive delete needs a verify this recent
    "error_rate": 0.01,             # error rate flat (1%: our choice, seeds give no number)
    "deserialize_errors": 100.0,    # >100/hour
    "new_keys_1000": 1000.0,        # keys "ai:job:*:*" | wc -l > 1000
    "census_equal": 0.02,           # "approximately equal" (2%: our choice)
    "census_coverage_98": 0.98,     # 98%+ of jobs in new schema
    "read_routing_days_7": 7.0,     # stable for 1+ weeks
    "dual_write_days_14": 14.0,     # dual-write smooth 2+ weeks
    "fallback_off_days_30": 30.0,   # 1+ month since fallback disabled
    "min_reads": 50.0,              # fewer reads than this in the window: WAIT (our choice)
    "max_age_s": DAY,               # census / verify older than a day: WAIT (our choice)
}


@dataclass(frozen=True)
class GateResult:
    gate: str
    title: str
    status: str
    value: str
    threshold: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "title": self.title, "status": self.status,
                "value": self.value, "threshold": self.threshold, "detail": self.detail}


@dataclass
class GateContext:
    """Everything a gate may read; each source is fetched once and cached."""

    client: redis.Redis | None
    redis_url: str | None = None
    metrics_urls: list[str] = field(default_factory=list)
    prometheus_url: str | None = None
    window_s: float | None = None
    prometheus_options: PromOptions | None = None
    metric_names: dict[str, str] = field(default_factory=dict)
    baseline: Snapshot | None = None
    baseline_memory: int | None = None
    baseline_evicted: int | None = None
    target_flags: dict[str, bool] | None = None
    schema: KeySchema = field(default_factory=KeySchema)
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))
    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    shared: dict[str, Any] = field(default_factory=dict)
    audit_scan: int = 5000
    _cache: dict[str, Any] = field(default_factory=dict)

    def t(self, name: str) -> float:
        return self.thresholds.get(name, THRESHOLDS[name])

    def metrics(self) -> Snapshot:
        """Counters for the gate window: two scrapes S apart, since apply, or cumulative."""
        def window() -> Snapshot:
            first, second = self._raw_scrapes()
            if second is not None:
                return second.minus(first)
            return first.minus(self.baseline) if self.baseline is not None else first
        return _memo(self._cache, "metrics", window)

    def _raw_scrapes(self) -> tuple[Snapshot, Snapshot | None]:
        """Scraped once per `shared` dict, so checking several phases scrapes once."""
        def scrapes() -> tuple[Snapshot, Snapshot | None]:
            if not self.metrics_urls:
                raise SourceError("no /metrics endpoint given (--metrics-url)")
            first = scrape(self.metrics_urls)
            if not self.window_s:
                return first, None
            self.sleep(self.window_s)
            return first, scrape(self.metrics_urls)
        return _memo(self.shared, "raw", scrapes)

    def redis_call(self, key: str, fn: Callable[[redis.Redis], T]) -> T:
        """fn(client) once per context under `key`; a Redis failure becomes a SourceError."""
        def call() -> T:
            if self.client is None:
                raise SourceError("Redis unreachable")
            try:
                return fn(self.client)
            except (redis.RedisError, OSError) as exc:
                raise SourceError(f"Redis error: {type(exc).__name__}") from None
        return _memo(self._cache, key, call)

    @property
    def prom_options(self) -> PromOptions | None:
        if self.prometheus_options is not None:
            return self.prometheus_options
        return PromOptions(self.prometheus_url) if self.prometheus_url else None

    def metric_name(self, metric: str) -> str:
        name = self.metric_names.get(metric) or METRIC_NAMES[metric]
        self.shared.setdefault("names_read", set()).add(name)
        return name

    def counter(self, metric: str, by: str | None = None, **labels: str) -> dict[str, float]:
        """A counter's increase over the gate window, summed (per `by` label value when
        given), from Prometheus when configured, else from /metrics. A series that neither
        source has is a SourceError (UNKNOWN), never 0."""
        name = self.metric_name(metric)
        if self.prom_options is not None:
            return self._prom_increase(name, by, labels)
        snap = self.metrics()
        if not any(n == name for n, _l in snap.values):
            raise SourceError(f"no {name} series on /metrics")
        out: dict[str, float] = {}
        want = set(labels.items())
        for (n, lbls), v in snap.values.items():
            if n == name and want <= lbls:
                key = dict(lbls).get(by, "") if by else ""
                out[key] = out.get(key, 0.0) + v
        return out

    def prometheus(self) -> Prometheus:
        opts = self.prom_options
        assert opts is not None
        return _memo(self.shared, "prom:client", lambda: Prometheus(opts))

    def prom_query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Each distinct query once per `shared` (one check), all at the same time."""
        client = self.prometheus()
        at = self.shared.setdefault("prom:at", time.time())
        queries = self.shared.setdefault("prom:queries", [])

        def run() -> list[tuple[dict[str, str], float]]:
            queries.append(promql)
            return client.query(promql, at)
        return _memo(self.shared, "prom:q:" + promql, run)

    def prom_up_targets(self) -> int:
        """Up targets the selector matches; none is a SourceError for every Prometheus gate."""
        sel = self.prometheus().options.selector

        def up() -> int:
            rows = self.prom_query(f"count(up{{{sel}}} == 1)")
            count = int(sum(v for _l, v in rows))
            if not count:
                raise SourceError(f"selector {{{sel}}} matches no up target in Prometheus"
                                  if sel else "Prometheus has no up scrape target")
            return count
        return _memo(self.shared, "prom:up", up)

    def prom_window(self) -> str:
        """The gate window as PromQL, checked once against the targets' scrape interval."""
        window = self.window_s or PROM_DEFAULT_WINDOW_S

        def check() -> str:
            intervals = self.prometheus().scrape_intervals() or []
            if intervals and window < MIN_WINDOW_SCRAPES * max(intervals):
                raise WindowTooShort(
                    f"--window {window:g}s is shorter than {MIN_WINDOW_SCRAPES} scrape "
                    f"intervals ({max(intervals):g}s): give at least "
                    f"{MIN_WINDOW_SCRAPES * max(intervals):g}s")
            return f"{round(window * 1000)}ms"
        return _memo(self.shared, "prom:window", check)

    def _prom_increase(self, name: str, by: str | None,
                       labels: dict[str, str]) -> dict[str, float]:
        self.prom_up_targets()
        window = self.prom_window()
        sel = self.prometheus().options.selector
        matchers = ",".join([*(f'{k}="{v}"' for k, v in sorted(labels.items())), sel] if sel
                            else [f'{k}="{v}"' for k, v in sorted(labels.items())])
        series = f"{name}{{{matchers}}}"
        # Exact, unlike increase(): each series' value now minus its value a window ago; a
        # series born inside the window counts from its 0 (every counter starts at 0), and
        # a reset one from its restart.
        group = f" by ({by})" if by else ""
        rows = self.prom_query(f"sum{group} (({series} - {series} offset {window}) >= 0 "
                               f"or {series})")
        if not rows:
            raise SourceError(f"no {series} series in Prometheus")
        return {(lbls.get(by, "") if by else ""): v for lbls, v in rows}


class WindowTooShort(SourceError):
    """--window holds too few scrapes for a Prometheus increase to mean anything."""


def _memo(store: dict[str, Any], key: str, compute: Callable[[], T]) -> T:
    """Compute once per store; a source failure is remembered and raised again too."""
    if key not in store:
        try:
            store[key] = compute()
        except SourceError as exc:
            store[key] = exc
    value = store[key]
    if isinstance(value, SourceError):
        raise value
    return cast(T, value)  # what compute() returned under this key


Gate = Callable[[GateContext], GateResult]
GATES: dict[str, tuple[str, Gate]] = {}


def gate(gate_id: str, title: str) -> Callable[[Gate], Gate]:
    def register(fn: Gate) -> Gate:
        GATES[gate_id] = (title, fn)
        return fn
    return register


def _r(gid: str, status: str, value: object, threshold: str, detail: str = "") -> GateResult:
    return GateResult(gate=gid, title=GATES[gid][0] if gid in GATES else gid, status=status,
                      value=str(value), threshold=threshold, detail=detail)


def pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _read_counts(ctx: GateContext) -> dict[str, float]:
    """new / old / miss read counts over the gate window."""
    by_path = ctx.counter("read_path", by="path")
    return {p: by_path.get(p, 0.0) for p in ("new", "old", "miss")}


def _share_gate(gid: str, path: str, above: bool) -> Gate:
    """Share of the reads that found a job (new + old); misses have their own gate."""
    def check(ctx: GateContext) -> GateResult:
        limit = ctx.t(gid)
        cmp = ">=" if above else ("==" if limit == 0 else "<")
        threshold = f"{path} share of found reads {cmp} {pct(limit)}"
        try:
            counts = _read_counts(ctx)
        except SourceError as exc:
            return _r(gid, UNKNOWN, "-", threshold, str(exc))
        found = counts["new"] + counts["old"]
        if found < ctx.t("min_reads"):
            return _r(gid, WAIT, f"{int(found)} reads", threshold,
                      f"need at least {int(ctx.t('min_reads'))} reads in the window")
        share = counts[path] / found
        ok = share >= limit if above else (share == 0 if limit == 0 else share < limit)
        return _r(gid, PASS if ok else FAIL, pct(share), threshold,
                  f"{int(found)} found, {int(counts['miss'])} misses")
    return check


for _gid, _path, _above, _title in (
    ("new_read_share_50", "new", True, "New-schema read share above the rollback line"),
    ("new_read_share_60", "new", True, "New-schema read share (60-80% target)"),
    ("new_read_share_80", "new", True, "New-schema read share above 80%"),
    ("new_read_share_98", "new", True, "98%+ of queries hit the new schema"),
    ("old_read_share_2", "old", False, "Fallback reads below 2%"),
    ("old_read_share_0", "old", False, "Zero reads hitting the old schema"),
):
    gate(_gid, _title)(_share_gate(_gid, _path, _above))


MISS_ALPHA = 1e-5  # chance of failing a window whose miss rate did not change


def poisson_tail(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam); exact where it matters (k above lam), 1.0 below."""
    if k <= 0:
        return 1.0
    if k <= lam:
        return 1.0
    term = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))
    total, i = 0.0, k
    while term > total * 1e-16:
        total += term
        i += 1
        term *= lam / i
    return min(total, 1.0)


@gate("miss_increase", "No increase in 404s (misses)")
def _miss_increase(ctx: GateContext) -> GateResult:
    limit = ctx.t("miss_increase")
    threshold = (f"miss share increase < {pct(limit)} over the baseline "
                 f"(beyond chance, p < {MISS_ALPHA:g})")
    if ctx.baseline is None:
        return _r("miss_increase", WAIT, "-", threshold,
                  "no baseline yet: `relayctl checklist apply` records one")
    try:
        counts = _read_counts(ctx)
    except SourceError as exc:
        return _r("miss_increase", UNKNOWN, "-", threshold, str(exc))
    total = sum(counts.values())
    if total < ctx.t("min_reads"):
        return _r("miss_increase", WAIT, f"{int(total)} reads", threshold,
                  "not enough reads since the baseline")
    base = {p: ctx.baseline.total(ctx.metric_name("read_path"), path=p)
            for p in ("new", "old", "miss")}
    base_total = sum(base.values())
    base_share = base["miss"] / base_total if base_total else 0.0
    share = counts["miss"] / total
    increase = (share - base_share) / max(base_share, 0.001)
    # Misses are rare events, so a short window's count is Poisson: only a count the baseline
    # makes improbable (exact tail, not a normal approximation, which is far too eager for the
    # handful of misses a few seconds hold) fails, so a quiet window never flaps the gate.
    expected = base_share * total
    p_value = poisson_tail(int(counts["miss"]), max(expected, 1.0))
    failed = increase > limit and p_value < MISS_ALPHA
    return _r("miss_increase", FAIL if failed else PASS, pct(max(increase, 0)), threshold,
              f"miss share {pct(share)} vs baseline {pct(base_share)} "
              f"({int(counts['miss'])} misses, {expected:.1f} expected, p={p_value:.1g})")


def _counter_gate(gid: str, metric: str, per_hour: bool) -> Gate:
    def check(ctx: GateContext) -> GateResult:
        limit = ctx.t(gid) if gid in THRESHOLDS else 0.0
        threshold = f"< {limit:g}/hour" if per_hour else "== 0"
        try:
            value = sum(ctx.counter(metric).values())
        except SourceError as exc:
            return _r(gid, UNKNOWN, "-", threshold, str(exc))
        ok = value < limit if per_hour else value == 0
        return _r(gid, PASS if ok else FAIL, f"{value:g}", threshold)
    return check


gate("workspace_mismatch", "Zero workspace mismatches (isolation)")(
    _counter_gate("workspace_mismatch", "workspace_mismatch", False))
gate("deserialize_errors", "Deserialization errors below 100/hour")(
    _counter_gate("deserialize_errors", "deserialize_errors", True))


def _dual_write_counts(ctx: GateContext) -> tuple[float, float]:
    by_result = ctx.counter("dual_write", by="result")
    return by_result.get("succeeded", 0.0), by_result.get("failed", 0.0)


def _dual_write_gate(gid: str, failure: bool) -> Gate:
    def check(ctx: GateContext) -> GateResult:
        limit = ctx.t(gid)
        threshold = f"failed < {pct(limit)}" if failure else f"succeeded >= {pct(limit)}"
        try:
            ok, bad = _dual_write_counts(ctx)
        except SourceError as exc:
            return _r(gid, UNKNOWN, "-", threshold, str(exc))
        total = ok + bad
        if total < ctx.t("min_reads"):
            return _r(gid, WAIT, f"{int(total)} writes", threshold, "not enough dual-writes")
        rate = bad / total if failure else ok / total
        passed = rate < limit if failure else rate >= limit
        return _r(gid, PASS if passed else FAIL, pct(rate), threshold, f"{int(total)} writes")
    return check


gate("dual_write_failure_1", "Dual-write failures below 1%")(
    _dual_write_gate("dual_write_failure_1", True))
gate("dual_write_failure_5", "Dual-write failures below the 5% rollback line")(
    _dual_write_gate("dual_write_failure_5", True))
gate("dual_write_success", "Dual-write success ~100%")(
    _dual_write_gate("dual_write_success", False))


@gate("error_rate", "Job store error rate flat")
def _error_rate(ctx: GateContext) -> GateResult:
    limit = ctx.t("error_rate")
    threshold = f"errors < {pct(limit)} of calls"
    try:
        by_outcome = ctx.counter("requests", by="outcome")
    except SourceError as exc:
        return _r("error_rate", UNKNOWN, "-", threshold, str(exc))
    total = sum(by_outcome.values())
    errors = by_outcome.get("error", 0.0)
    if total < ctx.t("min_reads"):
        return _r("error_rate", WAIT, f"{int(total)} calls", threshold, "not enough calls")
    rate = errors / total
    return _r("error_rate", PASS if rate < limit else FAIL, pct(rate), threshold)


def _flag_days_gate(gid: str, flag: str, value: bool) -> Gate:
    def check(ctx: GateContext) -> GateResult:
        days = ctx.t(gid)
        threshold = f"{flag}={word(value)} for >= {days:g} days"
        try:
            flags = ctx.redis_call("flags", stored_flags)
            since = ctx.redis_call(f"since:{flag}",
                                   lambda c: flag_set_since(c, flag, value, ctx.audit_scan))
        except SourceError as exc:
            return _r(gid, UNKNOWN, "-", threshold, str(exc))
        if flags.get(flag, DEFAULTS[flag]) != value:
            return _r(gid, FAIL, f"{flag}={word(not value)}", threshold, "flag not in that state")
        if since is None:
            return _r(gid, WAIT, "no audit entry", threshold,
                      "the flag was never changed through relayctl")
        elapsed = (ctx.now() - since) / DAY
        return _r(gid, PASS if elapsed >= days else WAIT, f"{elapsed:.1f} days", threshold)
    return check


gate("read_routing_days_7", "Read-routing stable for 1+ weeks")(
    _flag_days_gate("read_routing_days_7", PREFERS_NEW, True))
gate("dual_write_days_14", "Dual-write running for 2+ weeks")(
    _flag_days_gate("dual_write_days_14", DUAL_WRITE, True))
gate("fallback_off_days_30", "1+ month since fallback disabled")(
    _flag_days_gate("fallback_off_days_30", FALLBACK_OLD, False))


def flag_set_since(client: redis.Redis, flag: str, value: bool, scan: int = 5000) -> float | None:
    """When the flag last changed to `value`, from the audit stream (newest first, bounded)."""
    for _id, raw in client.xrevrange(AUDIT_KEY, count=scan) or []:
        fields = as_str_dict(raw)
        if fields.get("action") == "flag.set" and fields.get("target") == flag:
            if fields.get("after") != word(value):
                return None
            if fields.get("before") != word(value):
                return float(fields.get("ts", 0))
    return None


@gate("dual_write_on", "Dual-write is on")
def _dual_write_on(ctx: GateContext) -> GateResult:
    try:
        flags = ctx.redis_call("flags", stored_flags)
    except SourceError as exc:
        return _r("dual_write_on", UNKNOWN, "-", "AI_JOBS_NEW_SCHEMA=on", str(exc))
    on = flags.get(DUAL_WRITE, DEFAULTS[DUAL_WRITE])
    return _r("dual_write_on", PASS if on else FAIL, word(on), "AI_JOBS_NEW_SCHEMA=on")


@gate("flags_converged", "Flags at the phase's target across the fleet")
def _flags_converged(ctx: GateContext) -> GateResult:
    target = ctx.target_flags or {}
    threshold = ", ".join(f"{k}={word(v)}" for k, v in target.items()) or "-"
    try:
        flags = ctx.redis_call("flags", stored_flags)
        live = ctx.redis_call("fleet", fleet.live_instances)
    except SourceError as exc:
        return _r("flags_converged", UNKNOWN, "-", threshold, str(exc))
    wrong = [k for k, v in target.items() if flags.get(k, DEFAULTS[k]) != v]
    if wrong:
        return _r("flags_converged", FAIL, "stored differs", threshold,
                  "not applied: " + ", ".join(wrong))
    if not live:
        targets = _silent_fleet(ctx)
        if targets:
            return _r("flags_converged", UNKNOWN, f"{targets} scrape targets, 0 heartbeats",
                      threshold, "the fleet's metrics show traffic but no instance sends a "
                      "heartbeat: its flags cannot be seen")
        return _r("flags_converged", WAIT, "0 instances", threshold,
                  "no live application instance is reporting")
    lagging = [i.instance + (" (pinned)" if set(i.pinned) & set(target) else "")
               for i in live if any(i.flags.get(k) != word(v) for k, v in target.items())]
    value = f"{len(live) - len(lagging)}/{len(live)} instances"
    if lagging:
        return _r("flags_converged", FAIL, value, threshold, "lagging: " + ", ".join(lagging))
    return _r("flags_converged", PASS, value, threshold)


def _silent_fleet(ctx: GateContext) -> int:
    """Scrape targets showing traffic while no instance sends a heartbeat (0: none, or no
    metrics source to tell)."""
    try:
        # the share and dual-write gates' own queries, so no extra one
        traffic = (sum(ctx.counter("read_path", by="path").values())
                   + sum(ctx.counter("dual_write", by="result").values()))
        if not traffic:
            return 0
        return ctx.prom_up_targets() if ctx.prom_options is not None else len(ctx.metrics_urls)
    except SourceError:
        return 0


def _census_gate(gid: str, title: str,
                 judge: Callable[[GateContext, Census], tuple[str, str, str]]) -> None:
    def check(ctx: GateContext) -> GateResult:
        try:
            census = ctx.redis_call("census", last_census)
        except SourceError as exc:
            return _r(gid, UNKNOWN, "-", "", str(exc))
        if census is None:
            return _r(gid, WAIT, "no census", "", "run `relayctl census`")
        age = ctx.now() - census.ts
        if age > ctx.t("max_age_s"):
            return _r(gid, WAIT, f"census {fmt.duration(age)} old", "",
                      "census older than a day: run `relayctl census`")
        status, value, threshold = judge(ctx, census)
        return _r(gid, status, value, threshold, f"census {fmt.duration(age)} old")
    gate(gid, title)(check)


_census_gate("census_fresh", "Job counts by workspace (fresh census)",
             lambda ctx, c: (PASS, f"old {c.old}, new {c.new}", "census < 1 day old"))
_census_gate("new_keys_present", "New-schema keys present",
             lambda ctx, c: (PASS if c.new > 0 else FAIL, f"{c.new} new keys", "> 0"))
_census_gate("new_keys_1000", "New schema growing (> 1000 keys)",
             lambda ctx, c: (PASS if c.new > ctx.t("new_keys_1000") else FAIL,
                             f"{c.new} new keys", f"> {ctx.t('new_keys_1000'):g}"))
_census_gate("census_equal", "Old and new key counts approximately equal",
             lambda ctx, c: (PASS if abs(c.old - c.new) <= ctx.t("census_equal") * max(c.old, 1)
                             else FAIL, f"old {c.old}, new {c.new}",
                             f"|old-new| <= {pct(ctx.t('census_equal'))} of old"))
_census_gate("census_coverage_98", "98%+ of jobs in the new schema",
             lambda ctx, c: (PASS if c.new >= ctx.t("census_coverage_98") * c.old else FAIL,
                             pct(c.new / c.old) if c.old else "no old keys",
                             f"new >= {pct(ctx.t('census_coverage_98'))} of old"))


@gate("verify_clean", "Verification clean (workspace consistency, parity)")
def _verify_clean(ctx: GateContext) -> GateResult:
    threshold = "latest verify clean (full)"
    try:
        v = ctx.redis_call("verify", last_verify)
    except SourceError as exc:
        return _r("verify_clean", UNKNOWN, "-", threshold, str(exc))
    if v is None or v["mode"] != "full":
        return _r("verify_clean", WAIT, "no verify", threshold, "run `relayctl verify`")
    age = ctx.now() - v["ts"]
    if age > ctx.t("max_age_s"):
        return _r("verify_clean", WAIT, f"verify {fmt.duration(age)} old", threshold,
                  "run `relayctl verify` again")
    bad = sum(v["counts"].values())
    detail = ", ".join(f"{k} {n}" for k, n in v["counts"].items() if n)
    return _r("verify_clean", PASS if bad == 0 else FAIL, f"{bad} differences of {v['checked']}",
              threshold, detail)


@gate("backfill_complete", "Backfill 100% complete")
def _backfill_complete(ctx: GateContext) -> GateResult:
    try:
        state = ctx.redis_call("backfill", read_state)
    except SourceError as exc:
        return _r("backfill_complete", UNKNOWN, "-", "status completed", str(exc))
    status = state.get("status") if state else None
    if status in ("completed", "completed_with_errors"):
        return _r("backfill_complete", PASS, status, "status completed",
                  f"migrated {state.get('migrated')}")
    if status in ("failed", "lost"):
        return _r("backfill_complete", FAIL, status, "status completed", state.get("message", ""))
    if state and status in ACTIVE:
        try:
            alive = ctx.redis_call("backfill_lease", lambda c: lease_owner(c) is not None)
        except SourceError as exc:
            return _r("backfill_complete", UNKNOWN, status, "status completed", str(exc))
        # heartbeats are wall-clock time, not the gates' (possibly shifted or scaled) clock
        health = run_health(state, bool(alive), time.time())
        if health.dead:
            return _r("backfill_complete", FAIL, "dead", "status completed", health.detail)
    return _r("backfill_complete", WAIT, status or "never run", "status completed",
              f"scanned {state.get('scanned', 0)}" if state else "")


@gate("backfill_errors", "No backfill errors")
def _backfill_errors(ctx: GateContext) -> GateResult:
    try:
        state = ctx.redis_call("backfill", read_state)
    except SourceError as exc:
        return _r("backfill_errors", UNKNOWN, "-", "errors == 0", str(exc))
    if not state:
        return _r("backfill_errors", WAIT, "never run", "errors == 0")
    errors = int(state.get("errors", 0) or 0)
    return _r("backfill_errors", PASS if errors == 0 else FAIL, str(errors), "errors == 0")


@gate("redis_memory", "Redis memory increase below 50%")
def _redis_memory(ctx: GateContext) -> GateResult:
    limit = ctx.t("redis_memory")
    threshold = f"increase < {pct(limit)} over the baseline"
    try:
        info = ctx.redis_call("memory", memory_info)
    except SourceError as exc:
        return _r("redis_memory", UNKNOWN, "-", threshold, str(exc))
    if info is None:
        return _r("redis_memory", UNKNOWN, "-", threshold, "server reports no INFO memory")
    used = info["used"]
    if not ctx.baseline_memory:
        return _r("redis_memory", WAIT, f"{used} bytes", threshold,
                  "no baseline yet: `relayctl checklist apply` records one")
    increase = (used - ctx.baseline_memory) / ctx.baseline_memory
    return _r("redis_memory", PASS if increase < limit else FAIL, pct(increase), threshold,
              f"{used} bytes vs {ctx.baseline_memory}")


@gate("redis_tls", "REDIS_URL uses rediss:// (TLS)")
def _redis_tls(ctx: GateContext) -> GateResult:
    target = parse_target(ctx.redis_url, allow_plaintext=True)
    if target.tls and not target.verify_certs:
        return _r("redis_tls", FAIL, f"ssl_cert_reqs={target.cert_reqs}",
                  "rediss:// with certificate verification",
                  "TLS without certificate verification")
    if target.tls:
        return _r("redis_tls", PASS, "rediss://", "rediss:// in production")
    hosts = [h for h, _ in target.sentinels] or [target.host]
    if target.scheme == "unix" or all(is_loopback_host(h) for h in hosts):
        return _r("redis_tls", PASS, f"{target.scheme}:// on loopback", "rediss:// in "
                  "production", "local connection: TLS not required")
    return _r("redis_tls", FAIL, f"{target.scheme}://", "rediss:// in production")


@gate("slot_layout", "New record and its index share a slot (Redis Cluster)")
def _slot_layout(ctx: GateContext) -> GateResult:
    """A cluster refuses a script over two slots, so the dual-write's new record and its index
    must hash the same expression there; a standalone server writes everything in one script."""
    s = ctx.schema
    threshold = "new_job and index in one slot"
    try:
        cluster = ctx.redis_call("cluster", is_cluster)
    except SourceError as exc:
        return _r("slot_layout", UNKNOWN, "-", threshold, str(exc))
    if not cluster:
        return _r("slot_layout", PASS, "standalone", threshold,
                  "one atomic script per dual-write")
    layout = slot_layout(s, cluster=True)
    new, index = layout.record("new_job"), layout.record("index")
    if layout.relation("new_job", "index") == ALWAYS:
        return _r("slot_layout", PASS, f"both hash {index.hashed_display}", threshold,
                  "cluster; separate steps: " + layout.groups_text(layout.split)
                  if layout.split else "cluster; one slot for the whole dual-write")
    return _r("slot_layout", FAIL,
              f"new_job hashes {new.hashed_display}, index {index.hashed_display}",
              f'[keys] new_job = "{hash_tagged(s.new_job)}", index = "{hash_tagged(s.index)}"',
              "cluster: configure these hash-tagged key templates in --config")


def evaluate(ctx: GateContext, gate_ids: tuple[str, ...] | list[str]) -> list[GateResult]:
    return [GATES[g][1](ctx) for g in gate_ids]


def evaluate_phase(ctx: GateContext, phase: Phase) -> list[GateResult]:
    ctx.target_flags = phase.target_flags or ctx.target_flags
    return evaluate(ctx, phase.gates)


def overall(results: list[GateResult]) -> ExitCode:
    """Exit code for `relayctl check`: 0 all pass, 1 a gate fails, 3 waiting or unknown."""
    if any(r.status == FAIL for r in results):
        return ExitCode.ERRORS
    if any(r.status in (WAIT, UNKNOWN) for r in results):
        return ExitCode.STOPPED
    return ExitCode.OK


# the capacity, replication and stored-verify gates register themselves with @gate
from relayctl.core import gates_capacity as _gates_capacity  # noqa: E402, F401
from relayctl.core import verify_gates as _verify_gates  # noqa: E402, F401
