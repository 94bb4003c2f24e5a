"""Every write action of the console, driven with Pilot against the private redis-server.

For each: confirming with a reason changes Redis and appends an audit entry carrying the
console's actor and the typed reason; Cancel changes nothing and audits nothing; a read-only
console refuses it (no dialog, nothing written). Writes run in thread workers, so each test
polls Redis until the effect shows (or a settle time passes, for the negative cases).
"""

from __future__ import annotations

import pytest
import redis
from textual.pilot import Pilot
from textual.widgets import OptionList

from relayctl.core import checklist as checklist_core
from relayctl.core.backfill import EXIT_STOPPED, BackfillKeys, read_state, send_control
from relayctl.core.evaluation import GateConfig, gate_context
from relayctl.core.flags import (
    DEFAULTS,
    DUAL_WRITE,
    FALLBACK_OLD,
    PREFERS_NEW,
    set_flag,
    stored_flags,
)
from relayctl.core.keys import AUDIT_KEY, CHECKLIST_KEY, FLAGS_KEY
from relayctl.core.phases import phase
from relayctl.tui.app import WRITE_ACTIONS
from relayctl.tui.screens import ChecklistScreen, ConfirmScreen, RollbackPicker
from tests.tui.kit import (
    ACTOR,
    audit_entries,
    cancel_dialog,
    confirm_with_reason,
    live_app,
    open_flag,
    rendered_text,
    run_pilot,
    seed_legacy,
    spawn_cli_engine,
    wait_connected,
    wait_refreshed,
    wait_until,
)

KEYS = BackfillKeys()
KEY_FLAG = {"1": DUAL_WRITE, "2": PREFERS_NEW, "3": FALLBACK_OLD}


def snapshot(r: redis.Redis, engine_running: bool = False) -> dict:
    """What a refused or cancelled action must leave untouched (a running engine changes
    the keyspace and its own state by itself: then those are left out)."""
    snap = {"flags": r.hgetall(FLAGS_KEY), "checklist": r.hgetall(CHECKLIST_KEY),
            "audit": r.xlen(AUDIT_KEY), "control": r.get(KEYS.control)}
    if not engine_running:
        snap.update(dbsize=r.dbsize(), backfill=r.hgetall(KEYS.state))
    return snap


def new_entries(r: redis.Redis, before: int) -> list[dict[str, str]]:
    return audit_entries(r)[before:]


async def settle(pilot: Pilot) -> None:
    """Long enough for a worker that should not exist to have written."""
    await pilot.pause(0.6)


# ---------------------------------------------------------------------------------------------
# flags: keys 1 / 2 / 3
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["1", "2", "3"])
def test_flag_key_confirmed_with_reason_flips_the_flag_and_audits_actor_and_reason(
        redis_url, r, key):
    name = KEY_FLAG[key]
    target = not DEFAULTS[name]
    reason = f"flip {key}"
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await open_flag(pilot, name)
        screen = pilot.app.screen
        assert isinstance(screen, ConfirmScreen)
        assert screen.title_text == f"Set {name} = {'on' if target else 'off'}?"
        before = r.xlen(AUDIT_KEY)
        await confirm_with_reason(pilot, reason)
        await wait_until(pilot, lambda: stored_flags(r).get(name) is target, f"{name} written")
        entries = new_entries(r, before)
        assert len(entries) == 1, entries
        e = entries[0]
        assert (e["action"], e["target"], e["actor"], e["reason"]) == (
            "flag.set", name, ACTOR, reason)
        assert e["after"] == ("on" if target else "off")
        # the console shows the new value after its next refresh
        await wait_refreshed(pilot)
        row = next(f for f in pilot.app.state.flags if f.name == name)
        assert row.value is target and row.actor == ACTOR

    run_pilot(app, scenario)
    others = {n: v for n, v in stored_flags(r).items() if n != name}
    assert others == {}, "only the chosen flag was written"


def test_flag_keys_cancelled_change_nothing_and_audit_nothing(redis_url, r):
    set_flag(r, FALLBACK_OLD, True, actor="pytest", reason="setup")
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        before = snapshot(r)
        await open_flag(pilot, KEY_FLAG["1"])
        await cancel_dialog(pilot)              # Cancel button, a reason typed
        await open_flag(pilot, KEY_FLAG["2"])
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("escape")             # Escape
        assert not isinstance(pilot.app.screen, ConfirmScreen)
        await open_flag(pilot, KEY_FLAG["3"])
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("enter")              # Enter without a reason: refused
        assert isinstance(pilot.app.screen, ConfirmScreen)
        await pilot.press("escape")
        assert not isinstance(pilot.app.screen, ConfirmScreen)
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


