"""Snapshots (pytest-textual-snapshot) of the console at 80x24 and 160x48.

Deterministic: each app renders a ConsoleState built by hand (`source=`), its clock is fixed,
nothing talks to Redis or HTTP, animations are off and no text cursor is on screen (the
confirmation has the focus on Cancel; the Inputs' blinking is switched off anyway).
Regenerate after a deliberate change with `pytest tests/tui --snapshot-update`, then look at
the SVGs under __snapshots__/ before committing them.
"""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from relayctl.tui.screens import ChecklistScreen, ConfirmScreen, HelpScreen
from tests.tui.kit import (
    backfill_state,
    cluster_backfill_state,
    disconnected_state,
    fixed_app,
    long_audit_state,
    mid_backfill_state,
    rendered_text,
    run_pilot,
)

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def press_then_freeze(*keys: str):
    """A run_before that waits for the fixed state to be drawn (a key pressed before it lands
    scrolls to a panel whose height is not final yet), presses `keys`, then stops every Input
    cursor from blinking."""
    async def run_before(pilot: Pilot) -> None:
        for _ in range(100):
            if pilot.app.state.ts:  # type: ignore[attr-defined]
                break
            await pilot.pause(0.02)
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False
        await pilot.pause()
    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_dashboard_mid_backfill(snap_compare, size):
    assert snap_compare(fixed_app(mid_backfill_state()), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_checklist_screen_at_the_backfill_phase(snap_compare, size):
    assert snap_compare(fixed_app(mid_backfill_state()), terminal_size=size,
                        run_before=press_then_freeze("c"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_help_generated_from_the_bindings(snap_compare, size):
    assert snap_compare(fixed_app(mid_backfill_state()), terminal_size=size,
                        run_before=press_then_freeze("question_mark"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_confirmation_with_the_reason_focused(snap_compare, size):
    assert snap_compare(fixed_app(mid_backfill_state()), terminal_size=size,
                        run_before=press_then_freeze("f", "down", "enter"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_full_audit_log_with_long_json_changes(snap_compare, size):
    assert snap_compare(fixed_app(long_audit_state()), terminal_size=size,
                        run_before=press_then_freeze("8"))


@pytest.mark.parametrize("health", ["throttled", "dead"])
@pytest.mark.parametrize("size", SIZES)
def test_snapshot_backfill_throttled_or_dead(snap_compare, size, health):
    assert snap_compare(fixed_app(backfill_state(health)), terminal_size=size,
                        run_before=press_then_freeze("4"))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_cluster_backfill_lanes(snap_compare, size):
    assert snap_compare(fixed_app(cluster_backfill_state()), terminal_size=size,
                        run_before=press_then_freeze("4"))


def test_snapshot_too_small_notice_at_40x12(snap_compare):
    assert snap_compare(fixed_app(mid_backfill_state()), terminal_size=(40, 12))


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_backfill_form(snap_compare, size):
    state = backfill_state("finished")
    assert snap_compare(fixed_app(state), terminal_size=size,
                        run_before=press_then_freeze("b"))


@pytest.mark.parametrize("status", ["DOWN", "RECONNECTING"])
@pytest.mark.parametrize("size", SIZES)
def test_snapshot_disconnected_keeps_last_values_on_stale_panels(snap_compare, size, status):
    assert snap_compare(fixed_app(disconnected_state(status)), terminal_size=size)


# What the snapshots show, asserted directly (so a re-generated snapshot cannot hide it).

def test_the_snapshot_screens_are_what_they_claim_to_be():
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause()
        assert not pilot.app.screen.query(".stale")
        await pilot.press("c")
        assert isinstance(pilot.app.screen, ChecklistScreen)
        await pilot.press("escape", "question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        await pilot.press("escape", "f", "down", "enter")
        screen = pilot.app.screen
        assert isinstance(screen, ConfirmScreen)
        assert isinstance(screen.focused, Input) and screen.focused.id == "reason"
        assert screen.title_text == "Set READ_PREFERS_NEW = off?"

    run_pilot(app, scenario, size=(80, 24))


@pytest.mark.parametrize("status", ["DOWN", "RECONNECTING"])
def test_disconnected_state_marks_every_panel_stale_and_shows_the_badges(status):
    app = fixed_app(disconnected_state(status))

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause()
        panels = pilot.app.screen.query(".panel")
        assert len(panels) == 8
        assert all(p.has_class("stale") for p in panels)
        header = str(pilot.app.screen.query_one("#header").render())
        assert f" {status} " in header and " STALE " in header
        flags = rendered_text(pilot.app.screen.query_one("#flags-body").content)
        assert "AI_JOBS_NEW_SCHEMA" in flags and "alice" in flags, "the last values stay"
        backfill = rendered_text(pilot.app.screen.query_one("#backfill-body").content)
        assert "RUNNING" in backfill and "scanned 12,000" in backfill

    run_pilot(app, scenario, size=(160, 48))
