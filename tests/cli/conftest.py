from __future__ import annotations

from dataclasses import dataclass

import pytest

from relayctl.cli import main


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `relayctl ARGS` in-process through the real entry point (error mapping included)."""
    for var in ("REDIS_URL", "AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW", "READ_FALLBACK_OLD"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str) -> Run:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Run(code=code, out=captured.out, err=captured.err)

    return run
