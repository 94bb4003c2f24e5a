"""What an operator asked of a run: the seeds' flags plus the engine's own."""

from __future__ import annotations

from dataclasses import dataclass

from relayctl.core.errors import UsageError


@dataclass
class BackfillOptions:
    execute: bool = False
    workspaces: tuple[str, ...] = ()
    rps: float = 0.0
    batch: int = 500
    max_keys: int | None = None
    fresh: bool = False
    resume: bool = False
    max_latency_ms: float | None = None
    force: bool = False
    retry_for_s: float = 30.0
    workers: int = 1
    max_memory_pct: float = 85.0
    critical_memory_pct: float = 95.0
    max_memory_bytes: int | None = None
    allow_evicting_policy: bool = False
    max_replica_lag_bytes: int | None = None
    max_replica_lag_s: float = 2.0
    wait_replicas: int = 0
    guards: bool = True  # off only in `relayctl bench`, to measure what the guards cost

    def validate(self) -> None:
        """One-line refusals before anything is read or written."""
        if self.batch < 1 or self.batch > 100_000:
            raise UsageError("--batch must be between 1 and 100000")
        if self.rps < 0:
            raise UsageError("--rps must be >= 0 (0 = unlimited)")
        if self.max_keys is not None and self.max_keys < 1:
            raise UsageError("--max-keys must be >= 1")
        if not 1 <= self.workers <= 64:
            raise UsageError("--workers must be between 1 and 64")
        if self.fresh and self.resume:
            raise UsageError("--fresh and --resume are mutually exclusive")
        if not 1 <= self.max_memory_pct <= 100 or not 1 <= self.critical_memory_pct <= 100:
            raise UsageError("--max-memory-pct and --critical-memory-pct must be 1..100")
        if self.critical_memory_pct < self.max_memory_pct:
            raise UsageError(f"--critical-memory-pct {self.critical_memory_pct:g} is below "
                             f"--max-memory-pct {self.max_memory_pct:g}")
        if self.max_memory_bytes is not None and self.max_memory_bytes < 1:
            raise UsageError("--max-memory-bytes must be >= 1")
        if self.max_replica_lag_bytes is not None and self.max_replica_lag_bytes < 1:
            raise UsageError("--max-replica-lag-bytes must be >= 1")
        if self.max_replica_lag_s <= 0:
            raise UsageError("--max-replica-lag-s must be > 0")
        if not 0 <= self.wait_replicas <= 64:
            raise UsageError("--wait-replicas must be between 0 and 64")
