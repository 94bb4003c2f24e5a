"""The counters of one run as the engine reports them to its listeners (CLI, console)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relayctl.core.backfill.state import REASONS

CHECKPOINT_EVERY = 5_000


def scan_fraction(cursor: int) -> float:
    """How much of the keyspace a SCAN cursor has covered: SCAN walks reversed bits."""
    if cursor == 0:
        return 0.0
    return int(f"{cursor:064b}"[::-1], 2) / 2**64


@dataclass
class BackfillProgress:
    """Counters of one run (cumulative across resumes when executing)."""

    run_id: str = ""
    status: str = "running"
    mode: str = "dry-run"
    cursor: int = 0
    scanned: int = 0
    migrated: int = 0
    indexed: int = 0  # existing copies whose missing index entry was added
    healed: int = 0  # partial existing copies completed from the legacy record
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    started: float = 0.0
    elapsed_s: float = 0.0
    rate: float = 0.0
    fraction: float = 0.0
    eta_s: float | None = None
    throttle_s: float = 0.0
    latency_ms: float = 0.0
    message: str = ""
    cursors: dict[str, int] = field(default_factory=dict)  # per shard, on a cluster
    shards_done: int = 0
    preflight: list[str] = field(default_factory=list)  # the memory projection, per server
    refusals: list[str] = field(default_factory=list)  # why --execute would be refused
    invalid_examples: list[str] = field(default_factory=list)  # key names not UTF-8, escaped

    @property
    def errors(self) -> int:
        return self.skipped["error"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "mode": self.mode,
            "cursor": self.cursor, "scanned": self.scanned, "migrated": self.migrated,
            "indexed": self.indexed, "healed": self.healed,
            "skipped": dict(self.skipped), "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3), "rate": round(self.rate, 1),
            "fraction": round(self.fraction, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "throttle_s": round(self.throttle_s, 4), "latency_ms": round(self.latency_ms, 3),
            "message": self.message,
            **({"cursors": dict(self.cursors), "shards_done": self.shards_done}
               if self.cursors else {}),
            **({"preflight": list(self.preflight), "refusals": list(self.refusals)}
               if self.preflight else {}),
            **({"invalid_examples": list(self.invalid_examples)}
               if self.invalid_examples else {}),
        }
