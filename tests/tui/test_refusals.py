"""What the console refuses, on a real redis-server: a second backfill from the form, and
quitting the demo mid-backfill without asking."""

from __future__ import annotations

import os

import pytest
from textual.pilot import Pilot

from relayctl.core.demo import ScaledClock, scaled_thresholds
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.keys import AUDIT_KEY
from relayctl.tui.screens import BackfillForm, ChoiceScreen
from tests.tui.kit import (
    audit_entries,
    live_app,
    run_pilot,
    seed_legacy,
    spawn_cli_engine,
    type_text,
    wait_connected,
    wait_until,
)


def test_the_backfill_form_is_refused_with_the_runs_health_while_a_run_is_active(
        redis_url, r, engine_pids):
    """Defects 2 and 10: the form opened and claimed a start while a run was active."""
    seed_legacy(r, 20_000)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    engine = spawn_cli_engine(redis_url, "--execute", "--rps", "500", "--batch", "50")
    engine_pids.append(engine.pid)
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: app.state.engine_alive, "the engine", 15)
        before = r.xlen(AUDIT_KEY)
        await pilot.press("b")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, BackfillForm)
        messages = [n.message for n in app._notifications]
        assert any("already RUNNING" in m for m in messages), messages
        assert r.xlen(AUDIT_KEY) == before

    run_pilot(app, scenario)


def test_a_backfill_started_from_the_cli_is_audited_once_it_holds_the_lease(
        redis_url, r, engine_pids):
    seed_legacy(r, 2_000)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    engine = spawn_cli_engine(redis_url, "--execute", "--reason", "week 4 from a shell")
    engine_pids.append(engine.pid)
    assert engine.wait(timeout=60) == 0
    second = spawn_cli_engine(redis_url, "--execute", "--resume")
    second.wait(timeout=60)  # refused: nothing unfinished to resume
    starts = [e for e in audit_entries(r) if e["action"] == "backfill.start"]
    assert [(e["actor"], e["reason"]) for e in starts] == [("pytest-cli", "week 4 from a shell")]
    assert starts[0]["after"].startswith(f"pid {engine.pid} execute (run ")


@pytest.mark.parametrize("speed", [1, 100_000], ids=["wall-clock", "demo-clock-x100000"])
def test_q_in_the_demo_asks_while_a_backfill_runs(redis_url, r, engine_pids, speed):
    """Defect 3: `q` quit the demo (and its embedded Redis) at once, even mid-backfill; on
    the demo's scaled clock a live engine's heartbeat looked days old, so `q` did not ask."""
    seed_legacy(r, 20_000)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    engine = spawn_cli_engine(redis_url, "--execute", "--rps", "500", "--batch", "50")
    engine_pids.append(engine.pid)
    app = live_app(redis_url, demo=True, clock=ScaledClock(speed),
                   thresholds=scaled_thresholds({}, speed))

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: app.state.engine_alive
                         and app.state.backfill.get("status") == "running", "the engine", 15)
        await pilot.pause(1.5)  # a few refreshes on the scaled clock: days of demo time
        assert app.state.engine_alive
        await pilot.press("q")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ChoiceScreen) and app.is_running
        await pilot.press("enter")  # "Stay" is highlighted first
        await pilot.pause(0.2)
        assert app.is_running and not isinstance(app.screen, ChoiceScreen)

    run_pilot(app, scenario)


def test_a_start_the_engine_refuses_shows_its_reason_audits_nothing_and_leaves_no_zombie(
        redis_url, r, engine_pids):
    """Defect 2: the form said `started` and audited `backfill.start` for an engine that was
    refused; its stderr went nowhere and it stayed a zombie."""
    seed_legacy(r, 200)  # dual-write is off: the engine refuses to run without --force
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await pilot.press("b")
        assert isinstance(app.screen, BackfillForm)
        await pilot.press("space", "tab")
        await type_text(pilot, "week 4")
        await pilot.press("enter")
        refusal = await wait_until(pilot, lambda: next(
            (str(n.message) for n in app._notifications if "refused" in str(n.message)), None),
            "the refusal", 20)
        assert "exit 2" in refusal and "dual-write" in refusal.lower(), refusal
        assert not any("started" in str(n.message) for n in app._notifications)
        assert [e for e in audit_entries(r) if e["action"] == "backfill.start"] == []
        pid = int(refusal.split("pid ")[1].split(")")[0])
        engine_pids.append(pid)
        await wait_until(pilot, lambda: not os.path.exists(f"/proc/{pid}"), "the reaping", 5)

    run_pilot(app, scenario)
