"""Layout and keyboard at 80x24 (fixed data, no clock): every panel reachable, the columns
that matter never vanish, a small terminal shows a notice instead of crashing."""

from __future__ import annotations

import itertools

import pytest
from textual.pilot import Pilot
from textual.widgets import Checkbox, Input
from textual.widgets._footer import FooterKey

from relayctl.core.gates import GateResult
from relayctl.core.phases import phase
from relayctl.tui.app import PANELS, Dashboard, ZoomScreen
from relayctl.tui.screens import (
    BackfillForm,
    ChecklistScreen,
    ConfirmScreen,
    HelpScreen,
    TextScreen,
)
from relayctl.tui.widgets import Panel, TablePanel
from tests.tui.kit import (
    backfill_state,
    fixed_app,
    live_app,
    long_audit_state,
    mid_backfill_state,
    rendered_text,
    run_pilot,
    type_text,
    wait_connected,
)


def table_text(panel: TablePanel) -> str:
    """What the panel's row table shows: header and every visible cell."""
    table = panel.table
    lines = [" ".join(str(c.label) for c in table.columns.values())]
    for row in range(table.row_count):
        lines.append(" ".join(str(cell) for cell in table.get_row_at(row)))
    return "\n".join(lines)


def test_at_80x24_the_gates_show_pass_and_fail_and_the_audit_when_actor_action():
    """Defect 1: no status column at 80 columns; when/actor/action shrank to `…`."""
    app = fixed_app(long_audit_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        gates = app.screen.query_one("#gates", TablePanel)
        widths = {str(c.label): c.width for c in gates.table.columns.values()}
        assert widths["status"] >= 7 and widths["gate"] >= 20, widths
        text = table_text(gates)
        assert "PASS" in text and "FAIL" in text
        audit = app.screen.query_one("#audit", TablePanel)
        widths = {str(c.label): c.width for c in audit.table.columns.values()}
        assert widths["when (UTC)"] >= 20 and widths["actor"] >= 9 and widths["action"] >= 15
        first = audit.table.get_row_at(0)
        assert str(first[0]) == "2026-01-01T00:00:00Z"  # ISO with date and zone
        assert str(first[1]) == "sre-bob" and str(first[2]) == "checklist.apply"
        assert sum(c.width for c in audit.table.columns.values()) <= 80

    run_pilot(app, scenario, size=(80, 24))


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)])
def test_the_audit_key_columns_keep_their_width_with_long_json_changes(size):
    app = fixed_app(long_audit_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        audit = app.screen.query_one("#audit", TablePanel)
        for row in range(audit.table.row_count):
            when, actor, action = (str(c) for c in audit.table.get_row_at(row)[:3])
            assert "…" not in when + actor + action, (when, actor, action)

    run_pilot(app, scenario, size=size)


def test_every_panel_is_reachable_by_number_and_by_tab_and_scrolled_into_view():
    """Defect 6: PageDown, Down, End and Tab did not scroll the 80x24 dashboard."""
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, Dashboard)
        grid = screen.query_one("#grid")
        for number, panel_id in enumerate(PANELS, start=1):
            await pilot.press(str(number))
            await pilot.pause(0.1)
            panel = screen.focused_panel()
            assert panel is not None and panel.id == panel_id
            top = panel.region.y
            assert 0 < top < 23 and panel.region.height > 2, (panel_id, panel.region)
        await pilot.press("1")
        seen = []
        for _ in range(len(PANELS)):
            seen.append(screen.focused_panel().id)  # type: ignore[union-attr]
            await pilot.press("tab")
        assert sorted(seen) == sorted(PANELS)
        assert grid.max_scroll_y > 0, "at 80x24 the dashboard is taller than the screen"

    run_pilot(app, scenario, size=(80, 24))


def test_the_footer_always_shows_help_and_quit_and_every_key_whole_at_80_columns():
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        for keys in ((), ("c",)):
            await pilot.press(*keys)
            await pilot.pause(0.3)
            footer = [b for b in app.screen.active_bindings.values() if b.binding.show]
            shown = [b.binding.key for b in footer][:3]
            assert "question_mark" in shown and "q" in shown, shown
            # and no key is cut off or hidden under another (the checklist lost `R` so)
            spans = sorted((k.region.x, k.region.right, k.description)
                           for k in app.screen.query(FooterKey))
            assert all(right <= 80 for _x, right, _d in spans), spans
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans

    run_pilot(app, scenario, size=(80, 24))


