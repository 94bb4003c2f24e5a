"""Guards that keep the backfill from harming the server it migrates (gh-ost's --max-load,
--critical-load and --max-lag-millis, for Redis).

Each lane's server is sampled with the batch's own round trip (a full INFO at most every
SAMPLE_EVERY_S, sooner when a replica's lag limit could fill before then; `INFO server`
otherwise, for the identity check). A sample is judged against
the limits: go, throttle (pause and re-check) or stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from relayctl.core.exitcodes import ExitCode

SAMPLE_EVERY_S = 0.25
DEFAULT_REPLICA_LAG_BYTES = 8 * 1024 * 1024
GO, THROTTLE, STOP = "go", "throttle", "stop"


@dataclass
class GuardLimits:
    """The thresholds; `relayctl backfill set` changes them on a running engine."""

    max_memory_pct: float = 85.0
    critical_memory_pct: float = 95.0
    max_memory_bytes: int | None = None  # the limit when maxmemory is 0
    max_replica_lag_bytes: int | None = None  # None: half the replica soft buffer limit
    max_replica_lag_s: float = 2.0
    wait_replicas: int = 0


@dataclass(frozen=True)
class Replica:
    name: str
    state: str
    offset: int
    lag_s: float


@dataclass
class ServerSample:
    """What one INFO said about a lane's server."""

    at: float
    run_id: str
    used_memory: int | None = None
    maxmemory: int = 0
    policy: str = ""
    evicted_keys: int | None = None
    master_offset: int = 0
    replicas: list[Replica] = field(default_factory=list)
    buffers: list[int] = field(default_factory=list)  # replica output buffers (omem), bytes
    full: bool = False


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def parse_info(info: dict[str, Any], full: bool, now: float | None = None) -> ServerSample:
    """An INFO reply (redis-py's parsed dict) as a sample; fields a server lacks stay None."""
    at = time.monotonic() if now is None else now
    sample = ServerSample(at=at, run_id=str(info.get("run_id", "")), full=full)
    if not full:
        return sample
    if "used_memory" in info:
        sample.used_memory = _int(info["used_memory"])
    sample.maxmemory = _int(info.get("maxmemory"))
    sample.policy = str(info.get("maxmemory_policy", ""))
    if "evicted_keys" in info:
        sample.evicted_keys = _int(info["evicted_keys"])
    sample.master_offset = _int(info.get("master_repl_offset"))
    for name, value in info.items():
        if str(name).startswith("slave") and isinstance(value, dict):
            sample.replicas.append(Replica(
                f"{value.get('ip', '?')}:{value.get('port', '?')}", str(value.get("state", "")),
                _int(value.get("offset")), float(value.get("lag", 0) or 0)))
    return sample


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str = ""
    message: str = ""
    value: str = ""
    limit: str = ""
    exit_code: int = ExitCode.OK


GO_VERDICT = Verdict(GO)


def _pct(n: float) -> str:
    return f"{n:.0f}%" if n >= 10 else f"{n:.1f}%"


def _mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


@dataclass
class LaneBaseline:
    """What the lane's server looked like when the run started (evictions, replicas)."""

    evicted_keys: int | None
    replicas: int
    run_id: str = ""
    offsets: list[tuple[float, int]] = field(default_factory=list)  # (time, master offset)


