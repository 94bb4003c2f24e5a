"""The README's demo walkthrough, driven with its keys on the embedded demo (`--speed`),
through all six phases with no override: each phase's gates PASS before `A`."""

from __future__ import annotations

import time

import pytest
from textual.pilot import Pilot

from relayctl.core.connection import connect
from relayctl.core.demo import start_demo
from relayctl.core.keys import KeySchema
from relayctl.core.phases import LAST_PHASE, phase
from relayctl.tui.app import RelayApp
from relayctl.tui.screens import BackfillForm, ChecklistScreen, ConfirmScreen
from tests.tui.kit import audit_entries, engine_pid_from_audit, run_pilot, type_text, wait_until

SPEED = 100_000  # 30 demo days in about 26 s


async def reason_enter(pilot: Pilot, reason: str) -> None:
    """A confirmation: the reason field has the focus; type, Enter."""
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "a dialog")
    await type_text(pilot, reason)
    await pilot.press("enter")
    await pilot.pause(0.2)


def gates_pass(app: RelayApp, number: int) -> bool:
    s = app.state
    return (s.phase_number == number and bool(s.gates)
            and all(g.status == "PASS" for g in s.gates))


async def until_pass(pilot: Pilot, app: RelayApp, number: int, timeout: float = 90) -> None:
    """Let the demo run; press `u` again when a census gate says the census is behind, `v`
    when the archive's fresh-verify gate says the verify is (the README's keys)."""
    async def census_when_needed() -> bool:
        stale = [g for g in app.state.gates if g.status != "PASS"
                 and g.gate.startswith(("census", "new_keys"))]
        if stale:
            await pilot.press("u")
            await pilot.pause(1.0)
        if any(g.gate == "verify_fresh" and g.status != "PASS" for g in app.state.gates):
            await pilot.press("v")
            await pilot.pause(1.0)
        return gates_pass(app, number)

    deadline = time.monotonic() + timeout
    while not gates_pass(app, number):
        if time.monotonic() > deadline:
            raise AssertionError(f"phase {number} gates never all PASS: " + ", ".join(
                f"{g.gate}={g.status} {g.value} ({g.detail})" for g in app.state.gates
                if g.status != "PASS"))
        await census_when_needed()
        await pilot.pause(0.5)


@pytest.mark.slow
@pytest.mark.walkthrough
@pytest.mark.timeout(1200)
def test_readme_walkthrough_passes_every_phase_without_an_override(engine_pids):
    schema = KeySchema()
    stack = start_demo(schema, speed=SPEED)
    client = connect(stack.url)
    app = RelayApp(redis_url=stack.url, metrics_urls=[stack.metrics_url], actor="walker",
                   schema=schema, clock=stack.clock, thresholds=stack.thresholds,
                   refresh_s=0.5, demo=True)
    app.animation_level = "none"
    passed: list[int] = []

    async def scenario(pilot: Pilot) -> None:
        t0 = time.monotonic()
        await wait_until(pilot, lambda: app.state.redis_status == "CONNECTED", "connect")
        await pilot.press("c")
        assert isinstance(app.screen, ChecklistScreen)
        for number in range(LAST_PHASE + 1):
            if number == 4:  # the backfill, from the dashboard's form
                await pilot.press("escape", "b")
                await wait_until(pilot, lambda: isinstance(app.screen, BackfillForm), "form")
                await pilot.press("space")  # execute (the focus starts there)
                await pilot.press("tab")  # the reason follows the execute box
                await type_text(pilot, "p4 run")
                await pilot.press("enter")
                await wait_until(pilot, lambda: engine_pid_from_audit(client), "the spawn")
                engine_pids.append(engine_pid_from_audit(client))
                await wait_until(pilot, lambda: app.state.backfill.get("status") == "completed",
                                 "the backfill to complete", timeout=120)
                await pilot.press("v")
                await pilot.pause(0.5)
                await pilot.press("c")
            await pilot.press("x")  # check off the phase's manual items, one reason
            manual = [i.id for i in phase(number).prerequisites + phase(number).validation
                      if i.manual]
            if manual:
                await reason_enter(pilot, f"ok{number}")
                await wait_until(pilot, lambda m=manual: all(
                    app.state.checklist.done(i) for i in m), "the items checked off")
            if number > 0:
                await pilot.press("a")
                await reason_enter(pilot, f"go{number}")
            await pilot.press("u")
            said: list[str] = []
            for _attempt in range(3):  # a windowed gate can flip between `A` and the advance
                await until_pass(pilot, app, number)
                await pilot.press("A")
                assert isinstance(app.screen, ConfirmScreen), [
                    n.message for n in app._notifications]
                await reason_enter(pilot, f"p{number}")
                try:
                    await wait_until(pilot, lambda n=number: app.state.checklist.phase == n + 1,
                                     f"the advance from phase {number}", timeout=20)
                    break
                except AssertionError:
                    said += [str(n.message) for n in app._notifications]
            else:
                raise AssertionError(f"phase {number} never advanced; the console said: {said}")
            passed.append(number)
            print(f"phase {number} advanced at {time.monotonic() - t0:.0f}s")

    try:
        run_pilot(app, scenario, size=(160, 48), timeout=840)
        entries = audit_entries(client)
    finally:
        stack.close()
    assert passed == list(range(LAST_PHASE + 1))
    assert not [e for e in entries if e["action"] == "gate.override"]
    assert [e["reason"] for e in entries if e["action"] == "checklist.advance"] == [
        f"p{n} (all gates pass)" for n in range(LAST_PHASE + 1)]


def test_the_advance_keeps_the_operators_reason():
    """Defect 5: the reason typed in the advance dialog is the audit entry's reason."""
    schema = KeySchema()
    stack = start_demo(schema, speed=SPEED)
    client = connect(stack.url)
    app = RelayApp(redis_url=stack.url, metrics_urls=[stack.metrics_url], actor="walker",
                   schema=schema, clock=stack.clock, thresholds=stack.thresholds,
                   refresh_s=0.5, demo=True)

    async def scenario(pilot: Pilot) -> None:
        await wait_until(pilot, lambda: app.state.redis_status == "CONNECTED", "connect")
        await pilot.press("c", "x")
        await reason_enter(pilot, "env reviewed")
        await pilot.press("u")
        await until_pass(pilot, app, 0)
        await pilot.press("A")
        await reason_enter(pilot, "p0")
        await wait_until(pilot, lambda: app.state.checklist.phase == 1, "the advance")

    try:
        run_pilot(app, scenario, size=(80, 24), timeout=120)
        advances = [e for e in audit_entries(client) if e["action"] == "checklist.advance"]
    finally:
        stack.close()
    assert advances and advances[-1]["reason"].startswith("p0")