def test_confirm_without_a_reason_is_refused_and_writes_nothing(redis_url, r):
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        before = snapshot(r)
        await open_flag(pilot, KEY_FLAG["1"])
        await pilot.click("#confirm")
        assert isinstance(pilot.app.screen, ConfirmScreen), "still asking"
        assert pilot.app.screen.focused.id == "reason"
        await pilot.press("escape")
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


# ---------------------------------------------------------------------------------------------
# checklist screen: apply "a", advance "A", mark an item with space
# ---------------------------------------------------------------------------------------------

def phase_2_ready(r: redis.Redis) -> None:
    """Phase 2 with its one manual item checked off: only the gates stand before Advance."""
    r.hset(CHECKLIST_KEY, "phase", "2")
    checklist_core.mark(r, ["p2-latency"], actor="pytest", reason="setup")


async def until_phase_2_shows(pilot: Pilot) -> None:
    await wait_connected(pilot)
    await wait_until(pilot, lambda: pilot.app.state.checklist.done("p2-latency"),
                     "the checked-off item")


async def open_checklist(pilot: Pilot) -> ChecklistScreen:
    await pilot.press("c")
    screen = pilot.app.screen
    assert isinstance(screen, ChecklistScreen)
    return screen


def test_apply_phase_confirmed_sets_the_phase_flags_records_the_baseline_and_audits(
        redis_url, r):
    r.hset(CHECKLIST_KEY, "phase", "1")  # read-routing: prefers-new on, fallback on
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        assert pilot.app.state.phase_number == 1
        await open_checklist(pilot)
        before = r.xlen(AUDIT_KEY)
        await pilot.press("a")
        assert pilot.app.screen.title_text.startswith("Apply phase 1")
        await confirm_with_reason(pilot, "week 1")
        await wait_until(pilot, lambda: r.hexists(CHECKLIST_KEY, "applied:1"), "apply")
        assert r.hexists(CHECKLIST_KEY, "memory:1"), "the memory baseline of the phase"
        await wait_until(pilot, lambda: len(new_entries(r, before)) == 4, "four audit entries")
        assert stored_flags(r) == {DUAL_WRITE: False, PREFERS_NEW: True, FALLBACK_OLD: True}
        entries = new_entries(r, before)
        assert [(e["action"], e["target"]) for e in entries] == [
            ("checklist.apply", "phase 1"), ("flag.set", DUAL_WRITE),
            ("flag.set", PREFERS_NEW), ("flag.set", FALLBACK_OLD)]
        assert {e["actor"] for e in entries} == {ACTOR}
        assert entries[0]["reason"] == "week 1"
        assert {e["reason"] for e in entries[1:]} == {"phase 1: week 1"}

    run_pilot(app, scenario)


def test_apply_phase_cancelled_changes_nothing(redis_url, r):
    r.hset(CHECKLIST_KEY, "phase", "1")
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await open_checklist(pilot)
        before = snapshot(r)
        await pilot.press("a")
        await cancel_dialog(pilot)
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


def test_advance_confirmed_overrides_the_failing_gates_with_the_reason_and_moves_on(
        redis_url, r):
    phase_2_ready(r)
    app = live_app(redis_url)  # no /metrics: the phase 2 gates cannot pass

    async def scenario(pilot: Pilot) -> None:
        await until_phase_2_shows(pilot)
        failing = [g.gate for g in pilot.app.state.gates if g.status != "PASS"]
        assert failing, "the override path is the one under test"
        await open_checklist(pilot)
        before = r.xlen(AUDIT_KEY)
        await pilot.press("A")
        screen = pilot.app.screen
        assert isinstance(screen, ConfirmScreen)
        assert "Gates not passing" in str(screen.detail)
        await confirm_with_reason(pilot, "load ok")
        await wait_until(pilot, lambda: r.hget(CHECKLIST_KEY, "phase") == "3", "advance")
        entries = new_entries(r, before)
        overrides = [e for e in entries if e["action"] == "gate.override"]
        assert sorted(e["target"] for e in overrides) == sorted(
            f"phase 2/{g}" for g in failing)
        assert {(e["actor"], e["reason"]) for e in overrides} == {(ACTOR, "load ok")}
        advance = [e for e in entries if e["action"] == "checklist.advance"]
        assert len(advance) == 1 and advance[0]["actor"] == ACTOR
        assert (advance[0]["before"], advance[0]["after"]) == ("2", "3")
        assert "load ok" in advance[0]["reason"]
        await wait_refreshed(pilot)
        assert pilot.app.state.phase_number == 3

    run_pilot(app, scenario)


