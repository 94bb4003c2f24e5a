"""Modal screens: confirmation, backfill form, help, rollback picker; the checklist screen."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from relayctl.core.backfill import BackfillOptions
from relayctl.core.console import ConsoleState
from relayctl.core.flags import word
from relayctl.core.phases import PHASES, PROCEDURES, phase
from relayctl.tui.widgets import STATUS_STYLE, HeaderBar


class ConfirmScreen(ModalScreen[str | None]):
    """Every write asks here first: Cancel has the focus, and a reason is required."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, detail: str, confirm_label: str = "Confirm") -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.detail, id="dialog-detail")
            yield Input(placeholder="reason (required, recorded in the audit log)", id="reason")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the reason moves to Confirm; a second, deliberate Enter confirms."""
        self.query_one("#confirm", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            self.notify("a reason is required", severity="error")
            self.query_one("#reason", Input).focus()
            return
        self.dismiss(reason)


@dataclass
class BackfillRequest:
    options: BackfillOptions
    reason: str


class BackfillForm(ModalScreen[BackfillRequest | None]):
    """Start a backfill engine as its own process; Cancel has the focus."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        # scrolls: at 80x24 the form is taller than the screen and Start must stay reachable
        with VerticalScroll(id="dialog"):
            yield Label("Start a backfill", id="dialog-title")
            yield Checkbox("execute (unchecked = dry-run)", id="execute")
            yield Input(placeholder="workspaces, comma separated (empty = all)", id="workspaces")
            with Horizontal(classes="fields field-labels"):
                for text in ("rps (0: any)", "batch", "max keys", "workers"):
                    yield Label(text)
            with Horizontal(classes="fields"):
                yield Input(placeholder="rps (0 = unlimited)", id="rps", value="0")
                yield Input(placeholder="batch", id="batch", value="500")
                yield Input(placeholder="max keys (empty = all)", id="max-keys")
                yield Input(placeholder="workers (cluster shards at once)", id="workers",
                            value="1")
            yield Checkbox("resume the unfinished run", id="resume")
            yield Input(placeholder="reason (required, recorded in the audit log)", id="reason")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Start", id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        try:
            rps = float(self.query_one("#rps", Input).value or 0)
            batch = int(self.query_one("#batch", Input).value or 500)
            max_txt = self.query_one("#max-keys", Input).value.strip()
            max_keys = int(max_txt) if max_txt else None
            workers = int(self.query_one("#workers", Input).value or 1)
            if rps < 0 or not 1 <= batch <= 100_000 or (max_keys is not None and max_keys < 1) \
                    or not 1 <= workers <= 64:
                raise ValueError
        except ValueError:
            self.notify("rps >= 0, batch 1..100000, max keys >= 1, workers 1..64",
                        severity="error")
            return
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            self.notify("a reason is required", severity="error")
            return
        workspaces = tuple(w.strip() for w in
                           self.query_one("#workspaces", Input).value.split(",") if w.strip())
        self.dismiss(BackfillRequest(BackfillOptions(
            execute=self.query_one("#execute", Checkbox).value, workspaces=workspaces,
            rps=rps, batch=batch, max_keys=max_keys, workers=workers,
            resume=self.query_one("#resume", Checkbox).value), reason))


