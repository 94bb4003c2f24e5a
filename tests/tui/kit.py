"""Helpers of the console suite: fixed ConsoleStates for snapshots, Pilot helpers for the
tests that drive the console against a real redis-server (fixtures live in conftest.py).

pytest-asyncio is not a test dependency of the project, so Pilot tests are plain sync tests
that run their coroutine with `asyncio.run` (see `run_pilot`).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import redis
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Input

from relayctl.core.audit import AuditEntry
from relayctl.core.census import Census
from relayctl.core.checklist import ChecklistState
from relayctl.core.console import ConsoleState, FlagRow, Rates
from relayctl.core.demo import legacy_record
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW
from relayctl.core.gates import GateResult
from relayctl.core.keys import AUDIT_KEY, KeySchema
from relayctl.tui.app import RelayApp
from relayctl.tui.screens import ConfirmScreen

# 2026-01-01 00:00:00 UTC: every timestamp of the fixed states is relative to it.
FIXED_TS = 1_767_225_600.0
FIXED_URL = "redis://127.0.0.1:6390/0"  # never connected to: snapshots use `source`


# ---------------------------------------------------------------------------------------------
# Fixed states (no clock, no Redis)
# ---------------------------------------------------------------------------------------------

def _audit(n: int, ago_s: float, actor: str, action: str, target: str, before: str,
           after: str, reason: str) -> AuditEntry:
    ts = FIXED_TS - ago_s
    return AuditEntry(id=f"{int(ts * 1000)}-{n}", ts=ts, actor=actor, action=action,
                      target=target, before=before, after=after, reason=reason)


def mid_backfill_state() -> ConsoleState:
    """Phase 4 (backfill campaign), an engine running at 60%, one gate failing."""
    checklist = ChecklistState(
        phase=4,
        items={"p4-implement": {"state": "done", "actor": "alice", "ts": FIXED_TS - 7200}},
        applied={4: FIXED_TS - 5400},
    )
    return ConsoleState(
        ts=FIXED_TS,
        redis_status="CONNECTED",
        metrics_status="OK",
        flags=[
            FlagRow(name=DUAL_WRITE, value=True, stored=True, actor="alice",
                    ts=FIXED_TS - 3 * 86400, reason="phase 3", agree=3),
            FlagRow(name=PREFERS_NEW, value=True, stored=True, actor="alice",
                    ts=FIXED_TS - 20 * 86400, reason="phase 1", agree=3),
            FlagRow(name=FALLBACK_OLD, value=True, stored=None, agree=2, pinned=["api-2"]),
        ],
        instances=3,
        backfill={
            "run_id": "bf-0042", "status": "running", "mode": "execute",
            "owner": "ops-1:4242", "scanned": "12000", "migrated": "11790",
            "skipped_exists": "200", "skipped_invalid": "7", "skipped_filtered": "0",
            "errors": "3", "rate": "1500", "heartbeat": str(FIXED_TS - 2),
        },
        engine_alive=True,
        census=Census(old=20_000, new=11_790, index_keys=4, index_entries=11_790,
                      scanned=31_794, duration_s=2.5, ts=FIXED_TS - 600),
        verify={"ts": FIXED_TS - 1800, "mode": "sample", "clean": True, "checked": 5000,
                "counts": {}, "repaired": 0},
        memory={"used": 512 * 2**20, "maxmemory": 2048 * 2**20, "evicted": 0},
        audit=[
            _audit(5, 30, "alice", "backfill.start", "backfill", "", "pid 4242 execute",
                   "phase 4 campaign"),
            _audit(4, 5400, "alice", "checklist.apply", "phase 4", "", "{}", "week 4"),
            _audit(3, 3 * 86400, "alice", "flag.set", DUAL_WRITE, "off", "on", "phase 3"),
            _audit(2, 10 * 86400, "bob", "checklist.advance", "phase", "2", "3",
                   "all gates pass"),
            _audit(1, 20 * 86400, "alice", "flag.set", PREFERS_NEW, "off", "on", "phase 1"),
        ],
        checklist=checklist,
        gates=[
            GateResult("dual_write_on", "dual-write on", "PASS", "on", "flag on"),
            GateResult("backfill_complete", "backfill complete", "WAIT", "60.0%",
                       "status completed", "engine running"),
            GateResult("verify_clean", "verify clean", "PASS", "clean", "no differences"),
            GateResult("census_equal", "census equal", "WAIT", "11,790/20,000",
                       "new >= old", "census 10m old"),
            GateResult("new_read_share_98", "new share 98%", "FAIL", "87.18%",
                       "new share of found reads >= 98.00%"),
            GateResult("backfill_errors", "backfill errors", "PASS", "3", "errors < 100"),
        ],
        triggers=[GateResult("backfill_errors", "backfill errors", "PASS", "3",
                             "errors < 100")],
        rates=Rates(reads={"new": 850.0, "old": 125.0, "miss": 5.0},
                    lists={"new": 40.0, "mixed": 8.0, "old": 2.0},
                    dual_ok=998.0, dual_failed=2.0, seconds=2.0),
        new_share_history=[0.5 + 0.4 * i / 30 for i in range(30)],
        redis_updated=FIXED_TS,
        metrics_updated=FIXED_TS,
    )


def disconnected_state(redis_status: str) -> ConsoleState:
    """The same values, but Redis lost (DOWN or RECONNECTING) and the metrics scrape stale:
    every panel keeps its last values and is marked stale."""
    state = copy.deepcopy(mid_backfill_state())
    state.ts = FIXED_TS + 45
    state.redis_status = redis_status
    state.redis_error = "Redis at 127.0.0.1:6390 unreachable: connection refused"
    state.metrics_status = "STALE"
    state.metrics_error = "http://127.0.0.1:9100/metrics unreachable: connection refused"
    return state


def fixed_app(state: ConsoleState, **kwargs: object) -> RelayApp:
    """A console that renders `state` and nothing else: no Redis, no clock, no animation."""
    app = RelayApp(redis_url=FIXED_URL, source=lambda: state, clock=lambda: FIXED_TS,
                   actor="snapshot", **kwargs)  # type: ignore[arg-type]
    app.animation_level = "none"
    return app


# ---------------------------------------------------------------------------------------------
# Pilot helpers
# ---------------------------------------------------------------------------------------------

def run_pilot(app: RelayApp, scenario: Callable[[Pilot], Awaitable[None]],
              size: tuple[int, int] = (160, 48), timeout: float = 60) -> None:
    """Run `scenario(pilot)` against `app` headless, in a fresh event loop."""
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await asyncio.wait_for(scenario(pilot), timeout)
    asyncio.run(main())


async def wait_until(pilot: Pilot, predicate: Callable[[], object], what: str,
                     timeout: float = 10.0, step: float = 0.05) -> object:
    """Let the app run (workers, messages) until `predicate()` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(step)


