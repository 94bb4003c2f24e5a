"""Dashboard panels. Each renders a ConsoleState; none talks to Redis.

Every panel can take the focus (Tab / shift+Tab / its number) and shows a ring when it has it;
j/k, arrows, PageUp/PageDown, g/G scroll it. The gates and the audit log are row tables: a
row cursor, Enter opens the row's full text, and their key columns never shrink away.
"""

from __future__ import annotations

import contextlib
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Checkbox, DataTable, Static

from relayctl.core import formatting as fmt
from relayctl.core.backfill.state import RunHealth, run_health
from relayctl.core.console import ConsoleState
from relayctl.core.gates import THRESHOLDS, GateResult
from relayctl.core.phases import phase

STATUS_STYLE = {"PASS": "bold green", "FAIL": "bold red", "WAIT": "bold yellow",
                "UNKNOWN": "bold magenta"}
BADGE = {"CONNECTED": "on dark_green", "OK": "on dark_green", "RECONNECTING": "on dark_orange3",
         "STALE": "on dark_orange3", "DOWN": "on red", "CONNECTING": "on grey30",
         "NONE": "on grey30"}
HEALTH_STYLE = {"running": "bold cyan", "throttled": "bold black on yellow",
                "paused": "bold yellow", "stalled": "bold black on dark_orange3",
                "dead": "bold white on red", "finished": "bold green", "none": "dim"}
SCROLL_KEYS = [
    Binding("j", "scroll_down", "Down", show=False),
    Binding("k", "scroll_up", "Up", show=False),
    Binding("g", "scroll_home", "Top", show=False),
    Binding("G", "scroll_end", "Bottom", show=False),
]


def pct(x: float | None) -> str:
    return "  -  " if x is None else f"{x * 100:5.1f}%"


def share_style(share: float | None) -> str:
    """The seed's thresholds as colours: <50% red, <80% yellow, else green."""
    if share is None:
        return "dim"
    if share < THRESHOLDS["new_read_share_50"]:
        return "bold red"
    if share < THRESHOLDS["new_read_share_80"]:
        return "bold yellow"
    return "bold green"


def clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


class HeaderBar(Static):
    """Badges: Redis (with the reconnect countdown), metrics, LIVE/PAUSED, updated stamp,
    READ-ONLY, phase; a source's error on a second line, never cut to a stub."""

    _last: tuple[ConsoleState, dict[str, Any]] | None = None

    def on_resize(self) -> None:
        """Redraw for the new width at once: under a dialog no refresh reaches this header,
        and a wide layout left on an 80-column terminal wraps."""
        if self._last is not None:
            state, options = self._last
            self.show(state, **options)

    def show(self, state: ConsoleState, *, redis_display: str, tls: bool, paused: bool,
             interval: float, read_only: bool, retry_in: float | None = None,
             now: float = 0.0) -> None:
        self._last = (state, {"redis_display": redis_display, "tls": tls, "paused": paused,
                              "interval": interval, "read_only": read_only,
                              "retry_in": retry_in, "now": now})
        compact = bool(self.size.width) and self.size.width < 120
        t = Text(no_wrap=True, overflow="ellipsis")
        if state.checklist.complete:
            phase_badge = (" DONE " if compact else " ROLLOUT COMPLETE ",
                           "bold white on dark_green")
        else:
            p = phase(state.phase_number)
            phase_badge = (f" phase {p.number} " if compact else f" phase {p.number}: {p.title} ",
                           "bold white on grey23")
        address = f"{redis_display}{' TLS' if tls else ''} "
        if compact:  # one line at 80 columns: the phase and the badges first, the address last
            t.append(*phase_badge)
            t.append(" ")
        else:
            t.append(" relayctl ", style="bold reverse")
            t.append(" ")
            t.append(address, style="bold")
            if state.server:
                t.append(f"{state.server} ", style="dim")
        t.append(f" {state.redis_status} ", style=f"bold white {BADGE[state.redis_status]}")
        if retry_in is not None and state.redis_status in ("DOWN", "RECONNECTING"):
            t.append(f" retry {retry_in:.0f}s", style="bold")
        t.append(" metrics " if compact else "  metrics ")
        t.append(f" {state.metrics_status} ", style=f"bold white {BADGE[state.metrics_status]}")
        t.append(" ")
        if paused:
            t.append(" PAUSED ", style="bold black on yellow")
        else:
            t.append(" LIVE ", style="bold white on dark_green")
        t.append(" " if compact else f" {interval:g}s ")  # at 80 columns the address wins
        if state.redis_updated:
            t.append(f"updated {fmt.clock(state.redis_updated)} ", style="dim")
        if read_only:
            t.append(" READ-ONLY ", style="bold white on blue")
            t.append(" ")
        if compact:
            t.append(address, style="bold")
        else:
            t.append(*phase_badge)
        error = ""
        if state.redis_status in ("DOWN", "RECONNECTING") and state.redis_error:
            error = state.redis_error
            style = "bold red"
        elif state.metrics_status in ("DOWN", "STALE") and state.metrics_error:
            error = state.metrics_error
            style = "yellow"
        if error:
            t.append("\n")
            t.append(error, style=style)
        self.set_class(bool(error), "with-error")
        self.update(t)