def test_advance_cancelled_stays_on_the_phase_and_audits_nothing(redis_url, r):
    phase_2_ready(r)
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await until_phase_2_shows(pilot)
        await open_checklist(pilot)
        before = snapshot(r)
        await pilot.press("A")
        await cancel_dialog(pilot)
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


def test_advance_with_an_open_manual_item_opens_no_dialog_and_writes_nothing(redis_url, r):
    r.hset(CHECKLIST_KEY, "phase", "2")
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await open_checklist(pilot)
        before = snapshot(r)
        await pilot.press("A")
        assert isinstance(pilot.app.screen, ChecklistScreen), "no confirmation"
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


async def highlight_first_item(pilot: Pilot, screen: ChecklistScreen) -> str:
    items = screen.query_one("#phase-items", OptionList)
    assert screen.focused is items, "the focus lands on the items"
    assert items.highlighted == 0, "the first item is highlighted: space works at once"
    await wait_refreshed(pilot)  # a refresh rebuilds the list and must keep the highlight
    assert items.highlighted == 0, "the refresh dropped the highlighted item"
    option_id = items.get_option_at_index(0).id
    assert option_id is not None
    return option_id


def test_space_on_a_checklist_item_confirmed_checks_it_off_with_actor_and_reason(
        redis_url, r):
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        screen = await open_checklist(pilot)
        item = await highlight_first_item(pilot, screen)
        assert item == "env-dual-off"
        before = r.xlen(AUDIT_KEY)
        await pilot.press("space")
        assert pilot.app.screen.title_text == f"Check off {item}?"
        await confirm_with_reason(pilot, "env ok")
        await wait_until(pilot, lambda: checklist_core.read_checklist(r).done(item), "mark")
        entries = new_entries(r, before)
        assert [(e["action"], e["target"], e["after"], e["actor"], e["reason"])
                for e in entries] == [("checklist.mark", item, "done", ACTOR, "env ok")]
        # the list shows it checked after the next refresh
        await wait_refreshed(pilot)
        items = screen.query_one("#phase-items", OptionList)
        assert str(items.get_option_at_index(0).prompt).startswith("[✓] ")

    run_pilot(app, scenario)


def test_space_on_a_checklist_item_cancelled_leaves_it_open(redis_url, r):
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        screen = await open_checklist(pilot)
        await highlight_first_item(pilot, screen)
        before = snapshot(r)
        await pilot.press("space")
        await cancel_dialog(pilot)
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


# ---------------------------------------------------------------------------------------------
# rollback: "R" -> pick a procedure -> confirm
# ---------------------------------------------------------------------------------------------

async def pick_procedure(pilot: Pilot, procedure_id: str) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, RollbackPicker)
    procs = screen.query_one("#procedures", OptionList)
    assert screen.focused is procs
    procs.highlighted = procs.get_option_index(procedure_id)
    await pilot.press("enter")
    assert isinstance(pilot.app.screen, ConfirmScreen)


def test_rollback_read_routing_confirmed_reverts_reads_and_audits(redis_url, r):
    set_flag(r, PREFERS_NEW, True, actor="pytest", reason="setup")
    set_flag(r, FALLBACK_OLD, True, actor="pytest", reason="setup")
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        before = r.xlen(AUDIT_KEY)
        await pilot.press("R")
        await pick_procedure(pilot, "read-routing")
        await confirm_with_reason(pilot, "misses")
        await wait_until(pilot, lambda: stored_flags(r).get(FALLBACK_OLD) is False, "rollback")
        assert stored_flags(r) == {PREFERS_NEW: False, FALLBACK_OLD: False}
        await wait_until(pilot, lambda: any(e["action"] == "rollback"
                                            for e in new_entries(r, before)), "audit")
        entries = new_entries(r, before)
        roll = [e for e in entries if e["action"] == "rollback"]
        assert [(e["target"], e["actor"], e["reason"]) for e in roll] == [
            ("read-routing", ACTOR, "misses")]
        flag_sets = [e for e in entries if e["action"] == "flag.set"]
        assert sorted(e["target"] for e in flag_sets) == sorted([PREFERS_NEW, FALLBACK_OLD])
        assert {(e["actor"], e["reason"]) for e in flag_sets} == {
            (ACTOR, "rollback read-routing: misses")}

    run_pilot(app, scenario)