class Guards:
    """Judges samples, per lane; one instance per run."""

    def __init__(self, limits: GuardLimits, lag_limit_default: int | None = None) -> None:
        self.limits = limits
        self.lag_limit_default = lag_limit_default or DEFAULT_REPLICA_LAG_BYTES
        self.baselines: dict[str, LaneBaseline] = {}
        self.named = False  # on a cluster a verdict names its shard

    def lag_limit(self) -> int:
        return self.limits.max_replica_lag_bytes or self.lag_limit_default

    def sample_interval(self, lane: str) -> float:
        """How long the lane may copy unobserved: SAMPLE_EVERY_S, or less when the server
        writes fast enough that a quarter of the replica-lag limit would pass between two
        samples (a tight replica buffer at full speed fills within 250 ms)."""
        base = self.baselines.get(lane)
        if base is None or not base.replicas or len(base.offsets) < 2:
            return SAMPLE_EVERY_S
        (t0, o0), (t1, o1) = base.offsets[0], base.offsets[-1]
        rate = (o1 - o0) / (t1 - t0) if t1 > t0 else 0.0
        if rate <= 0:
            return SAMPLE_EVERY_S
        return min(SAMPLE_EVERY_S, self.lag_limit() / 4 / rate)

    def judge(self, lane: str, sample: ServerSample) -> Verdict:
        """Stop beats throttle beats go; the first reason found in that order is reported."""
        if not sample.full:
            return GO_VERDICT
        base = self.baselines.get(lane)
        if base is None or base.run_id != sample.run_id:
            # first sample, or another server now (failover, restart): its counters and its
            # replicas are its own, so the baseline starts again
            base = self.baselines[lane] = LaneBaseline(
                sample.evicted_keys, sum(r.state == "online" for r in sample.replicas),
                sample.run_id)
        base.offsets = [(t, o) for t, o in base.offsets
                        if sample.at - t <= 1.0 + SAMPLE_EVERY_S]
        base.offsets.append((sample.at, sample.master_offset))
        for check in (self._evictions, self._memory, self._replicas):
            verdict = check(base, sample)
            if verdict.action != GO:
                if self.named:
                    return replace(verdict, message=f"shard {lane}: {verdict.message}")
                return verdict
        return GO_VERDICT

    def _evictions(self, base: LaneBaseline, sample: ServerSample) -> Verdict:
        if base.evicted_keys is None or sample.evicted_keys is None:
            return GO_VERDICT
        evicted = sample.evicted_keys - base.evicted_keys
        if evicted > 0:
            return Verdict(STOP, "evictions",
                           f"Redis evicted {evicted} keys since the run started (policy "
                           f"{sample.policy}): stopped at once; check what was lost before "
                           "resuming", str(evicted), "0", ExitCode.ERRORS)
        return GO_VERDICT

    def _memory(self, base: LaneBaseline, sample: ServerSample) -> Verdict:
        if sample.used_memory is None:
            return GO_VERDICT
        limit = sample.maxmemory or self.limits.max_memory_bytes or 0
        if limit <= 0:
            return GO_VERDICT
        pct = 100.0 * sample.used_memory / limit
        lim = self.limits
        if pct >= lim.critical_memory_pct:
            return Verdict(STOP, "critical_memory",
                           f"memory {_pct(pct)} ≥ critical {_pct(lim.critical_memory_pct)} "
                           f"({_mib(sample.used_memory)} of {_mib(limit)}): stopped; resumable",
                           _pct(pct), _pct(lim.critical_memory_pct), ExitCode.STOPPED)
        if pct >= lim.max_memory_pct:
            return Verdict(THROTTLE, "memory",
                           f"memory {_pct(pct)} ≥ {_pct(lim.max_memory_pct)}",
                           _pct(pct), _pct(lim.max_memory_pct))
        return GO_VERDICT

    def _replicas(self, base: LaneBaseline, sample: ServerSample) -> Verdict:
        online = [r for r in sample.replicas if r.state == "online"]
        if len(online) < base.replicas:
            return Verdict(THROTTLE, "replica_lost",
                           f"replicas online {len(online)} < {base.replicas} at the start: "
                           "paused until it is back", str(len(online)), str(base.replicas))
        # a healthy replica acknowledges once a second, so up to a second of writes is
        # in flight; only lag beyond that counts against the limit
        in_flight = sample.master_offset - min(o for _t, o in base.offsets)
        limit = self.lag_limit()
        if sample.buffers and max(sample.buffers) > limit:
            return Verdict(THROTTLE, "replica_lag",
                           f"replica output buffer {_mib(max(sample.buffers))} > {_mib(limit)}",
                           _mib(max(sample.buffers)), _mib(limit))
        for r in online:
            lag = max(0, sample.master_offset - r.offset)
            if lag - in_flight > limit:
                return Verdict(THROTTLE, "replica_lag",
                               f"replica {r.name} lag {_mib(lag)} > {_mib(limit)}",
                               _mib(lag), _mib(limit))
            # INFO's lag is whole seconds since the last ack: 2 means at least 2 s
            if r.lag_s >= self.limits.max_replica_lag_s:
                return Verdict(THROTTLE, "replica_lag",
                               f"replica {r.name} lag {r.lag_s:g}s ≥ "
                               f"{self.limits.max_replica_lag_s:g}s",
                               f"{r.lag_s:g}s", f"{self.limits.max_replica_lag_s:g}s")
        return GO_VERDICT


def soft_buffer_limit(config: dict[str, Any]) -> int | None:
    """Half the replica soft output-buffer limit, from CONFIG GET client-output-buffer-limit
    (`normal 0 0 0 replica 268435456 67108864 60 pubsub …`), or None when unknown."""
    words = str(config.get("client-output-buffer-limit", "")).split()
    for i, word in enumerate(words):
        if word in ("replica", "slave") and i + 2 < len(words):
            soft = _int(words[i + 2]) or _int(words[i + 1])
            return soft // 2 if soft > 0 else None
    return None
