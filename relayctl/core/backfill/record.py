"""Everything the engine writes to its run's state after the start goes through here:
fenced by the token (WRITE_STATE), and never once the run finished. Also the live retune it
reads between batches (`relayctl backfill set`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from relayctl.core.backfill import scripts
from relayctl.core.backfill.guards import SAMPLE_EVERY_S, Guards
from relayctl.core.backfill.options import BackfillOptions
from relayctl.core.backfill.progress import BackfillProgress
from relayctl.core.backfill.state import TUNABLE, BackfillKeys
from relayctl.core.replies import as_str, as_str_dict

T = TypeVar("T")
Retrying = Callable[[Callable[[], Any], str], Any]


class RunRecord:
    def __init__(self, client: redis.Redis, keys: BackfillKeys, token: str,
                 progress: BackfillProgress, options: BackfillOptions, guards: Guards,
                 retrying: Retrying) -> None:
        self.client = client
        self.keys = keys
        self.token = token
        self.progress = progress
        self.opt = options
        self.guards = guards
        self.retrying = retrying

    def write(self, change: dict[str, str]) -> None:
        """Fenced: only while this engine owns the run, never once the run finished."""
        scripts.STATE(self.client, [self.keys.state],
                      [self.token, *(x for kv in change.items() for x in kv)])

    def write_if_executing(self, change: dict[str, str]) -> None:
        if self.opt.execute:
            self.retrying(lambda: self.write(change), "status")

    def status(self, status: str, message: str = "", finished: bool = False,
               **extra: str) -> None:
        self.progress.status = status
        self.progress.message = message
        if not self.opt.execute:
            return
        change = {"status": status, "message": message, "updated": f"{time.time():.3f}",
                  **extra}
        if finished:
            change["finished"] = change["updated"]
        self.retrying(lambda: self.write(change), "status")

    def beat(self) -> list[Any]:
        """The heartbeat's fields (after token and TTL), as RENEW takes them."""
        p = self.progress
        return [f"{time.time():.3f}", f"{p.rate:.1f}", f"{p.fraction:.4f}",
                "" if p.eta_s is None else f"{p.eta_s:.0f}"]

    def limits(self) -> dict[str, str]:
        """The limits in force, for the state (status and console show them)."""
        lim, opt = self.guards.limits, self.opt
        return {"rps": f"{opt.rps:g}", "batch": str(opt.batch),
                "max_latency_ms": "" if opt.max_latency_ms is None else f"{opt.max_latency_ms:g}",
                "max_memory_pct": f"{lim.max_memory_pct:g}",
                "critical_memory_pct": f"{lim.critical_memory_pct:g}",
                "max_replica_lag_bytes": str(self.guards.lag_limit()),
                "max_replica_lag_s": f"{lim.max_replica_lag_s:g}",
                "wait_replicas": str(lim.wait_replicas)}


class Tuner:
    """`relayctl backfill set`: one HGET at most every SAMPLE_EVERY_S, shared by lanes; a new
    `seq` applies the values between batches."""

    def __init__(self, record: RunRecord, on_change: Callable[[], None],
                 on_event: Callable[[str, BackfillProgress], None]) -> None:
        self.record = record
        self.on_change = on_change
        self.on_event = on_event
        self._seq: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def poll(self) -> None:
        rec = self.record
        now = time.monotonic()
        with self._lock:
            if now - self._checked < SAMPLE_EVERY_S:
                return
            self._checked = now
            seq = rec.retrying(lambda: rec.client.hget(rec.keys.tune, "seq"), "tune")
            if seq is None or as_str(seq) == self._seq:
                return
            self._seq = as_str(seq)
            values = as_str_dict(rec.retrying(lambda: rec.client.hgetall(rec.keys.tune),
                                              "tune"))
        self.apply(values)

    def apply(self, values: dict[str, str]) -> None:
        rec = self.record
        lim, opt = rec.guards.limits, rec.opt
        for name, raw in values.items():
            if name not in TUNABLE:
                continue
            number = TUNABLE[name][0](float(raw))
            if name in ("rps", "batch", "max_latency_ms"):
                setattr(opt, name, number)
            else:
                setattr(lim, name, number)
        self.on_change()
        changed = " ".join(f"{k}={v}" for k, v in sorted(values.items()) if k in TUNABLE)
        rec.progress.message = f"retuned: {changed}"
        rec.write_if_executing({**rec.limits(), "message": rec.progress.message,
                                "tuned": f"{time.time():.3f}"})
        self.on_event("tuned", rec.progress)