def test_zoom_and_enter_open_the_full_text_and_escape_returns():
    app = fixed_app(long_audit_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("8", "enter")
        assert isinstance(app.screen, TextScreen)
        body = rendered_text(app.screen.body, width=200)
        assert "reviewed in the change meeting reviewed in the change meeting" in body
        await pilot.press("escape", "7", "z")
        assert isinstance(app.screen, ZoomScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, Dashboard)

    run_pilot(app, scenario, size=(80, 24))


def test_a_40x12_terminal_shows_the_size_notice_and_resizing_back_restores_the_layout():
    """Defect 3: the checklist at 40x12 crashed (an OptionList of width 0)."""
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("c")
        assert isinstance(app.screen, ChecklistScreen)
        for screen_keys in ((), ("escape",)):
            await pilot.press(*screen_keys)
            await pilot.resize_terminal(40, 12)
            await pilot.pause(0.3)
            assert app.screen.has_class("too-small")
            app._redraw()
            await pilot.pause(0.1)
            await pilot.resize_terminal(80, 24)
            await pilot.pause(0.3)
            assert not app.screen.has_class("too-small")
        assert app.is_running

    run_pilot(app, scenario, size=(80, 24))


@pytest.mark.parametrize(("health", "shown", "absent"), [
    ("throttled", ["THROTTLED", "memory 86% ≥ 85%", "86.2% vs limit 85%", "42s"], []),
    ("dead", ["DEAD", "relayctl backfill --execute --resume", "no rate"], ["keys/s", "ETA"]),
    ("stalled", ["STALLED", "no heartbeat"], ["keys/s", "ETA"]),
    ("finished", ["COMPLETED", "done"], ["keys/s", "ETA"]),
])
def test_the_backfill_panel_says_why_and_shows_no_rate_when_no_engine_works(
        health, shown, absent):
    app = fixed_app(backfill_state(health))

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        panel = app.screen.query_one("#backfill", Panel)
        text = " ".join(rendered_text(panel.last, width=120).split())
        for want in shown:
            assert want in text, (want, text)
        for not_want in absent:
            assert not_want not in text, (not_want, text)

    run_pilot(app, scenario, size=(160, 48))


def test_help_groups_keys_by_screen_and_explains_every_badge():
    app = fixed_app(mid_backfill_state(), links=[("redis", "redis://127.0.0.1:1/0")])

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.2)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(rendered_text(s.content, width=120) for s in app.screen.query("Static"))
        for word in ("dashboard", "checklist (c)", "CONNECTED", "RECONNECTING", "DOWN", "STALE",
                     "PASS", "FAIL", "WAIT", "UNKNOWN", "THROTTLED", "DEAD", "STALLED",
                     "redis://127.0.0.1:1/0", "Retune backfill", "Check all"):
            assert word in text, word

    run_pilot(app, scenario, size=(160, 48))


def test_the_header_names_the_server_it_is_connected_to(redis_url, r):
    """Issue 16: the console shows the server's name and version (read once per client)."""
    version = r.info("server")["redis_version"]
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        header = str(pilot.app.screen.query_one("#header").render())
        assert f"Redis {version}" in header, header

    run_pilot(app, scenario)


def test_the_backfill_form_reaches_its_reason_in_one_tab_after_execute():
    """Defect 7: `space` (execute), `Tab`, the reason, `Enter` — not seven Tabs."""
    state = mid_backfill_state()
    state.backfill, state.engine_alive = {}, False
    app = fixed_app(state)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("b")
        assert isinstance(app.screen, BackfillForm)
        execute = app.screen.query_one("#execute", Checkbox)
        assert str(execute.render()).startswith("▐ ▌"), "off reads as an empty box"
        await pilot.press("space", "tab")
        assert execute.value is True
        assert str(execute.render()).startswith("▐✓▌"), "on reads as a tick, not a colour"
        assert app.screen.focused is not None and app.screen.focused.id == "reason"

    run_pilot(app, scenario, size=(80, 24))


def test_enter_in_a_tuning_field_starts_and_without_a_reason_puts_the_cursor_there():
    """Enter in the rps field moved on to the next field instead of starting."""
    state = mid_backfill_state()
    state.backfill, state.engine_alive = {}, False
    app = fixed_app(state)
    got: list[object] = []

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        app.push_screen(BackfillForm(), got.append)
        await pilot.pause(0.2)
        form = app.screen
        await pilot.press("space", "tab", "tab", "tab")  # execute, reason, workspaces, rps
        assert form.focused is not None and form.focused.id == "rps"
        form.query_one("#rps", Input).value = "20"
        await pilot.press("enter")
        assert app.screen is form and got == []
        assert form.focused is not None and form.focused.id == "reason"
        assert any("reason is required" in str(n.message) for n in app._notifications)
        await type_text(pilot, "slow run")
        form.query_one("#rps", Input).focus()
        await pilot.press("enter")
        await pilot.pause(0.2)

    run_pilot(app, scenario, size=(80, 24))
    [request] = got
    assert request.reason == "slow run" and request.options.rps == 20  # type: ignore[attr-defined]
    assert request.options.execute  # type: ignore[attr-defined]