class HelpScreen(ModalScreen[None]):
    """Generated from the bindings of the screen underneath and of the app."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 2), show_header=True)
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("action")
        for key, desc in self.rows:
            table.add_row(key, desc)
        # Scrollable: at 80x24 the rows do not all fit, and a plain Vertical clipped the last
        # ones (the app-wide keys) with no way to reach them.
        with VerticalScroll(id="dialog"):
            yield Label("Keys", id="dialog-title")
            yield Static(table)
            yield Static(Text("Esc to close", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


def _procedure_label(procedure_id: str) -> str:
    p = PROCEDURES[procedure_id]
    return f"{p.title}  ({', '.join(f'{k}={word(v)}' for k, v in p.flags.items())})"


class RollbackPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Run a rollback procedure", id="dialog-title")
            yield OptionList(*[Option(_procedure_label(p.id), id=p.id)
                               for p in PROCEDURES.values()], id="procedures")
            yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class ChecklistScreen(Screen):
    """The six phases, the selected phase's steps, live gates and rollback triggers."""

    BINDINGS = [
        Binding("escape,c", "app.pop_screen", "Dashboard"),
        Binding("space,m", "mark", "Check off item"),
        Binding("a", "app.apply_phase", "Apply phase flags"),
        Binding("A", "app.advance", "Advance"),
        Binding("R", "app.rollback", "Rollback"),
    ]

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal():
            yield OptionList(id="phases")
            with VerticalScroll(id="phase-detail"):
                yield Static(id="phase-steps")
                yield OptionList(id="phase-items")
                yield Static(id="phase-gates")
                yield Static(id="phase-triggers")
        yield Footer()

    def on_mount(self) -> None:
        self.selected = self.app.state.phase_number  # type: ignore[attr-defined]
        self.app._redraw()  # type: ignore[attr-defined]

    def on_resize(self) -> None:
        """The header's layout depends on the width (compact under 120 columns): redraw, as
        the dashboard does, or it keeps the wide form until the next tick (or forever while
        paused)."""
        self.app._redraw()  # type: ignore[attr-defined]

    def refresh_state(self, state: ConsoleState) -> None:
        phases = self.query_one("#phases", OptionList)
        highlighted = phases.highlighted
        phases.clear_options()
        for p in PHASES:
            mark = "x" if p.number < state.checklist.phase else (
                ">" if p.number == state.checklist.phase else " ")
            # Text, not a str: a str prompt is markup, where "[x]" is a tag and vanishes.
            phases.add_option(Option(Text(f"[{mark}] {p.number}. {p.title}"), id=str(p.number)))
        phases.highlighted = highlighted if highlighted is not None else self.selected
        self._show_phase(state)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "phases" and event.option.id is not None:
            self.selected = int(event.option.id)
            self._show_phase(self.app.state)  # type: ignore[attr-defined]

    def _show_phase(self, state: ConsoleState) -> None:
        p = phase(self.selected)
        steps = Text()
        steps.append(f"Phase {p.number}: {p.title} ({p.window})\n", style="bold")
        for goal in p.goals:
            steps.append(f"  goal: {goal}\n")
        if p.target_flags:
            steps.append("  flags: " + ", ".join(f"{k}={'on' if v else 'off'}"
                                                 for k, v in p.target_flags.items()) + "\n")
        for item in p.items:
            if not item.manual:
                steps.append(f"  [gate] {item.text}\n", style="dim")
        for exp in p.expected:
            steps.append(f"  expected: {exp}\n", style="dim")
        self.query_one("#phase-steps", Static).update(steps)
        items = self.query_one("#phase-items", OptionList)
        # Every refresh rebuilds the list: keep the operator's highlighted item, or the next
        # tick drops it and space finds nothing to check off.
        keep = (items.get_option_at_index(items.highlighted).id
                if items.highlighted is not None else None)
        items.clear_options()
        for item in p.items:
            if item.manual:
                box = "x" if state.checklist.done(item.id) else " "
                items.add_option(Option(Text(f"[{box}] {item.text}"), id=item.id))
        if keep is not None and keep in {i.id for i in p.items if i.manual}:
            items.highlighted = items.get_option_index(keep)
        live = state.gates if self.selected == state.phase_number else []
        table = Table(box=None, padding=(0, 1), expand=True, title="gates", title_justify="left")
        table.add_column("gate", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("value", no_wrap=True)
        table.add_column("threshold")
        if live:
            for g in live:
                table.add_row(g.gate, Text(g.status, style=STATUS_STYLE[g.status]), g.value,
                              g.threshold)
        else:
            for gid in p.gates:
                table.add_row(gid, Text("-", style="dim"), "", "live on the current phase")
        self.query_one("#phase-gates", Static).update(table)
        trig = Text("rollback triggers\n", style="bold")
        by_gate = {g.gate: g for g in state.triggers} if self.selected == state.phase_number \
            else {}
        for t in p.triggers:
            g = by_gate.get(t.gate) if t.gate else None
            firing = g is not None and g.status == "FAIL"
            trig.append("  FIRING " if firing else "  ok     " if g else "  -      ",
                        style="bold white on red" if firing else "dim")
            proc = PROCEDURES[t.procedure].title if t.procedure else "investigate"
            trig.append(f" {t.text} => {proc}\n")
        self.query_one("#phase-triggers", Static).update(trig)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Checking off an item writes: dimmed in read-only mode like the app's writes."""
        if action == "mark" and self.app.read_only:  # type: ignore[attr-defined]
            return None
        return True

    def action_mark(self) -> None:
        items = self.query_one("#phase-items", OptionList)
        if items.highlighted is None:
            self.notify("select a manual item first")
            return
        option = items.get_option_at_index(items.highlighted)
        self.app.mark_item(option.id)  # type: ignore[attr-defined]