async def type_text(pilot: Pilot, text: str) -> None:
    await pilot.press(*["space" if ch == " " else ch for ch in text])


async def confirm_with_reason(pilot: Pilot, reason: str) -> None:
    """What an operator does in the confirmation: the reason field has the focus; type it,
    Enter confirms."""
    screen = pilot.app.screen
    assert isinstance(screen, ConfirmScreen), f"expected the confirmation, got {screen!r}"
    if screen.require_typed:  # an override while a rollback trigger fires: the gate's name
        assert screen.focused is not None and screen.focused.id == "typed"
        await type_text(pilot, screen.require_typed)
        await pilot.press("enter")
    assert screen.focused is not None and screen.focused.id == "reason", "the reason has focus"
    await type_text(pilot, reason)
    await pilot.press("enter")
    await pilot.pause()


FLAG_ORDER = (DUAL_WRITE, PREFERS_NEW, FALLBACK_OLD)


async def open_flag(pilot: Pilot, name: str) -> None:
    """`f`, then the flag's row in the picker, Enter: the flag's confirmation opens."""
    await pilot.press("f")
    await pilot.pause()
    await pilot.press(*["down"] * FLAG_ORDER.index(name), "enter")
    await pilot.pause()


async def cancel_dialog(pilot: Pilot, reason: str = "changed my mind") -> None:
    """With a reason filled in, press Cancel: the dialog closes and nothing may happen."""
    screen = pilot.app.screen
    assert isinstance(screen, ConfirmScreen), f"expected the confirmation, got {screen!r}"
    screen.query_one("#reason", Input).value = reason
    await pilot.click("#cancel")
    await pilot.pause()
    assert not isinstance(pilot.app.screen, ConfirmScreen)


def audit_entries(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(AUDIT_KEY)]


def is_engine(pid: int) -> bool:
    """pid is a live `relayctl backfill` process (not exited, not reused by something else)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"relayctl" in cmdline and b"backfill" in cmdline


def kill_pid(pid: int) -> None:
    """End an engine this suite started, by its pid, if it is still that engine."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_engine(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while is_engine(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Consoles against a real redis-server
# ---------------------------------------------------------------------------------------------

ACTOR = "pytest-operator"


def live_app(redis_url: str, **kwargs: object) -> RelayApp:
    """A console on a real Redis, refreshing every 0.5 s, actor `ACTOR`."""
    kwargs.setdefault("refresh_s", 0.5)
    kwargs.setdefault("actor", ACTOR)
    app = RelayApp(redis_url=redis_url, **kwargs)  # type: ignore[arg-type]
    app.animation_level = "none"
    return app


async def wait_connected(pilot: Pilot, timeout: float = 10.0) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.state.redis_status == "CONNECTED",  # type: ignore[attr-defined]
                     "the console to connect", timeout)