def test_a_resize_under_a_dialog_redraws_the_header_for_the_new_width():
    state = mid_backfill_state()
    state.backfill, state.engine_alive = {}, False
    app = fixed_app(state)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        header = app.screen.query_one("#header")
        assert str(header.render()).startswith(" relayctl ")  # wide: the name first
        await pilot.press("b")
        assert isinstance(app.screen, BackfillForm)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.3)
        assert str(header.render()).startswith(" phase 4 ")  # compact: the phase first

    run_pilot(app, scenario, size=(160, 48))


def test_g_and_shift_g_scroll_the_focused_panel_and_pagedown_the_dashboard_at_80x24():
    """Defect 6: at 80x24 most of the dashboard was unreachable from the keyboard."""
    app = fixed_app(long_audit_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("8")  # the audit log
        table = app.screen.focused
        assert table is not None and table.max_scroll_y > 0
        await pilot.press("G")
        await pilot.pause(0.2)
        assert table.scroll_y == table.max_scroll_y
        await pilot.press("g")
        await pilot.pause(0.2)
        assert table.scroll_y == 0
        grid = app.screen.query_one("#grid")
        await pilot.press("pagedown", "pagedown", "pagedown")
        await pilot.pause(0.2)
        assert grid.scroll_y > 0

    run_pilot(app, scenario, size=(80, 24))


def test_the_apply_dialog_lists_only_the_flags_that_change_before_and_after():
    """Defect 7: the apply dialog listed all three flags instead of what changes."""
    state = mid_backfill_state()
    state.checklist.phase = 5  # disable fallback: only READ_FALLBACK_OLD changes
    app = fixed_app(state)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("c", "a")
        assert isinstance(app.screen, ConfirmScreen)
        detail = str(app.screen.detail)
        assert "READ_FALLBACK_OLD: on -> off" in detail, detail
        assert "AI_JOBS_NEW_SCHEMA" not in detail and "READ_PREFERS_NEW" not in detail

    run_pilot(app, scenario, size=(80, 24))


def test_slash_filters_the_audit_log_to_matching_rows():
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        table = app.screen.query_one("#audit-table")
        before = table.row_count
        await pilot.press("slash", "b", "o", "b", "enter")
        await pilot.pause(0.3)
        assert 0 < table.row_count < before  # bob's one advance of the five entries
        assert all("bob" in " ".join(map(str, table.get_row_at(i)))
                   for i in range(table.row_count))

    run_pilot(app, scenario, size=(160, 48))


def test_slash_filters_the_checklist_items_and_says_so():
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("c")
        assert isinstance(app.screen, ChecklistScreen)
        items = app.screen.query_one("#phase-items")
        before = [items.get_option_at_index(i).id for i in range(items.option_count)]
        await pilot.press("slash", *"traffic", "enter")
        await pilot.pause(0.3)
        after = [items.get_option_at_index(i).id for i in range(items.option_count)]
        assert 0 < len(after) < len(before), (before, after)
        assert all("traffic" in str(items.get_option_at_index(i).prompt).lower()
                   or "traffic" in (items.get_option_at_index(i).id or "")
                   for i in range(items.option_count))
        assert "filter: traffic" in rendered_text(app.screen.query_one("#phase-steps").content)

    run_pilot(app, scenario, size=(80, 24))


def test_the_palette_names_each_commands_key_and_that_key_does_it():
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        ours = [c for c in app.get_system_commands(app.screen) if c.title.endswith("]")]
        assert len(ours) == 13
        bound: dict[str, str] = {}
        for screen in (app.screen, ChecklistScreen()):
            for key, binding in [*app._bindings, *screen._bindings]:
                bound.setdefault(key, binding.action)
        assert "Z" not in bound and len(bound) > 15
        for command in ours:
            key = command.title.rsplit("[", 1)[1].rstrip("]")
            assert key in bound, f"{command.title}: [{key}] is bound to nothing"

    run_pilot(app, scenario, size=(120, 40))


def test_an_override_while_a_rollback_trigger_fires_asks_for_the_gates_name():
    """Defect 7: overriding a FAIL gate while a trigger fires was a one-key confirm."""
    state = mid_backfill_state()
    for item in phase(4).prerequisites + phase(4).validation:
        if item.manual:
            state.checklist.items[item.id] = {"state": "done", "actor": "alice", "ts": 0.0}
    state.triggers = [GateResult("new_read_share_50", "new share 50%", "FAIL", "31.00%",
                                 "new share of found reads >= 50.00%")]
    app = fixed_app(state)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        await pilot.press("c", "A")
        screen = app.screen
        assert isinstance(screen, ConfirmScreen)
        assert "ROLLBACK TRIGGER FIRING" in str(screen.detail)
        assert screen.require_typed == "backfill_complete"  # the first gate not passing
        assert screen.focused is not None and screen.focused.id == "typed"
        await pilot.press("y", "e", "s", "enter")  # anything but the name does nothing
        await pilot.pause(0.2)
        assert app.screen is screen

    run_pilot(app, scenario, size=(160, 48))