class Panel(VerticalScroll):
    """A bordered, focusable, scrollable panel with a title; subclasses fill `body`."""

    DEFAULT_CLASSES = "panel"
    can_focus = True
    BINDINGS = SCROLL_KEYS

    def __init__(self, title: str, number: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title = title
        self.number = number
        self.border_title = f"{number} {title}" if number else title
        self.last: RenderableType = Text("")

    def compose(self) -> ComposeResult:
        yield Static(id=f"{self.id}-body", classes="body")

    @property
    def body(self) -> Static:
        return self.query_one(".body", Static)

    def update_body(self, renderable: RenderableType) -> None:
        self.last = renderable
        self.body.update(renderable)

    def show(self, state: ConsoleState) -> None:
        raise NotImplementedError

    def zoomed(self, state: ConsoleState) -> RenderableType:
        """What the full-screen view shows (the same content, nothing cut)."""
        return self.last

    def mark_stale(self, stale: bool) -> None:
        self.set_class(stale, "stale")


BLOCKS = " ▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int) -> Text:
    """New-read share history on a fixed 0-100% scale, coloured by the seed's thresholds."""
    t = Text(no_wrap=True, overflow="crop")
    for v in values[-max(width, 0):]:
        t.append(BLOCKS[min(int(v * (len(BLOCKS) - 1) + 0.5), len(BLOCKS) - 1)],
                 style=share_style(v))
    return t


def gate_window(state: ConsoleState) -> str:
    """The window the metric gates count over: since the phase was applied, or cumulative."""
    applied = state.checklist.applied.get(state.phase_number)
    if applied:
        return f"since phase {state.phase_number} applied {fmt.ago(applied, state.ts)}"
    return "since the processes started (apply the phase to set a baseline)"


class ReadPathPanel(Panel):

    def show(self, state: ConsoleState) -> None:
        r = state.rates
        t = Text()
        t.append(f"last tick ({fmt.duration(r.seconds)})\n" if r.seconds else "last tick\n",
                 style="dim")
        for path in ("new", "old", "miss"):
            share = r.share(path)
            style = share_style(share) if path == "new" else ""
            t.append(f"{path:>5} ", style="bold")
            t.append(pct(share), style=style)
            t.append(f"  {r.reads[path]:>6.0f}\n")
        gate = next((g for g in state.gates if g.gate.startswith(("new_read_share",
                                                                    "old_read_share"))), None)
        if gate is not None:
            t.append(f"gate {gate.gate}: ", style="dim")
            t.append(gate.value, style=STATUS_STYLE[gate.status])
            t.append(f" ({gate_window(state)})\n", style="dim")
        t.append("target >80% new, rollback <50%\n", style="dim")
        t.append("history ", style="dim")
        width = max((self.content_size.width or 40) - 8, 0)
        t.append_text(spark(state.new_share_history, width))
        self.update_body(t)


class ListPathPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        r = state.rates
        t = Text()
        for path in ("new", "mixed", "old"):
            t.append(f"{path:>6} ", style="bold")
            t.append(f"{pct(r.list_share(path))}  {r.lists[path]:>5.0f}\n")
        self.update_body(t)


class DualWritePanel(Panel):
    def show(self, state: ConsoleState) -> None:
        r = state.rates
        success = r.dual_success
        t = Text()
        t.append("success ", style="bold")
        style = "dim" if success is None else (
            "bold green" if success >= 1 - THRESHOLDS["dual_write_failure_1"] else
            "bold yellow" if success >= 1 - THRESHOLDS["dual_write_failure_5"] else "bold red")
        t.append(pct(success) + "\n", style=style)
        t.append("failed/min ", style="bold")
        t.append(f"{r.failures_per_min:.1f}\n",
                 style="bold red" if r.dual_failed else "")
        t.append(f"writes {r.dual_ok + r.dual_failed:.0f} this tick\n")
        t.append("fail <1%, rollback >5%", style="dim")
        self.update_body(t)


def heartbeat_now(state: ConsoleState) -> float:
    """The last good read on the engines' (wall) clock: with Redis down the saved state is not
    news of a stall, and the demo's scaled clock would age a live heartbeat by days."""
    return state.read_wall or state.redis_updated or state.ts


def backfill_health(state: ConsoleState) -> RunHealth:
    return run_health(state.backfill, state.engine_alive, heartbeat_now(state))


def _throttle_line(bf: dict[str, str]) -> Text:
    """THROTTLED's why: the guard, its measured value against the threshold, time throttled."""
    t = Text()
    reason = bf.get("throttle_reason", "")
    value, limit = bf.get("throttle_value", ""), bf.get("throttle_limit", "")
    t.append(reason or "throttled", style="bold yellow")
    if value or limit:
        t.append(f"  {value or '?'} vs limit {limit or '?'}", style="yellow")
    if bf.get("throttled_s"):
        with contextlib.suppress(ValueError):
            t.append(f"  throttled {fmt.duration(float(bf['throttled_s']))} in all")
    return t


class BackfillPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        bf = state.backfill
        health = backfill_health(state)
        if health.health == "none":
            self.update_body(Text("no backfill has run\n[b] start one", style="dim"))
            return
        scanned = int(bf.get("scanned", 0) or 0)
        total = state.census.old if state.census and state.census.old else 0
        status = bf.get("status", "?")
        head = Text()
        label = status if health.health in ("finished",) else health.health
        head.append(f" {label.upper()} ", style=HEALTH_STYLE.get(health.health, "bold"))
        head.append(f" run {bf.get('run_id', '?')}")
        head.append("  engine alive" if state.engine_alive else "  engine not running",
                    style="green" if state.engine_alive else "dim")
        parts: list[RenderableType] = [head]
        if health.health == "throttled":
            parts.append(_throttle_line(bf))
        elif health.health in ("dead", "stalled") or (not health.live and health.detail
                                                       and health.health != "finished"):
            parts.append(Text(health.detail, style="bold red" if health.dead else "yellow"))
        completed = total if health.health == "finished" else min(scanned, total)
        bar = Table.grid(expand=True, padding=(0, 1))
        bar.add_column(ratio=1)
        bar.add_column(no_wrap=True, justify="right")
        if health.live:
            rate = float(bf.get("rate", 0) or 0)
            eta = f"  ETA {fmt.duration((total - scanned) / rate)}" \
                if rate > 0 and total > scanned else ""
            right = Text(f"{rate:,.0f} keys/s{eta}")
        else:  # a finished, dead or stalled run has no rate and no ETA
            right = Text("done" if health.health == "finished" else "no rate", style="dim")
        bar.add_row(ProgressBar(total=max(total, 1), completed=completed), right)
        parts.append(bar)
        parts.append(Text(
            f"scanned {scanned:,}  migrated {int(bf.get('migrated', 0) or 0):,}\n"
            f"exists {bf.get('skipped_exists', 0)}  indexed {bf.get('indexed', 0)}  "
            f"healed {bf.get('healed', 0)}\n"
            f"invalid {bf.get('skipped_invalid', 0)}  filtered {bf.get('skipped_filtered', 0)}  "
            f"errors {bf.get('errors', 0)}\n"
            f"owner {bf.get('owner', '-')}  heartbeat "
            f"{fmt.ago(float(bf.get('heartbeat', 0) or 0), heartbeat_now(state))}"))
        lanes = sorted((f for f in bf if f.startswith("cursor:")),
                       key=lambda f: int(f.partition(":")[2] or 0))
        if lanes:
            lane = Text("\nshards ", style="dim")
            for name in lanes:
                shard = name.partition(":")[2]
                done = bf.get(f"done:{shard}") == "1"
                lane.append(f" {shard}:{'done' if done else 'copying'}",
                            style="green" if done else "cyan")
            parts.append(lane)
        self.update_body(Group(*parts))


class FlagsPanel(Panel):
    def show(self, state: ConsoleState) -> None:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("flag", no_wrap=True, min_width=18)
        table.add_column("value", no_wrap=True, min_width=5)
        table.add_column("changed", no_wrap=True, overflow="ellipsis")
        table.add_column("fleet", no_wrap=True, overflow="ellipsis")
        for row in state.flags:
            value = Text("on" if row.value else "off",
                         style="bold green" if row.value else "bold")
            changed = Text(f"{row.actor} {fmt.ago(row.ts, state.ts)}") if row.actor else Text(
                "default" if row.stored is None else "-", style="dim")
            fleet = f"{row.agree}/{state.instances}"
            if row.pinned:
                fleet += " pinned: " + ",".join(row.pinned)
            style = "" if row.agree == state.instances else "bold yellow"
            table.add_row(row.name, value, changed, Text(fleet, style=style))
        self.update_body(table)


class KeyspacePanel(Panel):
    def show(self, state: ConsoleState) -> None:
        t = Text()
        c = state.census
        if c is None:
            t.append("no census yet  [u] run one\n", style="dim")
        else:
            t.append(f"old {c.old:,}  new {c.new:,}  index {c.index_entries:,}\n")
            t.append(f"census {fmt.ago(c.ts, state.ts)}\n", style="dim")
        m = state.memory
        if m:
            used = m.get("used", 0) / 2**20
            cap = m.get("maxmemory", 0)
            cap_txt = f"{cap / 2**20:,.0f} MiB" if cap else "no maxmemory"
            t.append(f"memory {used:,.1f} MiB / {cap_txt}\n")
            t.append(f"evictions {m.get('evicted', 0)}",
                     style="bold red" if m.get("evicted") else "")
        v = state.verify
        if v:
            t.append(f"\nverify {'CLEAN' if v['clean'] else 'DIFFERS'}",
                     style="bold green" if v["clean"] else "bold red")
            t.append(f" ({v['checked']:,} checked, {fmt.ago(v['ts'], state.ts)})")
        self.update_body(t)


class RowTable(DataTable):
    """A panel's row table: j/k move the cursor as the arrows do; Enter opens the row."""

    BINDINGS = [Binding("j", "cursor_down", "Down", show=False),
                Binding("k", "cursor_up", "Up", show=False),
                Binding("g", "scroll_top", "Top", show=False),
                Binding("G", "scroll_bottom", "Bottom", show=False)]


def fit(total: int, fixed: list[int], flexible: int, minimum: int = 6) -> list[int]:
    """Share what the fixed columns leave among `flexible` columns (each >= minimum)."""
    rest = max(total - sum(fixed) - 2 * (len(fixed) + flexible), minimum * flexible)
    return [rest // flexible] * flexible


class TablePanel(Panel):
    """A panel whose body is a RowTable; the full rows are kept for Enter and zoom."""

    can_focus = False  # the table inside takes the focus
    columns: tuple[str, ...] = ()
    MAX_ROWS = 200

    def compose(self) -> ComposeResult:
        table = RowTable(id=f"{self.id}-table", cursor_type="row", zebra_stripes=False,
                         show_cursor=True)
        table.styles.height = "auto"
        yield table
        yield Static(id=f"{self.id}-body", classes="body")

    @property
    def table(self) -> RowTable:
        return self.query_one(RowTable)

    def widths(self, width: int) -> list[int]:
        raise NotImplementedError

    def fill(self, rows: list[tuple[list[Text | str], str]], footer: RenderableType) -> None:
        """rows: (cells, full text for Enter)."""
        table = self.table
        cursor = table.cursor_row
        width = max((self.content_size.width or self.size.width or 80) - 1, 20)
        widths = self.widths(width)
        table.clear(columns=True)
        for name, w in zip(self.columns, widths, strict=False):
            table.add_column(name, width=w, key=name)
        self.rows_text = []
        for cells, full in rows[: self.MAX_ROWS]:
            table.add_row(*[c if isinstance(c, Text) else Text(clip(c, w), no_wrap=True)
                            for c, w in zip(cells, widths, strict=False)])
            self.rows_text.append(full)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1), animate=False)
        self.update_body(footer)

    def row_text(self) -> str | None:
        rows = getattr(self, "rows_text", [])
        row = self.table.cursor_row
        return rows[row] if 0 <= row < len(rows) else None