async def wait_refreshed(pilot: Pilot, timeout: float = 10.0) -> None:
    """Wait for a refresh that started after now: the second state update from here (the
    first may come from a fetch already in flight)."""
    app = pilot.app
    for _ in range(2):
        app._next_due = 0.0  # type: ignore[attr-defined]
        before = app.state  # type: ignore[attr-defined]
        await wait_until(pilot, lambda b=before: app.state is not b,  # type: ignore[attr-defined]
                         "a refresh", timeout)


# ---------------------------------------------------------------------------------------------
# Backfill engines and the CLI
# ---------------------------------------------------------------------------------------------

RELAYCTL = [sys.executable, "-m", "relayctl"]
CLI_ACTOR = "pytest-cli"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW",
                        "READ_FALLBACK_OLD", "RELAYCTL_BACKFILL_LEASE_MS",
                        "RELAYCTL_START_AUDITED")}
    env.update(PYTHONUNBUFFERED="1", RELAYCTL_ACTOR=CLI_ACTOR)
    return env


def relayctl(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`relayctl --redis-url URL ARGS` as an operator runs it, in a subprocess."""
    return subprocess.run([*RELAYCTL, "--redis-url", url, *args], capture_output=True,
                          text=True, timeout=timeout, env=cli_env())


def cli_status(url: str) -> tuple[int, dict]:
    out = relayctl(url, "backfill", "status", "--json")
    return out.returncode, json.loads(out.stdout)


def spawn_cli_engine(url: str, *args: str) -> subprocess.Popen[str]:
    """`relayctl backfill --execute ...` started from a shell, not from the console."""
    return subprocess.Popen([*RELAYCTL, "--redis-url", url, "backfill", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cli_env())


_SEED = """
local prefix, n = ARGV[1], tonumber(ARGV[2])
local ws = {'ws-a', 'ws-b', 'ws-c', 'ws-d'}
for i = 0, n - 1 do
  local id = string.format('t%06d', i)
  local key = prefix .. id
  redis.call('HSET', key, 'job_id', id, 'workspace_id', ws[i % 4 + 1], unpack(ARGV, 3))
end
return n
"""


def seed_legacy(client: redis.Redis, n: int) -> None:
    """n legacy jobs t000000.. over four workspaces, written server-side in one script (a
    20,000-job seed takes milliseconds, enough for an engine at --rps 2000 to run 10 s)."""
    schema = KeySchema()
    template = legacy_record(random.Random(7), "ws-a", "t0", FIXED_TS - 3600)
    fields = [x for k, v in template.items() if k not in ("job_id", "workspace_id")
              for x in (k, v)]
    client.eval(_SEED, 0, schema.old_key(""), n, *fields)


def engine_pid_from_audit(client: redis.Redis) -> int | None:
    """The pid the console's spawn recorded: audit 'backfill.start', after 'pid '."""
    for fields in reversed(audit_entries(client)):
        if fields.get("action") == "backfill.start":
            match = re.search(r"pid (\d+)", fields.get("after", ""))
            if match:
                return int(match.group(1))
    return None


def rendered_text(renderable: object, width: int = 100) -> str:
    """The plain text a Rich renderable (a panel body) shows."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def long_audit_state() -> ConsoleState:
    """A full audit log: entries whose change is long JSON (they shrank when/actor/action)."""
    state = copy.deepcopy(mid_backfill_state())
    big = json.dumps({"AI_JOBS_NEW_SCHEMA": True, "READ_PREFERS_NEW": True,
                      "READ_FALLBACK_OLD": False, "note": "x" * 120})
    state.audit = [
        _audit(100 + i, 60 * i, f"sre-{'alice' if i % 2 else 'bob'}",
               "checklist.apply" if i % 3 == 0 else "backfill.set" if i % 3 == 1
               else "flag.set", f"phase {i % 7}", "{}" if i % 3 else "", big,
               "reviewed in the change meeting " * 3)
        for i in range(25)]
    return state


def backfill_state(health: str) -> ConsoleState:
    """The mid-backfill state with the engine THROTTLED, DEAD, STALLED or finished."""
    state = copy.deepcopy(mid_backfill_state())
    bf = state.backfill
    if health == "throttled":
        bf.update(status="throttled", throttle_reason="memory 86% ≥ 85%",
                  throttle_value="86.2%", throttle_limit="85%", throttled_s="42")
    elif health == "dead":
        state.engine_alive = False
        bf.update(heartbeat=str(FIXED_TS - 300))
    elif health == "stalled":
        bf.update(heartbeat=str(FIXED_TS - 60))
    elif health == "finished":
        state.engine_alive = False
        bf.update(status="completed", message="done", scanned="20000")
    return state


def cluster_backfill_state() -> ConsoleState:
    """A cluster run: one lane per shard, two done."""
    state = copy.deepcopy(mid_backfill_state())
    for shard, done in (("0", True), ("5461", True), ("10923", False)):
        state.backfill[f"cursor:{shard}"] = "0" if done else "1234"
        state.backfill[f"done:{shard}"] = "1" if done else "0"
    return state
