"""Holding a lane while a guard says so, and telling everyone why: the run's state
(`throttled`, reason, measured value vs limit, since, total seconds), the
`relay_backfill_throttled_seconds_total{reason}` metric and the listeners' events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from relayctl.core.backfill.guards import (
    GO_VERDICT,
    SAMPLE_EVERY_S,
    STOP,
    THROTTLE,
    Guards,
    ServerSample,
    Verdict,
)
from relayctl.core.backfill.progress import BackfillProgress
from relayctl.core.metrics import Metrics

INTERRUPTED = "interrupted"
CLEAR = {"throttle_reason": "", "throttle_kind": "", "throttle_value": "", "throttle_limit": "",
         "throttle_since": ""}


class Throttle:
    def __init__(self, guards: Guards, progress: BackfillProgress, metrics: Metrics, *,
                 write: Callable[[dict[str, str]], None],
                 emit: Callable[[str], None], sleep: Callable[[float], None],
                 total_s: float = 0.0) -> None:
        self.guards = guards
        self.progress = progress
        self.metrics = metrics
        self.write = write
        self.emit = emit
        self.sleep = sleep
        self.total_s = total_s
        self._held: dict[str, Verdict] = {}
        self._lock = threading.RLock()

    def hold(self, lane: str, verdict: Verdict, recheck: Callable[[], ServerSample | None],
             interrupt: Callable[[], int | None]) -> Verdict:
        """Pause the lane and re-check every SAMPLE_EVERY_S until the guard lets go; returns
        GO, a STOP verdict, or INTERRUPTED (with the exit code) when the operator stopped."""
        while verdict.action == THROTTLE:
            self._on(lane, verdict)
            t0 = time.monotonic()
            self.sleep(SAMPLE_EVERY_S)
            self.tick(verdict.reason, time.monotonic() - t0)
            code = interrupt()
            if code is not None:
                self._off(lane, quiet=True)
                return Verdict(INTERRUPTED, exit_code=code)
            sample = recheck()
            verdict = self.guards.judge(lane, sample) if sample is not None else GO_VERDICT
        self._off(lane, quiet=verdict.action == STOP)
        return verdict

    def release(self, lane: str) -> None:
        """The lane's walk is abandoned (a rescan follows): it holds nothing any more."""
        self._off(lane, quiet=True)

    def held_elsewhere(self, lane: str) -> bool:
        with self._lock:
            return any(name != lane for name in self._held)

    def latency(self, lane: str, wait_s: float, scan_ms: float, limit_ms: float) -> None:
        """The --max-latency-ms back-off as one more guard: same state, metric and events."""
        if wait_s <= 0:
            self._off(lane)
            return
        self._on(lane, Verdict(THROTTLE, "latency",
                               f"latency {scan_ms:.0f} ms > {limit_ms:g} ms",
                               f"{scan_ms:.0f} ms", f"{limit_ms:g} ms"))
        self.tick("latency", wait_s)

    def tick(self, reason: str, seconds: float) -> None:
        with self._lock:
            self.total_s += seconds
            self.metrics.inc(self.metrics.backfill_throttled, reason, amount=seconds)
            self.write({"throttled_s": f"{self.total_s:.3f}"})

    def _on(self, lane: str, verdict: Verdict) -> None:
        with self._lock:
            before = self._held.get(lane)
            self._held[lane] = verdict
            if before is not None and before.message == verdict.message:
                return
            p = self.progress
            p.status, p.message = "throttled", verdict.message
            change = {"status": "throttled", "throttle_reason": verdict.message,
                      "throttle_kind": verdict.reason, "throttle_value": verdict.value,
                      "throttle_limit": verdict.limit, "message": verdict.message,
                      "updated": f"{time.time():.3f}"}
            if before is None and len(self._held) == 1:
                change["throttle_since"] = change["updated"]
            self.write(change)
            self.emit("throttled")

    def _off(self, lane: str, quiet: bool = False) -> None:
        with self._lock:
            if self._held.pop(lane, None) is None or self._held:
                return
            if quiet:
                self.write(dict(CLEAR))
                return
            p = self.progress
            p.status, p.message = "running", "guards clear; running"
            self.write({**CLEAR, "status": "running", "message": p.message,
                        "updated": f"{time.time():.3f}"})
            self.emit("unthrottled")
