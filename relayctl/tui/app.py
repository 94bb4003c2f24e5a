"""The operator console. Redis and HTTP run in thread workers; widgets update from messages."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable

import redis
from rich.console import RenderableType
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.containers import Grid
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from relayctl.core import checklist as checklist_core
from relayctl.core.backfill import BackfillKeys, send_control, spawn_engine
from relayctl.core.backfill.state import send_tune
from relayctl.core.census import run_census
from relayctl.core.config import Config
from relayctl.core.connection import TLSOptions, connect, describe_redis_error, parse_target
from relayctl.core.console import ConsoleState, refresh
from relayctl.core.errors import RelayError
from relayctl.core.evaluation import GateConfig, gate_config, gate_context
from relayctl.core.flags import FLAG_NAMES, set_flag, word
from relayctl.core.keys import KeySchema
from relayctl.core.phases import PROCEDURES, phase
from relayctl.core.verify import run_verify
from relayctl.tui.screens import (
    BackfillForm,
    BackfillRequest,
    ChecklistScreen,
    ChoiceScreen,
    ConfirmScreen,
    FilterScreen,
    HelpScreen,
    RollbackPicker,
    TextScreen,
    TooSmall,
    TuneForm,
    TuneRequest,
    fits,
)
from relayctl.tui.widgets import (
    AuditPanel,
    BackfillPanel,
    DualWritePanel,
    FlagsPanel,
    GatesPanel,
    HeaderBar,
    KeyspacePanel,
    ListPathPanel,
    Panel,
    ReadPathPanel,
    TablePanel,
    backfill_health,
)

WRITE_ACTIONS = {"toggle_flag", "flags", "backfill_tune", "mark_all", "backfill_start",
                 "backfill_control", "apply_phase", "advance", "rollback", "mark_item", "census",
                 "verify"}
MIN_INTERVAL, MAX_INTERVAL = 0.5, 30.0
MAX_BACKOFF = 15.0


class StateUpdated(Message):
    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state


PANELS = ("read", "list", "dual", "backfill", "flags", "keyspace", "gates", "audit")


class Dashboard(Screen):
    """The panels; three columns when the terminal is wide enough, one under 100 columns.

    Tab / shift+Tab or 1-8 move the focus between panels (a ring shows it), j/k, arrows,
    PageUp/PageDown and g/G scroll the focused one, z or Enter zooms it.
    """

    BINDINGS = [
        Binding("question_mark", "app.help", "Help", key_display="?"),
        Binding("q", "app.quit", "Quit"),
        Binding("tab", "app.focus_next", "Panel", show=False),
        Binding("shift+tab", "app.focus_previous", "Panel", show=False),
        *[Binding(str(i + 1), f"focus_panel('{pid}')", f"Panel {pid}", show=False)
          for i, pid in enumerate(PANELS)],
        Binding("z", "zoom", "Zoom"),
        Binding("enter", "open", "Open", show=False),
        Binding("c", "app.checklist", "Checklist"),
        Binding("f", "app.flags", "Flags"),
        Binding("b", "app.backfill_start", "Backfill"),
        Binding("P", "app.backfill_control('pause')", "Pause backfill", show=False),
        Binding("r", "app.backfill_control('resume')", "Resume backfill", show=False),
        Binding("s", "app.backfill_control('stop')", "Stop backfill", show=False),
        Binding("t", "app.backfill_tune", "Retune backfill", show=False),
        Binding("u", "app.census", "Census", show=False),
        Binding("v", "app.verify", "Verify", show=False),
        Binding("R", "app.rollback", "Rollback", show=False),
        Binding("slash", "filter", "Filter audit", key_display="/", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield TooSmall(id="too-small")
        with Grid(id="grid"):
            yield ReadPathPanel("read path (new/old/miss)", 1, id="read")
            yield ListPathPanel("list path", 2, id="list")
            yield DualWritePanel("dual-write", 3, id="dual")
            yield BackfillPanel("backfill", 4, id="backfill")
            yield FlagsPanel("flags", 5, id="flags")
            yield KeyspacePanel("keyspace", 6, id="keyspace")
            yield GatesPanel("gates", 7, id="gates")
            yield AuditPanel("audit log (newest first)", 8, id="audit")
        yield Footer()

    def on_mount(self) -> None:
        self._layout()
        self.focus_panel_widget("read")
        self.app._redraw()  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        self.app._redraw()  # type: ignore[attr-defined]

    def on_resize(self) -> None:
        self._layout()
        self.app._redraw()  # type: ignore[attr-defined]

    def _layout(self) -> None:
        grid = self.query_one("#grid")
        grid.set_class(self.size.width >= 140, "wide")
        grid.set_class(self.size.width < 100, "narrow")
        fits(self)

    def focus_panel_widget(self, panel_id: str) -> None:
        panel = self.query_one(f"#{panel_id}", Panel)
        target = panel.table if isinstance(panel, TablePanel) else panel
        target.focus()
        panel.scroll_visible(animate=False)

    def action_focus_panel(self, panel_id: str) -> None:
        self.focus_panel_widget(panel_id)

    def focused_panel(self) -> Panel | None:
        node = self.focused
        while node is not None and not isinstance(node, Panel):
            node = node.parent  # type: ignore[assignment]
        return node

    def action_zoom(self) -> None:
        panel = self.focused_panel()
        if panel is not None:
            self.app.push_screen(ZoomScreen(panel.id or "", panel.title,
                                            panel.zoomed(self.app.state)))  # type: ignore[attr-defined]

    def action_open(self) -> None:
        panel = self.focused_panel()
        if isinstance(panel, TablePanel):
            text = panel.row_text()
            if text:
                self.app.push_screen(TextScreen(panel.title, Text(text)))
            return
        self.action_zoom()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_filter(self) -> None:
        audit_panel = self.query_one("#audit", AuditPanel)

        def done(text: str | None) -> None:
            if text is not None:
                audit_panel.filter_text = text
                audit_panel.show(self.app.state)  # type: ignore[attr-defined]
                self.focus_panel_widget("audit")
        self.app.push_screen(FilterScreen(audit_panel.filter_text), done)


class ZoomScreen(TextScreen):
    """A panel full-screen, refreshed with the dashboard's data; Esc returns."""

    def __init__(self, panel_id: str, title: str, body: RenderableType) -> None:
        super().__init__(f"{title}  (zoomed)", body, full=True)
        self.panel_id = panel_id


