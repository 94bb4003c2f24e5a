"""Fixtures of the console suite (helpers and fixed states live in kit.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tui.kit import kill_pid


@pytest.fixture(autouse=True)
def _quiet_console_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No animation; no flag pins or Redis URL leaking in from the environment."""
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    for var in ("REDIS_URL", "AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW", "READ_FALLBACK_OLD",
                "RELAYCTL_BACKFILL_LEASE_MS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def engine_pids() -> Iterator[list[int]]:
    """Backfill engines a test started (from the console or the CLI) are ended at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        kill_pid(pid)