def test_rollback_cancelled_in_the_picker_or_the_confirmation_changes_nothing(redis_url, r):
    set_flag(r, PREFERS_NEW, True, actor="pytest", reason="setup")
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        before = snapshot(r)
        await pilot.press("R")
        assert isinstance(pilot.app.screen, RollbackPicker)
        await pilot.press("escape")
        assert not isinstance(pilot.app.screen, RollbackPicker)
        await pilot.press("R")
        await pick_procedure(pilot, "emergency")
        await cancel_dialog(pilot)
        await settle(pilot)
        assert snapshot(r) == before

    run_pilot(app, scenario)


# ---------------------------------------------------------------------------------------------
# backfill pause / resume / stop: z / r / s against a real engine
# ---------------------------------------------------------------------------------------------

def test_backfill_keys_pause_resume_and_stop_a_running_engine_with_audit(
        redis_url, r, engine_pids):
    seed_legacy(r, 20_000)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    engine = spawn_cli_engine(redis_url, "--execute", "--rps", "2000", "--batch", "100")
    engine_pids.append(engine.pid)
    app = live_app(redis_url)

    def status() -> str | None:
        return read_state(r).get("status")

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: pilot.app.state.engine_alive
                         and pilot.app.state.backfill.get("status") == "running",
                         "the console to see the running engine", timeout=15)
        # Cancel first: nothing reaches the engine
        before = r.xlen(AUDIT_KEY)
        await pilot.press("P")
        await cancel_dialog(pilot)
        await settle(pilot)
        assert r.get(KEYS.control) is None and r.xlen(AUDIT_KEY) == before
        assert status() == "running"

        # pausing is the safe action: Enter with no reason pauses (defect 7)
        for key, verb, control, want, reason in (("P", "pause", "pause", "paused", ""),
                                                 ("r", "resume", "run", "running", "resume it"),
                                                 ("s", "stop", "stop", "stopped", "stop it")):
            before = r.xlen(AUDIT_KEY)
            await pilot.press(key)
            assert pilot.app.screen.title_text == f"{verb.title()} the backfill?"
            await confirm_with_reason(pilot, reason)
            await wait_until(pilot, lambda w=want: status() == w, f"engine {want}", timeout=10)
            assert r.get(KEYS.control) == control
            entries = new_entries(r, before)
            assert [(e["action"], e["actor"], e["reason"], e["after"]) for e in entries] == [
                (f"backfill.{verb}", ACTOR, reason or "no reason given", control)]
            await wait_refreshed(pilot)
            assert pilot.app.state.backfill["status"] == want

    run_pilot(app, scenario)
    assert engine.wait(timeout=15) == EXIT_STOPPED


# ---------------------------------------------------------------------------------------------
# read-only: every write refused, nothing written
# ---------------------------------------------------------------------------------------------

DASHBOARD_WRITES = {"f": "flags", "b": "backfill_start", "P": "backfill_control",
                    "r": "backfill_control", "s": "backfill_control", "t": "backfill_tune",
                    "u": "census", "v": "verify", "R": "rollback"}
CHECKLIST_WRITES = {"a": "apply_phase", "A": "advance", "R": "rollback", "space": "mark",
                    "x": "mark_all"}


def test_read_only_console_dims_and_refuses_every_write_action_and_writes_nothing(
        redis_url, r, engine_pids):
    # Everything set up so that each action would otherwise go ahead: an engine running,
    # phase 2 with its manual item done, an item highlighted on the checklist screen.
    seed_legacy(r, 20_000)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    phase_2_ready(r)
    engine = spawn_cli_engine(redis_url, "--execute", "--rps", "2000", "--batch", "100")
    engine_pids.append(engine.pid)
    app = live_app(redis_url, read_only=True)

    async def refused(pilot: Pilot, key: str, home: type) -> None:
        await pilot.press(key)
        assert isinstance(pilot.app.screen, home), f"{key!r} opened {pilot.app.screen!r}"

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: pilot.app.state.engine_alive, "the engine", 15)
        assert "READ-ONLY" in str(pilot.app.screen.query_one("#header").render())
        before = snapshot(r, engine_running=True)
        dashboard = type(pilot.app.screen)
        bindings = pilot.app.screen.active_bindings
        for key, action in DASHBOARD_WRITES.items():
            assert action in WRITE_ACTIONS
            assert not bindings[key].enabled, f"{key} is shown dimmed"
            await refused(pilot, key, dashboard)
        # the palette calls the actions directly: refused there too
        pilot.app.action_toggle_flag(DUAL_WRITE)
        pilot.app.action_backfill_start()
        pilot.app.action_backfill_control("pause")
        pilot.app.action_rollback()
        pilot.app.action_apply_phase()
        pilot.app.action_advance()
        await pilot.pause()
        assert isinstance(pilot.app.screen, dashboard)

        screen = await open_checklist(pilot)
        items = screen.query_one("#phase-items", OptionList)
        assert screen.focused is items and items.highlighted == 0
        bindings = screen.active_bindings
        for key in CHECKLIST_WRITES:
            assert not bindings[key].enabled, f"{key} is shown dimmed on the checklist"
            await refused(pilot, key, ChecklistScreen)
        await settle(pilot)
        assert snapshot(r, engine_running=True) == before
        # read actions still work
        assert bindings["escape"].enabled
        await pilot.press("escape")
        assert isinstance(pilot.app.screen, dashboard)

    try:
        run_pilot(app, scenario)
    finally:
        send_control(r, "stop", actor="pytest", reason="test over")
    assert engine.wait(timeout=15) == EXIT_STOPPED


