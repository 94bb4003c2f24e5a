"""The operator console. Redis and HTTP run in thread workers; widgets update from messages."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable

import redis
from textual import work
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.containers import Grid
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer

from relayctl.core import checklist as checklist_core
from relayctl.core.backfill import BackfillKeys, send_control, spawn_engine
from relayctl.core.census import run_census
from relayctl.core.config import Config
from relayctl.core.connection import TLSOptions, connect, describe_redis_error, parse_target
from relayctl.core.console import ConsoleState, refresh
from relayctl.core.errors import RelayError
from relayctl.core.evaluation import gate_config, gate_context
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, FLAG_NAMES, PREFERS_NEW, set_flag, word
from relayctl.core.keys import KeySchema
from relayctl.core.phases import PROCEDURES, phase
from relayctl.core.verify import run_verify
from relayctl.tui.screens import (
    BackfillForm,
    BackfillRequest,
    ChecklistScreen,
    ConfirmScreen,
    HelpScreen,
    RollbackPicker,
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
    ReadPathPanel,
)

WRITE_ACTIONS = {"toggle_flag", "backfill_start", "backfill_control", "apply_phase", "advance",
                 "rollback", "mark_item", "census", "verify"}
MIN_INTERVAL, MAX_INTERVAL = 0.5, 30.0
MAX_BACKOFF = 15.0


class StateUpdated(Message):
    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state


class Dashboard(Screen):
    """The panels; three columns when the terminal is wide enough."""

    BINDINGS = [
        Binding("1", "app.toggle_flag('AI_JOBS_NEW_SCHEMA')", "Dual-write"),
        Binding("2", "app.toggle_flag('READ_PREFERS_NEW')", "Prefer new"),
        Binding("3", "app.toggle_flag('READ_FALLBACK_OLD')", "Fallback"),
        Binding("b", "app.backfill_start", "Backfill"),
        Binding("z", "app.backfill_control('pause')", "Pause backfill", show=False),
        Binding("r", "app.backfill_control('resume')", "Resume backfill", show=False),
        Binding("s", "app.backfill_control('stop')", "Stop backfill", show=False),
        Binding("u", "app.census", "Census", show=False),
        Binding("v", "app.verify", "Verify", show=False),
        Binding("R", "app.rollback", "Rollback", show=False),
        Binding("c", "app.checklist", "Checklist"),
    ]

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Grid(id="grid"):
            yield ReadPathPanel("read path (new/old/miss)", id="read")
            yield ListPathPanel("list path", id="list")
            yield DualWritePanel("dual-write", id="dual")
            yield BackfillPanel("backfill", id="backfill")
            yield FlagsPanel("flags", id="flags")
            yield KeyspacePanel("keyspace", id="keyspace")
            yield GatesPanel("gates", id="gates")
            yield AuditPanel("audit log (newest first)", id="audit")
        yield Footer()

    def on_mount(self) -> None:
        self.app._redraw()  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        self.app._redraw()  # type: ignore[attr-defined]

    def on_resize(self) -> None:
        grid = self.query_one("#grid")
        grid.set_class(self.size.width >= 140, "wide")
        grid.set_class(self.size.width < 100, "narrow")
        self.app._redraw()  # type: ignore[attr-defined]


class RelayApp(App[None]):
    """`relayctl tui`: watch and steer the migration."""

    CSS_PATH = "app.tcss"
    TITLE = "relayctl"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("plus,equals_sign", "faster", "Faster", key_display="+"),
        Binding("minus", "slower", "Slower", key_display="-"),
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
        # merged and validated as `relayctl check` does: a bad threshold fails before the UI
        self.gates = gate_config(Config(schema=self.schema, thresholds=dict(thresholds or {})),
                                 redis_url=redis_url, metrics_urls=self.metrics_urls,
                                 prometheus_url=prometheus_url)
        self.config_path = config_path  # forwarded to the engines the console starts
        self.paused = False
        self.state = ConsoleState()
        self._client: redis.Redis | None = None
        self._next_due = 0.0
        self._backoff = 0.0
        self._fetching = False

    def on_mount(self) -> None:
        self.push_screen(Dashboard())
        if self.source is not None:
            self.post_message(StateUpdated(self.source()))
            return
        self.set_interval(0.25, self._tick)

    def _tick(self) -> None:
        """Only schedules; the fetch itself runs in a worker thread."""
        now = time.monotonic()
        if self.paused or self._fetching or now < self._next_due:
            return
        self._fetching = True
        self.fetch()

    @work(thread=True, exclusive=True, group="fetch")
    def fetch(self) -> None:
        state = copy.deepcopy(self.state)
        try:
            if self._client is None:
                self._client = connect(self.redis_url, allow_plaintext=self.allow_plaintext,
                                       tls=self.tls_options, check=False,
                                       socket_timeout=2.0, connect_timeout=1.0)
            refresh(state, self._client, self.metrics_urls, self.redis_url, now=self.clock(),
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

    def _redraw(self) -> None:
        try:
            screen = self.screen
        except ScreenStackError:  # quitting: a fetch finished after the last screen went
            return
        for header in screen.query(HeaderBar):
            header.show(self.state, redis_display=self.redis_display, tls=self.tls,
                        paused=self.paused, interval=self.interval, read_only=self.read_only)
        if isinstance(screen, Dashboard):
            if self.state.ts == 0:
                return
            redis_stale = self.state.redis_status != "CONNECTED"
            metrics_stale = self.state.metrics_status != "OK"
            for panel_id in ("read", "list", "dual"):
                panel = screen.query_one(f"#{panel_id}")
                panel.show(self.state)
                panel.mark_stale(metrics_stale)
            for panel_id in ("backfill", "flags", "keyspace", "gates", "audit"):
                panel = screen.query_one(f"#{panel_id}")
                panel.show(self.state)
                panel.mark_stale(redis_stale)
        elif isinstance(screen, ChecklistScreen):
            screen.refresh_state(self.state)

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

    def action_help(self) -> None:
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            b = active.binding
            if not b.description or b.description in seen:
                continue
            seen.add(b.description)
            rows.append((b.key_display or self.get_key_display(b), b.description))
        self.push_screen(HelpScreen(rows))

    def action_checklist(self) -> None:
        self.push_screen(ChecklistScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name, label in ((DUAL_WRITE, "dual-write"), (PREFERS_NEW, "read prefers new"),
                            (FALLBACK_OLD, "read fallback old")):
            yield SystemCommand(f"Toggle {name}", f"Flip {label} (asks for a reason)",
                                lambda n=name: self.action_toggle_flag(n))
        yield SystemCommand("Start backfill", "Open the backfill form", self.action_backfill_start)
        for verb in ("pause", "resume", "stop"):
            yield SystemCommand(f"Backfill {verb}", f"{verb.title()} the running backfill",
                                lambda v=verb: self.action_backfill_control(v))
        yield SystemCommand("Run census", "Count keys in the background", self.action_census)
        yield SystemCommand("Run verify", "Check parity in the background", self.action_verify)
        yield SystemCommand("Checklist", "The six-phase walkthrough", self.action_checklist)
        yield SystemCommand("Apply phase", "Set the current phase's flags",
                            self.action_apply_phase)
        yield SystemCommand("Advance phase", "Move to the next phase", self.action_advance)
        yield SystemCommand("Rollback", "Run a rollback procedure", self.action_rollback)
        yield SystemCommand("Pause refresh", "Freeze the display", self.action_toggle_pause)

    @work(thread=True, group="write")
    def _write(self, what: str, fn: Callable[[redis.Redis], str]) -> None:
        """Run one write in a worker; report the result; refresh right after."""
        try:
            if self._client is None:
                self._client = connect(self.redis_url, allow_plaintext=self.allow_plaintext,
                                       tls=self.tls_options, check=False,
                                       socket_timeout=2.0, connect_timeout=1.0)
            result = fn(self._client)
            self.call_from_thread(self.notify, result or f"{what}: done")
        except RelayError as exc:
            self.call_from_thread(self.notify, f"{what}: {exc}", severity="error")
        except (redis.RedisError, OSError) as exc:
            self.call_from_thread(self.notify, f"{what} failed: {describe_redis_error(exc)}",
                                  severity="error")
        self._next_due = 0.0

    def _confirm(self, title: str, detail: str, then: Callable[[str], None]) -> None:
        if self._refuse_read_only():
            return

        def done(reason: str | None) -> None:
            if reason:
                then(reason)
        self.push_screen(ConfirmScreen(title, detail), done)

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
            f"Currently {word(current) if current is not None else 'unknown'}. Every instance "
            "picks the change up within about a second.",
            lambda reason: self._write(f"{name}={word(target)}", lambda c: flip(c, reason)))

    def action_backfill_start(self) -> None:
        if self._refuse_read_only():
            return

        def spawn(c: redis.Redis, req: BackfillRequest) -> str:
            pid = spawn_engine(self.redis_url or "", req.options, actor=self.actor,
                               reason=req.reason, client=c,
                               allow_plaintext=self.allow_plaintext,
                               tls=self.tls_options, config_path=self.config_path)
            return f"backfill engine started (pid {pid})"

        def start(req: BackfillRequest | None) -> None:
            if req is not None:
                self._write("backfill start", lambda c: spawn(c, req))

        self.push_screen(BackfillForm(), start)

    def action_backfill_control(self, verb: str) -> None:
        self._confirm(f"{verb.title()} the backfill?", "Takes effect within one batch.",
                      lambda reason: self._write(f"backfill {verb}", lambda c: (
                          send_control(c, verb, actor=self.actor, reason=reason,
                                       keys=BackfillKeys()) and f"backfill {verb} requested")))

    def action_census(self) -> None:
        self._background("census", lambda c: run_census(
            c, self.schema, now=self.clock).as_dict()["keys_per_s"] and "census done")

    def action_verify(self) -> None:
        self._background("verify", lambda c: (
            "verify: CLEAN" if run_verify(c, self.schema, now=self.clock).clean
            else "verify: DIFFERENCES FOUND"))

    def _background(self, what: str, fn: Callable[[redis.Redis], str]) -> None:
        """census / verify store their summary for the gates: a write, so not read-only."""
        if self._refuse_read_only():
            return
        self.notify(f"{what} running in the background…")
        self._write(what, fn)

    def action_apply_phase(self) -> None:
        p = phase(self.state.phase_number)
        flags = ", ".join(f"{k}={word(v)}" for k, v in (p.target_flags or {}).items())
        self._confirm(f"Apply phase {p.number}: {p.title}?",
                      f"Sets {flags or 'no flags'} and records the gate baselines.",
                      lambda reason: self._write("apply", lambda c: "applied: " + ", ".join(
                          f"{ch.name} {ch.before}->{ch.after}" for ch in checklist_core.apply(
                              c, actor=self.actor, reason=reason, metrics_urls=self.metrics_urls,
                              now=self.clock())[1]) or "baseline recorded"))

    def action_advance(self) -> None:
        number = self.state.phase_number
        blocking = [g.gate for g in self.state.gates if g.status != "PASS"]
        open_items = [i.id for i in phase(number).prerequisites + phase(number).validation
                      if i.manual and not self.state.checklist.done(i.id)]
        if open_items:
            self.notify("check off first: " + ", ".join(open_items), severity="warning")
            return
        detail = ("All gates pass." if not blocking else
                  "Gates not passing: " + ", ".join(blocking) +
                  ". Confirming overrides them; the reason is recorded.")

        def go(reason: str) -> None:
            def run(c: redis.Redis) -> str:
                ctx = gate_context(self.gates, c, checklist_core.read_checklist(c), number,
                                   now=self.clock)
                result = checklist_core.advance(c, ctx, actor=self.actor,
                                                overrides=dict.fromkeys(blocking, reason),
                                                now=self.clock)
                if not result.advanced:
                    raise RelayError("cannot advance: " + ", ".join(
                        result.blocking + result.open_items))
                return f"advanced to phase {result.phase_to}"
            self._write("advance", run)
        self._confirm(f"Advance from phase {number}?", detail, go)

    def action_rollback(self) -> None:
        if self._refuse_read_only():
            return

        def picked(proc_id: str | None) -> None:
            if proc_id is None:
                return
            proc = PROCEDURES[proc_id]
            flags = ", ".join(f"{k}={word(v)}" for k, v in proc.flags.items())
            self._confirm(f"{proc.title}?", f"Sets {flags}." + (
                " Stops the running backfill." if proc.stop_backfill else ""),
                lambda reason: self._write("rollback", lambda c: "rollback applied: " + ", ".join(
                    f"{ch.name}->{ch.after}" for ch in checklist_core.rollback(
                        c, proc_id, actor=self.actor, reason=reason, now=self.clock()).changes)))
        self.push_screen(RollbackPicker(), picked)

    def mark_item(self, item_id: str) -> None:
        done = self.state.checklist.done(item_id)
        self._confirm(f"{'Re-open' if done else 'Check off'} {item_id}?",
                      "Recorded with your name and the time.",
                      lambda reason: self._write("mark", lambda c: ", ".join(checklist_core.mark(
                          c, [item_id], actor=self.actor, reason=reason, undo=done,
                          now=self.clock())) + (" re-opened" if done else " checked off")))