class RelayApp(App[None]):
    """`relayctl tui`: watch and steer the migration."""

    CSS_PATH = "app.tcss"
    TITLE = "relayctl"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "toggle_pause", "Pause refresh", show=False),
        Binding("plus,equals_sign", "faster", "Faster refresh", key_display="+", show=False),
        Binding("minus", "slower", "Slower refresh", key_display="-", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        allow_plaintext: bool = False,
        tls: TLSOptions | None = None,
        metrics_urls: list[str] | None = None,
        actor: str = "operator",
        read_only: bool = False,
        refresh_s: float = 2.0,
        schema: KeySchema | None = None,
        clock: Callable[[], float] = time.time,
        source: Callable[[], ConsoleState] | None = None,
        thresholds: dict[str, float] | None = None,
        prometheus_url: str | None = None,
        config_path: str | None = None,
        demo: bool = False,
        links: list[tuple[str, str]] | None = None,
        gates: GateConfig | None = None,
    ) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.allow_plaintext = allow_plaintext
        self.tls_options = tls if tls is not None else TLSOptions.from_env()
        target = parse_target(redis_url, allow_plaintext)
        self.redis_display = f"{target.host}:{target.port or 6379}"
        self.tls = target.tls
        self.metrics_urls = list(metrics_urls or [])
        self.actor = actor
        self.read_only = read_only
        self.interval = refresh_s
        self.schema = schema or KeySchema()
        self.clock = clock
        self.source = source
        # merged and validated as `relayctl check` does: a bad threshold fails before the UI;
        # `relayctl tui` passes the CLI's own GateConfig (selector, auth, headers, names)
        self.gates = gates if gates is not None else gate_config(
            Config(schema=self.schema, thresholds=dict(thresholds or {})),
            redis_url=redis_url, metrics_urls=self.metrics_urls, prometheus_url=prometheus_url)
        self.config_path = config_path  # forwarded to the engines the console starts
        self.demo = demo  # quitting ends the embedded Redis: ask while a backfill runs
        self.links = list(links or [])
        self.paused = False
        self.state = ConsoleState()
        self._client: redis.Redis | None = None
        self._next_due = 0.0
        self._scanning: set[str] = set()  # census / verify running in a worker
        self._backoff = 0.0
        self._fetching = False

    def on_mount(self) -> None:
        self.push_screen(Dashboard())
        if self.source is not None:
            self.post_message(StateUpdated(self.source()))
            return
        self.set_interval(0.25, self._tick)

    def _tick(self) -> None:
        """Only schedules (and redraws the reconnect countdown); the fetch runs in a worker."""
        now = time.monotonic()
        if self.state.redis_status in ("DOWN", "RECONNECTING"):
            self._redraw_header()
        if self.paused or self._fetching or now < self._next_due:
            return
        self._fetching = True
        self.fetch()

    def _connect(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.redis_url, allow_plaintext=self.allow_plaintext,
                                   tls=self.tls_options, check=False,
                                   socket_timeout=2.0, connect_timeout=1.0)
        return self._client

    @work(thread=True, exclusive=True, group="fetch")
    def fetch(self) -> None:
        state = copy.deepcopy(self.state)
        try:
            refresh(state, self._connect(), self.metrics_urls, self.redis_url, now=self.clock(),
                    gates=self.gates)
        except RelayError as exc:
            state.redis_status, state.redis_error = "DOWN", str(exc)
        self.post_message(StateUpdated(state))

    def on_state_updated(self, message: StateUpdated) -> None:
        self.state = message.state
        ok = self.state.redis_status == "CONNECTED"
        if ok:
            self._backoff = 0.0
            delay = self.interval
        else:
            self._backoff = min(max(self._backoff * 2, 1.0), MAX_BACKOFF)
            delay = self._backoff
        self._next_due = time.monotonic() + delay
        self._fetching = False
        self._redraw()

    def retry_in(self) -> float | None:
        if self.state.redis_status not in ("DOWN", "RECONNECTING") or self.source is not None:
            return None
        return max(self._next_due - time.monotonic(), 0.0)

    def _redraw_header(self) -> None:
        try:
            screen = self.screen
        except ScreenStackError:
            return
        for header in screen.query(HeaderBar):
            header.show(self.state, redis_display=self.redis_display, tls=self.tls,
                        paused=self.paused, interval=self.interval, read_only=self.read_only,
                        retry_in=self.retry_in())

    def _redraw(self) -> None:
        try:
            screen = self.screen
        except ScreenStackError:  # quitting: a fetch finished after the last screen went
            return
        self._redraw_header()
        for dash in self.screen_stack:
            if isinstance(dash, Dashboard) and self.state.ts:
                self._draw_dashboard(dash)
        if isinstance(screen, ChecklistScreen):
            screen.refresh_state(self.state)
        elif isinstance(screen, ZoomScreen) and self.state.ts:
            dash = next(s for s in self.screen_stack if isinstance(s, Dashboard))
            screen.update_body(dash.query_one(f"#{screen.panel_id}", Panel).zoomed(self.state))

    def _draw_dashboard(self, screen: Dashboard) -> None:
        if not fits(screen):
            return
        redis_stale = self.state.redis_status != "CONNECTED"
        metrics_stale = self.state.metrics_status != "OK"
        for panel_id in PANELS:
            panel = screen.query_one(f"#{panel_id}", Panel)
            panel.show(self.state)
            panel.mark_stale(metrics_stale if panel_id in ("read", "list", "dual")
                             else redis_stale)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Write actions are shown dimmed (disabled) in read-only mode."""
        if self.read_only and action in WRITE_ACTIONS:
            return None
        return True

    def _refuse_read_only(self) -> bool:
        if self.read_only:
            self.notify("read-only console: write actions are disabled", severity="warning")
        return self.read_only

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._redraw()

    def action_faster(self) -> None:
        self.interval = max(MIN_INTERVAL, self.interval / 2)
        self._next_due = 0.0
        self._redraw()

    def action_slower(self) -> None:
        self.interval = min(MAX_INTERVAL, self.interval * 2)
        self._redraw()

    def key_groups(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every screen's keys, from its bindings (so help cannot drift from them)."""
        groups = []
        for title, bindings in (("dashboard", Dashboard.BINDINGS),
                                ("checklist (c)", ChecklistScreen.BINDINGS),
                                ("everywhere", self.BINDINGS)):
            rows, seen = [], set()
            for b in bindings:
                if not isinstance(b, Binding) or not b.description or b.description in seen:
                    continue
                if b.description.startswith("Panel "):
                    continue
                seen.add(b.description)
                rows.append((b.key_display or b.key.replace("question_mark", "?")
                             .replace("slash", "/").replace("shift+", "shift+"), b.description))
            if title == "dashboard":
                rows[2:2] = [("1-8", "focus a panel: " + ", ".join(
                    f"{i + 1} {p}" for i, p in enumerate(PANELS))),
                    ("j/k PgUp/PgDn g/G", "scroll the focused panel (arrows too)")]
            groups.append((title, rows))
        groups.append(("dialogs", [("Enter", "confirm (once the reason is typed)"),
                                   ("Esc", "cancel / close"), ("ctrl+p", "command palette")]))
        return groups

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_groups(), self.links))

    def action_checklist(self) -> None:
        if not isinstance(self.screen, ChecklistScreen):
            self.push_screen(ChecklistScreen())

    async def action_quit(self) -> None:
        """In the demo, quitting ends the embedded Redis and its state: ask while a backfill
        engine runs."""
        if self.demo and backfill_health(self.state).live and \
                not isinstance(self.screen, ChoiceScreen):
            def done(choice: str | None) -> None:
                if choice == "quit":
                    self.exit()
            self.push_screen(ChoiceScreen(
                "Quit the demo?", [("stay", "Stay"), ("quit", "Quit: ends the embedded Redis")],
                "A backfill is running; quitting stops the demo's Redis and loses its data."),
                done)
            return
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for title, help_text, key, action in (
            ("Flip a flag", "Pick a flag; asks for a reason", "f", self.action_flags),
            ("Start backfill", "Open the backfill form", "b", self.action_backfill_start),
            ("Backfill pause", "Pause the running backfill", "P",
             lambda: self.action_backfill_control("pause")),
            ("Backfill resume", "Resume the paused backfill", "r",
             lambda: self.action_backfill_control("resume")),
            ("Backfill stop", "Stop the running backfill", "s",
             lambda: self.action_backfill_control("stop")),
            ("Retune backfill", "Change rps, batch, guards of the running engine", "t",
             self.action_backfill_tune),
            ("Run census", "Count keys in the background", "u", self.action_census),
            ("Run verify", "Check parity in the background", "v", self.action_verify),
            ("Checklist", "The six-phase walkthrough", "c", self.action_checklist),
            ("Apply phase", "Set the current phase's flags (checklist)", "a",
             self.action_apply_phase),
            ("Advance phase", "Move to the next phase (checklist)", "A", self.action_advance),
            ("Rollback", "Run a rollback procedure", "R", self.action_rollback),
            ("Pause refresh", "Freeze the display", "p", self.action_toggle_pause),
        ):
            yield SystemCommand(f"{title}  [{key}]", help_text, action)

    @work(thread=True, group="write")
    def _write(self, what: str, fn: Callable[[redis.Redis], str]) -> None:
        """Run one write in a worker; report the result; refresh right after."""
        try:
            result = fn(self._connect())
            self.call_from_thread(self.notify, result or f"{what}: done")
        except RelayError as exc:
            self.call_from_thread(self.notify, f"{what}: {exc}", severity="error")
        except (redis.RedisError, OSError) as exc:
            self.call_from_thread(self.notify, f"{what} failed: {describe_redis_error(exc)}",
                                  severity="error")
        self._next_due = 0.0

    def _confirm(self, title: str, detail: str, then: Callable[[str], None],
                 **options: object) -> None:
        if self._refuse_read_only():
            return

        def done(reason: str | None) -> None:
            if reason:
                then(reason)
        self.push_screen(ConfirmScreen(title, detail, **options), done)  # type: ignore[arg-type]

    def action_flags(self) -> None:
        if self._refuse_read_only():
            return
        rows = {r.name: r.value for r in self.state.flags}
        options = []
        for name in FLAG_NAMES:
            current = rows.get(name)
            target = not current if current is not None else True
            options.append((name, f"{name}: {word(current) if current is not None else '?'}"
                                  f" -> {word(target)}"))

        def picked(name: str | None) -> None:
            if name:
                self.action_toggle_flag(name)
        self.push_screen(ChoiceScreen("Flip which flag?", options), picked)

    def action_toggle_flag(self, name: str) -> None:
        if name not in FLAG_NAMES:
            return
        row = next((r for r in self.state.flags if r.name == name), None)
        current = row.value if row else None
        target = not current if current is not None else True

        def flip(c: redis.Redis, reason: str) -> str:
            change = set_flag(c, name, target, actor=self.actor, reason=reason, now=self.clock())
            return f"{name}: {change.before} -> {change.after}"

        self._confirm(
            f"Set {name} = {word(target)}?",
            f"{name}: {word(current) if current is not None else 'unknown'} -> {word(target)}. "
            "Every instance picks the change up within about a second.",
            lambda reason: self._write(f"{name}={word(target)}", lambda c: flip(c, reason)))

    def action_backfill_start(self) -> None:
        if self._refuse_read_only():
            return
        health = backfill_health(self.state)
        if self.state.engine_alive or health.health in ("running", "throttled", "paused",
                                                         "stalled"):
            self.notify(f"a backfill is already {health.health.upper()} (run "
                        f"{self.state.backfill.get('run_id', '?')}): pause (P), stop (s) or "
                        "retune (t) it instead", severity="error")
            return

        def spawn(c: redis.Redis, req: BackfillRequest) -> str:
            pid = spawn_engine(self.redis_url or "", req.options, actor=self.actor,
                               reason=req.reason, client=c,
                               allow_plaintext=self.allow_plaintext,
                               tls=self.tls_options, config_path=self.config_path)
            return watch_spawned(c, pid)

        def start(req: BackfillRequest | None) -> None:
            if req is not None:
                self._write("backfill start", lambda c: spawn(c, req))

        self.push_screen(BackfillForm(), start)

    def action_backfill_control(self, verb: str) -> None:
        # pausing is the safe action: a reason is welcome, not demanded
        self._confirm(f"{verb.title()} the backfill?", "Takes effect within one batch.",
                      lambda reason: self._write(f"backfill {verb}", lambda c: (
                          send_control(c, verb, actor=self.actor, reason=reason,
                                       keys=BackfillKeys()) and f"backfill {verb} requested")),
                      reason_required=verb != "pause", default_reason="")

    def action_backfill_tune(self) -> None:
        if self._refuse_read_only():
            return
        if not self.state.engine_alive:
            self.notify("no backfill engine is running: nothing to retune", severity="warning")
            return

        def tuned(req: TuneRequest | None) -> None:
            if req is not None:
                self._write("backfill retune", lambda c: "retuned: " + ", ".join(
                    f"{k}={v}" for k, v in send_tune(c, req.changes, actor=self.actor,
                                                     reason=req.reason).items()))
        self.push_screen(TuneForm(self.state.backfill), tuned)

    def action_census(self) -> None:
        self._background("census", lambda c: run_census(
            c, self.schema, now=self.clock).as_dict()["keys_per_s"] and "census done")

    def action_verify(self) -> None:
        self._background("verify", lambda c: (
            "verify: CLEAN" if run_verify(c, self.schema, now=self.clock).clean
            else "verify: DIFFERENCES FOUND"))

    def _background(self, what: str, fn: Callable[[redis.Redis], str]) -> None:
        """census / verify store their summary for the gates: a write, so not read-only.
        One of each at a time: a second key press says so instead of starting a second full
        scan that would only slow the first (and every other read) down."""
        if self._refuse_read_only():
            return
        if what in self._scanning:
            self.notify(f"{what} is already running", severity="warning")
            return
        self._scanning.add(what)

        def run(c: redis.Redis) -> str:
            try:
                return fn(c)
            finally:
                self._scanning.discard(what)
        self.notify(f"{what} running in the background…")
        self._write(what, run)

    def action_apply_phase(self) -> None:
        seen = self.state.phase_number  # what the operator confirms: refused once it moved
        p = phase(seen)
        current = {r.name: r.value for r in self.state.flags}
        changing = [f"{k}: {word(current.get(k))} -> {word(v)}"
                    for k, v in (p.target_flags or {}).items() if current.get(k) != v]
        detail = ("Changes " + "; ".join(changing) if changing else
                  "No flag changes") + ". Records the gate baselines (the metric gates count " \
            "from now)."
        self._confirm(f"Apply phase {p.number}: {p.title}?", detail,
                      lambda reason: self._write("apply", lambda c: "applied: " + (", ".join(
                          f"{ch.name} {ch.before}->{ch.after}" for ch in checklist_core.apply(
                              c, actor=self.actor, reason=reason, metrics_urls=self.metrics_urls,
                              now=self.clock(), seen_phase=seen)[1]) or "baseline recorded")))

    def action_advance(self) -> None:
        number = self.state.phase_number
        blocking = [g.gate for g in self.state.gates if g.status != "PASS"]
        open_items = [i.id for i in phase(number).prerequisites + phase(number).validation
                      if i.manual and not self.state.checklist.done(i.id)]
        if open_items:
            self.notify("check off first (x checks all): " + ", ".join(open_items),
                        severity="warning")
            return
        firing = [g.gate for g in self.state.triggers if g.status == "FAIL"]
        detail = ("All gates pass." if not blocking else
                  "Gates not passing: " + ", ".join(blocking) +
                  ". Confirming overrides them; the reason is recorded.")
        if firing:
            detail += " ROLLBACK TRIGGER FIRING: " + ", ".join(firing) + "."

        def go(reason: str) -> None:
            def run(c: redis.Redis) -> str:
                ctx = gate_context(self.gates, c, checklist_core.read_checklist(c), number,
                                   now=self.clock)
                result = checklist_core.advance(c, ctx, actor=self.actor,
                                                overrides=dict.fromkeys(blocking, reason),
                                                now=self.clock, reason=reason, seen_phase=number)
                if not result.advanced:
                    raise RelayError("cannot advance: " + ", ".join(
                        result.blocking + result.open_items))
                return f"advanced to phase {result.phase_to}"
            self._write("advance", run)
        self._confirm(f"Advance from phase {number}?", detail, go,
                      require_typed=blocking[0] if blocking and firing else None)

    def action_rollback(self) -> None:
        if self._refuse_read_only():
            return
        seen = self.state.phase_number

        def picked(proc_id: str | None) -> None:
            if proc_id is None:
                return
            proc = PROCEDURES[proc_id]
            flags = ", ".join(f"{k}={word(v)}" for k, v in proc.flags.items())
            self._confirm(f"{proc.title}?", f"Sets {flags}." + (
                " Stops the running backfill." if proc.stop_backfill else ""),
                lambda reason: self._write("rollback", lambda c: "rollback applied: " + ", ".join(
                    f"{ch.name}->{ch.after}" for ch in checklist_core.rollback(
                        c, proc_id, actor=self.actor, reason=reason, now=self.clock(),
                        seen_phase=seen).changes)))
        self.push_screen(RollbackPicker(), picked)

    def mark_item(self, item_id: str) -> None:
        done = self.state.checklist.done(item_id)
        self._mark([item_id], undo=done)

    def mark_items(self, item_ids: list[str]) -> None:
        self._mark(item_ids, undo=False)

    def _mark(self, item_ids: list[str], undo: bool) -> None:
        what = _items(item_ids)
        seen = self.state.phase_number
        self._confirm(f"{'Re-open' if undo else 'Check off'} {what}?",
                      ", ".join(item_ids) + ". Recorded with your name and the time.",
                      lambda reason: self._write("mark", lambda c: _marked(checklist_core.mark(
                          c, item_ids, actor=self.actor, reason=reason, undo=undo,
                          now=self.clock(), seen_phase=seen), undo)))


def _items(ids: list[str]) -> str:
    """One item by its id, more by their count (twelve ids would cover the screen)."""
    return ids[0] if len(ids) == 1 else f"{len(ids)} items"


def _marked(done: list[str], undo: bool) -> str:
    return f"{_items(done)} {'re-opened' if undo else 'checked off'}"


def watch_spawned(client: redis.Redis, pid: int, timeout: float = 5.0) -> str:
    """After the spawn, wait until the engine holds its lease or exits: a refused engine is
    reported with its own one-line reason, never announced as started."""
    from relayctl.core.backfill import lease_owner
    from relayctl.core.backfill.process import engine_error, spawned_exit

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = spawned_exit(pid)
        if code is not None:
            if code == 0:
                return f"backfill engine (pid {pid}) finished"
            why = engine_error(pid) or "see `relayctl backfill status`"
            raise RelayError(f"backfill engine (pid {pid}) refused or failed (exit {code}): "
                             f"{why}")
        owner = lease_owner(client) or ""
        if owner.endswith(f":{pid}"):
            return f"backfill engine started (pid {pid})"
        time.sleep(0.1)
    return f"backfill engine (pid {pid}) started; no lease yet after {timeout:g}s"