class GatesPanel(TablePanel):
    columns = ("status", "gate", "value", "threshold", "detail")

    def widths(self, width: int) -> list[int]:
        # status and gate never shrink: at 80 columns PASS/FAIL and the name stay readable
        gate, value = 22, 16
        threshold, detail = fit(width, [7, gate, value], 2)
        return [7, gate, value, threshold, detail]

    def show(self, state: ConsoleState) -> None:
        rows: list[tuple[list[Text | str], str]] = []
        for g in state.gates:
            full = (f"{g.gate} ({g.title}): {g.status}\nvalue: {g.value}\nthreshold: "
                    f"{g.threshold}\ndetail: {g.detail or '-'}\nwindow: {gate_window(state)}")
            rows.append(([Text(g.status, style=STATUS_STYLE[g.status]), g.gate, g.value,
                          g.threshold, Text(clip(g.detail, 200), style="dim", no_wrap=True)],
                         full))
        self.state_gates = list(state.gates)
        firing = [g for g in state.triggers if g.status == "FAIL"]
        footer = Text(f"metric gates count {gate_window(state)}", style="dim")
        if firing:
            footer.append("\n")
            footer.append("ROLLBACK TRIGGER FIRING: " + ", ".join(g.gate for g in firing),
                          style="bold white on red")
        self.fill(rows, footer)

    def zoomed(self, state: ConsoleState) -> RenderableType:
        return gate_table(state.gates, state)


