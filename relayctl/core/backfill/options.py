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
