"""Modal screens: confirmation, backfill form, help, rollback picker; the checklist screen."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import RenderableType
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
from relayctl.tui.widgets import SCROLL_KEYS, STATUS_STYLE, HeaderBar, Tick


class ConfirmScreen(ModalScreen[str | None]):
    """Every write asks here first. The reason field has the focus (typing goes there at
    once); Enter confirms once the reason is given, Esc cancels. `require_typed` (an override
    while a rollback trigger fires) must be typed exactly before Confirm does anything."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, detail: str, confirm_label: str = "Confirm", *,
                 reason_required: bool = True, default_reason: str = "",
                 require_typed: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail
        self.confirm_label = confirm_label
        self.reason_required = reason_required
        self.default_reason = default_reason
        self.require_typed = require_typed

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.detail, id="dialog-detail")
            if self.require_typed:
                yield Label(Text(f"A rollback trigger is firing. Type {self.require_typed} "
                                 "to override it:", style="bold red"))
                yield Input(placeholder=self.require_typed, id="typed")
            hint = "required" if self.reason_required else "optional"
            yield Input(placeholder=f"reason ({hint}, recorded in the audit log)", id="reason",
                        value=self.default_reason)
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel (Esc)", id="cancel")
                yield Button(f"{self.confirm_label} (Enter)", id="confirm", variant="error")

    def on_mount(self) -> None:
        # a key pressed while the app is exiting can mount a dialog that is torn down before
        # its children: then there is nothing to focus (and nothing to crash on)
        for field in self.query("#typed" if self.require_typed else "#reason").results(Input):
            field.focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "typed":
            self.query_one("#reason", Input).focus()
            return
        self._confirm()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
            return
        self._confirm()

    def _confirm(self) -> None:
        if self.require_typed and self.query_one("#typed", Input).value.strip() \
                != self.require_typed:
            self.notify(f"type {self.require_typed} to override it", severity="error")
            self.query_one("#typed", Input).focus()
            return
        reason = self.query_one("#reason", Input).value.strip()
        if not reason and self.reason_required:
            self.notify("a reason is required", severity="error")
            self.query_one("#reason", Input).focus()
            return
        self.dismiss(reason or "no reason given")


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of a few options (flags, rollback procedures, quit or stay)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, options: list[tuple[str, str]], detail: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.options = options
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            if self.detail:
                yield Static(self.detail, id="dialog-detail")
            yield OptionList(*[Option(Text(label), id=oid) for oid, label in self.options],
                             id="choices")
            yield Static(Text("Enter picks, Esc cancels", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#choices", OptionList).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class TextScreen(ModalScreen[None]):
    """A row's full text (gate or audit entry), or a zoomed panel; Esc returns."""

    BINDINGS = [Binding("escape,q,z,enter", "close", "Close"), *SCROLL_KEYS]

    def __init__(self, title: str, body: RenderableType, full: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.full = full

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="zoom" if self.full else "dialog", classes="text-view"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.body, id="text-body")
            yield Static(Text("Esc to return; j/k PageUp/PageDown scroll", style="dim"))

    def on_mount(self) -> None:
        self.query_one(".text-view").focus()

    def update_body(self, body: RenderableType) -> None:
        self.body = body
        self.query_one("#text-body", Static).update(body)

    def action_close(self) -> None:
        self.dismiss(None)


class FilterScreen(ModalScreen[str | None]):
    """`/`: the text the audit log or the checklist items must contain (empty clears)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Filter (Enter applies, empty clears, Esc cancels)", id="dialog-title")
            yield Input(value=self.current, placeholder="text", id="filter")

    def on_mount(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())


@dataclass
class BackfillRequest:
    options: BackfillOptions
    reason: str


class BackfillForm(ModalScreen[BackfillRequest | None]):
    """Start a backfill engine as its own process. The common path is short: `space`
    (execute), `Tab`, the reason, `Enter`; the tuning fields follow the reason."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        # scrolls: at 80x24 the form is taller than the screen and Start must stay reachable
        with VerticalScroll(id="dialog"):
            yield Label("Start a backfill", id="dialog-title")
            yield Tick("execute (unchecked = dry-run)", id="execute")
            yield Input(placeholder="reason (required, recorded in the audit log)", id="reason")
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
            yield Tick("resume the unfinished run", id="resume")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel (Esc)", id="cancel")
                yield Button("Start", id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#execute", Checkbox).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in any field starts, as in any form; without a reason it says so and puts
        the cursor there."""
        self.on_button_pressed(Button.Pressed(self.query_one("#confirm", Button)))

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
            self.query_one("#reason", Input).focus()
            return
        workspaces = tuple(w.strip() for w in
                           self.query_one("#workspaces", Input).value.split(",") if w.strip())
        self.dismiss(BackfillRequest(BackfillOptions(
            execute=self.query_one("#execute", Checkbox).value, workspaces=workspaces,
            rps=rps, batch=batch, max_keys=max_keys, workers=workers,
            resume=self.query_one("#resume", Checkbox).value), reason))


@dataclass
class TuneRequest:
    changes: dict[str, object]
    reason: str


class TuneForm(ModalScreen[TuneRequest | None]):
    """`t`: retune the running engine between batches (`relayctl backfill set`); only the
    fields filled in change."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: dict[str, str]) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        from relayctl.core.backfill.state import TUNABLE

        with VerticalScroll(id="dialog"):
            yield Label("Retune the running backfill", id="dialog-title")
            yield Static(Text("Empty fields keep their value. Applied between batches.",
                              style="dim"))
            for name, (_kind, low, high) in TUNABLE.items():
                now = self.current.get(name, "")
                with Horizontal(classes="fields"):
                    yield Label(f"{name}{f' (now {now})' if now else ''}", classes="tune-label")
                    yield Input(placeholder=f"{low:g}..{high:g}", id=f"tune-{name}")
            yield Input(placeholder="reason (required, recorded in the audit log)", id="reason")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel (Esc)", id="cancel")
                yield Button("Apply", id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query("Input").first().focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "reason":
            self._submit()
        else:
            self.focus_next()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self._submit()

    def _submit(self) -> None:
        from relayctl.core.backfill.state import TUNABLE, parse_tune
        from relayctl.core.errors import UsageError

        changes: dict[str, object] = {
            name: self.query_one(f"#tune-{name}", Input).value.strip() or None
            for name in TUNABLE}
        try:
            parse_tune(changes)
        except UsageError as exc:
            self.notify(str(exc), severity="error")
            return
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            self.notify("a reason is required", severity="error")
            self.query_one("#reason", Input).focus()
            return
        self.dismiss(TuneRequest({k: v for k, v in changes.items() if v is not None}, reason))


BADGES_HELP = [
    ("CONNECTED", "on dark_green", "Redis answered the last refresh"),
    ("RECONNECTING", "on dark_orange3", "Redis stopped answering; panels keep the last values "
                                        "(orange border); the header counts down to the retry"),
    ("DOWN", "on red", "Redis (or every /metrics endpoint) never answered"),
    ("OK", "on dark_green", "the /metrics scrape worked"),
    ("STALE", "on dark_orange3", "the last scrape failed; rates are from before"),
    ("NONE", "on grey30", "no --metrics-url given: the metric gates are UNKNOWN"),
    ("LIVE / PAUSED", "on dark_green", "refreshing every N s / frozen with `p`"),
    ("PASS", "", "the gate's condition holds"),
    ("FAIL", "", "the condition is broken: advancing needs an override with a reason"),
    ("WAIT", "", "not yet decidable (too few reads, stale census, run still going)"),
    ("UNKNOWN", "", "a source is missing or down: never taken as PASS"),
    ("RUNNING", "", "a backfill engine holds the lease and copies"),
    ("THROTTLED", "on yellow", "a guard holds the engine back: reason, value vs limit"),
    ("STALLED", "on dark_orange3", "no heartbeat for 3 intervals: the engine may be frozen"),
    ("DEAD", "on red", "lease expired while the run was active: resume it from the CLI"),
    ("ROLLBACK TRIGGER FIRING", "on red", "a rollback trigger's gate FAILs: see the procedure"),
]


class HelpScreen(ModalScreen[None]):
    """Keys grouped by screen (from the bindings), every badge and colour, the demo's URLs."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close"), *SCROLL_KEYS]

    def __init__(self, groups: list[tuple[str, list[tuple[str, str]]]],
                 links: list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.groups = groups
        self.links = links or []

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", classes="text-view"):
            yield Label("Help  (Esc closes; j/k scroll)", id="dialog-title")
            for title, rows in self.groups:
                table = Table(box=None, padding=(0, 2), show_header=False,
                              title=title, title_justify="left", title_style="bold")
                table.add_column("key", style="bold cyan", no_wrap=True, min_width=9)
                table.add_column("action")
                for key, desc in rows:
                    table.add_row(key, desc)
                yield Static(table)
            badges = Table(box=None, padding=(0, 2), show_header=False, title="badges and colours",
                           title_justify="left", title_style="bold")
            badges.add_column("badge", no_wrap=True)
            badges.add_column("means")
            for name, style, means in BADGES_HELP:
                colour = STATUS_STYLE.get(name, f"bold white {style}" if style else "bold")
                badges.add_row(Text(f" {name} ", style=colour), means)
            yield Static(badges)
            if self.links:
                links = Table(box=None, padding=(0, 2), show_header=False, title="this demo",
                              title_justify="left", title_style="bold")
                links.add_column("what", no_wrap=True)
                links.add_column("url")
                for what, url in self.links:
                    links.add_row(what, url)
                yield Static(links)

    def on_mount(self) -> None:
        self.query_one(".text-view").focus()

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
            yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#procedures", OptionList).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


MIN_WIDTH, MIN_HEIGHT = 60, 16


class TooSmall(Static):
    """Shown instead of a layout the terminal is too small to draw."""

    def show_size(self, width: int, height: int) -> None:
        self.update(Text(f"terminal {width}x{height}: relayctl needs at least "
                         f"{MIN_WIDTH}x{MIN_HEIGHT}\nenlarge the window (q quits)",
                         style="bold yellow", justify="center"))


def fits(screen: Screen) -> bool:
    """Below the minimum the screen hides its layout (an OptionList of width 0 crashes)."""
    small = screen.size.width < MIN_WIDTH or screen.size.height < MIN_HEIGHT
    screen.set_class(small, "too-small")
    for notice in screen.query(TooSmall):
        notice.show_size(screen.size.width, screen.size.height)
    return not small


class ChecklistScreen(Screen):
    """The six phases, the selected phase's steps, live gates and rollback triggers.

    The focus lands on the phase's items: `space` toggles the highlighted one, `x` checks off
    every open manual item of the phase with one reason.
    """

    BINDINGS = [
        Binding("question_mark", "app.help", "Help", key_display="?"),
        Binding("q", "app.quit", "Quit"),
        Binding("escape,c", "app.pop_screen", "Back"),
        Binding("space", "mark", "Toggle"),
        Binding("x", "mark_all", "Check all"),
        Binding("a", "app.apply_phase", "Apply"),
        Binding("A", "app.advance", "Advance"),
        Binding("R", "app.rollback", "Rollback"),
        Binding("u", "app.census", "Census", show=False),
        Binding("v", "app.verify", "Verify", show=False),
        Binding("slash", "filter", "Filter", key_display="/", show=False),
        Binding("tab", "focus_next", "Next", show=False),
    ]

    filter_text = ""

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield TooSmall(id="too-small")
        with Horizontal(id="checklist-body"):
            yield OptionList(id="phases")
            with VerticalScroll(id="phase-detail"):
                yield Static(id="phase-steps")
                yield OptionList(id="phase-items")
                yield Static(id="phase-gates")
                yield Static(id="phase-triggers")
        # compact and without the palette key (ctrl+p still opens it; `?` lists it): every
        # checklist key fits at 80 columns
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.selected = self.app.state.phase_number  # type: ignore[attr-defined]
        fits(self)
        self.app._redraw()  # type: ignore[attr-defined]
        self.query_one("#phase-items", OptionList).focus()

    def on_resize(self) -> None:
        """Redraw at the new size (the header's layout depends on the width)."""
        fits(self)
        self.app._redraw()  # type: ignore[attr-defined]

    def refresh_state(self, state: ConsoleState) -> None:
        if not fits(self) or not self.query("#phases"):  # too small, or not composed yet
            return
        phases = self.query_one("#phases", OptionList)
        highlighted = phases.highlighted
        if getattr(self, "seen_phase", None) != state.phase_number:
            # the rollout moved on (here or elsewhere): follow it to the current phase
            self.seen_phase = state.phase_number
            self.selected = highlighted = state.phase_number
        phases.clear_options()
        for p in PHASES:
            mark = "✓" if p.number < state.checklist.phase else (
                "▶" if p.number == state.checklist.phase else " ")
            # Text, not a str: a str prompt is markup, where "[x]" is a tag and vanishes.
            phases.add_option(Option(Text(f"{mark} {p.number}. {p.title}"), id=str(p.number)))
        phases.highlighted = highlighted if highlighted is not None else self.selected
        self._show_phase(state)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "phases" and event.option.id is not None:
            self.selected = int(event.option.id)
            if fits(self):
                self._show_phase(self.app.state)  # type: ignore[attr-defined]

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "phase-items":
            self.action_mark()

    def manual_items(self, state: ConsoleState) -> list[tuple[str, str, bool]]:
        p = phase(self.selected)
        needle = self.filter_text.lower()
        return [(i.id, i.text, state.checklist.done(i.id)) for i in p.items
                if i.manual and (not needle or needle in f"{i.id} {i.text}".lower())]

    def _show_phase(self, state: ConsoleState) -> None:
        p = phase(self.selected)
        steps = Text()
        steps.append(f"Phase {p.number}: {p.title} ({p.window})\n", style="bold")
        for goal in p.goals:
            steps.append(f"  goal: {goal}\n")
        if p.target_flags:
            steps.append("  flags: " + ", ".join(f"{k}={'on' if v else 'off'}"
                                                 for k, v in p.target_flags.items()) + "\n")
        for exp in p.expected:
            steps.append(f"  expected: {exp}\n", style="dim")
        if self.filter_text:
            steps.append(f"  filter: {self.filter_text} (/ to change)\n", style="yellow")
        self.query_one("#phase-steps", Static).update(steps)
        items = self.query_one("#phase-items", OptionList)
        # Every refresh rebuilds the list: keep the operator's highlighted item, or the next
        # tick drops it and space finds nothing to check off.
        keep = (items.get_option_at_index(items.highlighted).id
                if items.highlighted is not None and items.option_count else None)
        items.clear_options()
        shown = self.manual_items(state)
        for item_id, text, done in shown:
            box = Text("[✓] " if done else "[ ] ", style="bold green" if done else "bold")
            label = Text.assemble(box, Text(text, style="dim" if done else ""))
            items.add_option(Option(label, id=item_id))
        if keep is not None and keep in {i for i, _t, _d in shown}:
            items.highlighted = items.get_option_index(keep)
        elif shown:
            items.highlighted = 0
        live = state.gates if self.selected == state.phase_number else []
        table = Table(box=None, padding=(0, 1), expand=True, title="gates", title_justify="left")
        table.add_column("status", no_wrap=True, min_width=7)
        table.add_column("gate", no_wrap=True)
        table.add_column("value")
        table.add_column("threshold")
        if live:
            for g in live:
                table.add_row(Text(g.status, style=STATUS_STYLE[g.status]), g.gate, g.value,
                              g.threshold)
        else:
            for gid in p.gates:
                table.add_row(Text("-", style="dim"), gid, "", "live on the current phase")
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
        if action in ("mark", "mark_all") and self.app.read_only:  # type: ignore[attr-defined]
            return None
        return True

    def action_mark(self) -> None:
        items = self.query_one("#phase-items", OptionList)
        if items.highlighted is None or not items.option_count:
            self.notify("no manual item here")
            return
        option = items.get_option_at_index(items.highlighted)
        self.app.mark_item(option.id)  # type: ignore[attr-defined]

    def action_mark_all(self) -> None:
        state = self.app.state  # type: ignore[attr-defined]
        open_ids = [i for i, _t, done in self.manual_items(state) if not done]
        if not open_ids:
            self.notify("every manual item of this phase is checked off")
            return
        self.app.mark_items(open_ids)  # type: ignore[attr-defined]

    def action_filter(self) -> None:
        def done(text: str | None) -> None:
            if text is not None:
                self.filter_text = text
                self._show_phase(self.app.state)  # type: ignore[attr-defined]
        self.app.push_screen(FilterScreen(self.filter_text), done)