def gate_table(gates: list[GateResult], state: ConsoleState) -> Table:
    table = Table(box=None, expand=True, padding=(0, 1), title=f"gates ({gate_window(state)})",
                  title_justify="left")
    table.add_column("status", no_wrap=True, min_width=7)
    table.add_column("gate", no_wrap=True)
    table.add_column("value")
    table.add_column("threshold")
    table.add_column("detail")
    for g in gates:
        table.add_row(Text(g.status, style=STATUS_STYLE[g.status]), g.gate, g.value,
                      g.threshold, g.detail)
    return table


class AuditPanel(TablePanel):
    columns = ("when (UTC)", "actor", "action", "target", "change", "reason")
    filter_text = ""

    def widths(self, width: int) -> list[int]:
        # when, actor and action keep their width whatever a JSON change holds
        when, actor, action = 20, 12, 17
        return [when, actor, action, *fit(width, [when, actor, action], 3)]

    def show(self, state: ConsoleState) -> None:
        rows: list[tuple[list[Text | str], str]] = []
        needle = self.filter_text.lower()
        for e in state.audit:
            change = f"{e.before} -> {e.after}" if (e.before or e.after) else ""
            cells = [fmt.iso(e.ts), e.actor, e.action, e.target, change, e.reason]
            if needle and not any(needle in str(c).lower() for c in cells):
                continue
            full = "\n".join(f"{n}: {v}" for n, v in zip(
                ("when", "actor", "action", "target", "change", "reason"), cells, strict=False))
            rows.append((list(cells), full))
        footer = Text(f"filter: {self.filter_text}  (/ to change, empty clears)"
                      if self.filter_text else "", style="yellow")
        self.fill(rows, footer)

    def zoomed(self, state: ConsoleState) -> RenderableType:
        table = Table(box=None, expand=True, padding=(0, 1))
        for name in self.columns:
            table.add_column(name, no_wrap=name in ("when (UTC)", "actor", "action"))
        for e in state.audit:
            change = f"{e.before} -> {e.after}" if (e.before or e.after) else ""
            table.add_row(fmt.iso(e.ts), e.actor, e.action, e.target, change, e.reason)
        return table


class Tick(Checkbox):
    """A checkbox whose state reads without colour: ✓ when on, blank when off (Textual's
    draws an X either way and only recolours it)."""

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "✓" if self.value else " "
        return super()._button