# ---------------------------------------------------------------------------------------------
# census "u" and verify "v": background jobs (no confirmation), results on the dashboard
# ---------------------------------------------------------------------------------------------

def test_census_and_verify_keys_run_in_the_background_and_show_on_the_keyspace_panel(
        redis_url, r):
    seed_legacy(r, 300)
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        assert pilot.app.state.census is None and pilot.app.state.verify is None
        await pilot.press("u")
        assert not isinstance(pilot.app.screen, ConfirmScreen)
        await wait_until(pilot, lambda: pilot.app.state.census is not None, "census shown", 10)
        assert pilot.app.state.census.old == 300
        await pilot.press("v")
        await wait_until(pilot, lambda: pilot.app.state.verify is not None, "verify shown", 10)
        text = rendered_text(pilot.app.screen.query_one("#keyspace-body").content)
        assert "old 300" in text and "verify" in text

    run_pilot(app, scenario)


def _advance_as_another_operator(url: str, r: redis.Redis) -> None:
    state = checklist_core.read_checklist(r)
    ctx = gate_context(GateConfig(redis_url=url), r, state, state.phase)
    result = checklist_core.advance(r, ctx, actor="sre-bob", seen_phase=state.phase,
                                    overrides=dict.fromkeys(phase(state.phase).gates, "bob"))
    assert result.advanced, result


def test_a_confirmation_that_lands_after_another_operator_advanced_is_refused(redis_url, r):
    """Two operators: the console's Advance dialog is open at phase 2 when someone else
    advances to 3; confirming it must not advance again (to 4): refused, naming who moved it."""
    phase_2_ready(r)
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await until_phase_2_shows(pilot)
        await open_checklist(pilot)
        await pilot.press("A")
        assert isinstance(pilot.app.screen, ConfirmScreen)
        _advance_as_another_operator(redis_url, r)
        advances = len([e for e in audit_entries(r) if e["action"] == "checklist.advance"])
        await confirm_with_reason(pilot, "late")
        await wait_until(pilot, lambda: any("phase is now 3" in str(n.message)
                                            for n in pilot.app._notifications), "the refusal")
        assert r.hget(CHECKLIST_KEY, "phase") == "3"
        assert len([e for e in audit_entries(r)
                    if e["action"] == "checklist.advance"]) == advances
        refusal = next(str(n.message) for n in pilot.app._notifications
                       if "phase is now 3" in str(n.message))
        assert "sre-bob" in refusal

    run_pilot(app, scenario)


@pytest.mark.parametrize("key", ["a", "space"])
def test_apply_or_check_off_confirmed_after_the_phase_moved_writes_nothing(redis_url, r, key):
    r.hset(CHECKLIST_KEY, "phase", "2")
    checklist_core.mark(r, ["p2-latency"], actor="pytest", reason="setup", undo=True)
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await open_checklist(pilot)
        await pilot.press(key)
        assert isinstance(pilot.app.screen, ConfirmScreen)
        checklist_core.mark(r, ["p2-latency"], actor="sre-bob", reason="bob")
        _advance_as_another_operator(redis_url, r)
        before = snapshot(r)
        await confirm_with_reason(pilot, "late")
        await wait_until(pilot, lambda: any("phase is now 3" in str(n.message)
                                            for n in pilot.app._notifications), "the refusal")
        assert snapshot(r) == before

    run_pilot(app, scenario)
