"""The console and the CLI drive the same backfill: an engine started from the console (its own
process) is what `relayctl backfill status` reports and what `relayctl backfill pause` pauses,
and an engine started from a shell is paused from the console.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Checkbox, Input

from relayctl.core.backfill import (
    EXIT_STOPPED,
    BackfillOptions,
    read_state,
    send_control,
    spawn_engine,
)
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.keys import AUDIT_KEY
from relayctl.tui.screens import BackfillForm
from relayctl.tui.widgets import BackfillPanel
from tests.conftest import wait_for
from tests.tui.kit import (
    ACTOR,
    CLI_ACTOR,
    audit_entries,
    cli_status,
    confirm_with_reason,
    engine_pid_from_audit,
    is_engine,
    live_app,
    relayctl,
    rendered_text,
    run_pilot,
    seed_legacy,
    spawn_cli_engine,
    type_text,
    wait_connected,
    wait_refreshed,
    wait_until,
)

JOBS = 20_000


async def fill(pilot: Pilot, selector: str, text: str) -> None:
    """Click a field, clear it, type."""
    await pilot.click(selector)
    await pilot.press("end", "ctrl+u")
    await type_text(pilot, text)
    assert pilot.app.screen.query_one(selector, Input).value == text


def panel_text(pilot: Pilot) -> str:
    return rendered_text(pilot.app.screen.query_one(BackfillPanel).body.content)


def test_backfill_form_cancelled_starts_nothing(redis_url, r):
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await pilot.press("b")
        screen = pilot.app.screen
        assert isinstance(screen, BackfillForm)
        assert screen.focused is not None and screen.focused.id == "execute"
        await fill(pilot, "#reason", "nope")
        await pilot.click("#cancel")
        await pilot.pause(0.6)
        assert not isinstance(pilot.app.screen, BackfillForm)

    run_pilot(app, scenario)
    assert r.xlen(AUDIT_KEY) == 0 and read_state(r) == {} and r.get("relay:backfill:lease") is None


def test_backfill_started_from_the_console_shows_in_cli_status_and_pauses_from_the_cli(
        redis_url, r, engine_pids):
    seed_legacy(r, JOBS)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await pilot.press("b")
        screen = pilot.app.screen
        assert isinstance(screen, BackfillForm)
        await pilot.click("#execute")
        assert screen.query_one("#execute", Checkbox).value is True
        await fill(pilot, "#rps", "2000")
        await fill(pilot, "#batch", "100")
        await fill(pilot, "#reason", "week 4")
        await pilot.click("#confirm")
        pid = await wait_until(pilot, lambda: engine_pid_from_audit(r), "the spawn", 10)
        engine_pids.append(pid)
        start = [e for e in audit_entries(r) if e["action"] == "backfill.start"]
        assert [(e["actor"], e["reason"]) for e in start] == [(ACTOR, "week 4")]
        # audited by the engine itself once it held the lease, with the console's actor
        assert start[0]["after"] == f"pid {pid} execute (run {read_state(r)['run_id']})"
        await wait_until(pilot, lambda: int(read_state(r).get("scanned", 0)) >= 300,
                         "progress", timeout=20)

        # `relayctl backfill status --json` sees the console's engine
        code, data = cli_status(redis_url)
        assert code == 0, data
        assert data["engine_alive"] is True
        assert data["state"]["status"] == "running" and data["state"]["mode"] == "execute"
        assert data["state"]["owner"].endswith(f":{pid}")

        # `relayctl backfill pause` pauses it; the console shows it after a refresh
        out = relayctl(redis_url, "backfill", "pause", "--reason", "peak from the cli")
        assert out.returncode == 0, out.stderr
        await wait_until(pilot, lambda: read_state(r).get("status") == "paused", "paused", 10)
        await wait_refreshed(pilot)
        assert pilot.app.state.backfill["status"] == "paused"
        assert "PAUSED" in panel_text(pilot)
        code, data = cli_status(redis_url)
        assert code == EXIT_STOPPED and data["state"]["status"] == "paused"
        assert is_engine(pid), "a paused engine keeps running (and its lease)"
        pause = [e for e in audit_entries(r) if e["action"] == "backfill.pause"]
        assert [(e["actor"], e["reason"]) for e in pause] == [(CLI_ACTOR, "peak from the cli")]

    run_pilot(app, scenario)
    pid = engine_pids[0]
    assert is_engine(pid), "the engine outlives the console"
    out = relayctl(redis_url, "backfill", "stop", "--reason", "test over")
    assert out.returncode == 0, out.stderr
    wait_gone(pid)


def wait_gone(pid: int, timeout: float = 15) -> None:
    import time

    deadline = time.monotonic() + timeout
    while is_engine(pid):
        assert time.monotonic() < deadline, f"engine {pid} did not exit"
        time.sleep(0.05)


def test_backfill_started_from_the_cli_is_paused_from_the_console(redis_url, r, engine_pids):
    seed_legacy(r, JOBS)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    engine = spawn_cli_engine(redis_url, "--execute", "--rps", "2000", "--batch", "100")
    engine_pids.append(engine.pid)
    app = live_app(redis_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: pilot.app.state.engine_alive
                         and pilot.app.state.backfill.get("status") == "running",
                         "the console to see the CLI's engine", timeout=15)
        await pilot.press("P")
        await confirm_with_reason(pilot, "from tui")
        await wait_until(pilot, lambda: read_state(r).get("status") == "paused", "paused", 10)
        code, data = cli_status(redis_url)
        assert code == EXIT_STOPPED
        assert data["state"]["status"] == "paused" and data["engine_alive"] is True
        await wait_refreshed(pilot)
        assert "PAUSED" in panel_text(pilot)
        pause = [e for e in audit_entries(r) if e["action"] == "backfill.pause"]
        assert [(e["actor"], e["reason"]) for e in pause] == [(ACTOR, "from tui")]

    try:
        run_pilot(app, scenario)
        assert engine.poll() is None, "paused, not ended"
    finally:
        send_control(r, "stop", actor="pytest", reason="test over")
    assert engine.wait(timeout=15) == EXIT_STOPPED


def test_on_a_cluster_the_console_starts_a_backfill_with_the_workers_it_was_given(
        cluster_url, engine_pids):
    import random

    from relayctl.core.connection import connect
    from relayctl.core.demo import legacy_record
    from relayctl.core.jobs import seed_legacy as seed_records
    from relayctl.core.keys import KeySchema

    rc = connect(cluster_url)
    rng = random.Random(4)
    seed_records(rc, KeySchema(), (legacy_record(rng, f"ws-{i % 3}", f"c{i:05d}", 1.7e9 + i)
                                   for i in range(3000)))
    set_flag(rc, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    app = live_app(cluster_url)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await pilot.press("b")
        assert isinstance(pilot.app.screen, BackfillForm)
        await pilot.click("#execute")
        await fill(pilot, "#workers", "3")
        await fill(pilot, "#reason", "cluster week 4")
        await pilot.click("#confirm")
        pid = await wait_until(pilot, lambda: engine_pid_from_audit(rc), "the spawn", 10)
        engine_pids.append(pid)
        await wait_until(pilot, lambda: read_state(rc).get("status") == "completed",
                         "the engine to finish", timeout=30)
        await wait_refreshed(pilot)
        assert "COMPLETED" in panel_text(pilot)

    run_pilot(app, scenario)
    state = read_state(rc)
    assert state["workers"] == "3" and state["migrated"] == "3000"
    assert {state[f"done:{n}"] for n in ("0", "5461", "10923")} == {"1"}
    rc.close()


def test_the_console_spawn_forwards_every_option_and_the_config_to_the_engine(
        redis_url, r, tmp_path, engine_pids):
    seed_legacy(r, JOBS)
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="backfill needs dual-write")
    config = tmp_path / "relayctl.toml"
    config.write_text('[workspaces]\nlabelled = ["ws-a"]\n')
    options = BackfillOptions(execute=True, workspaces=("ws-a",), rps=500.0, batch=100,
                              max_keys=15_000, fresh=True, max_latency_ms=250.0, force=True,
                              retry_for_s=7.0, workers=2)
    pid = spawn_engine(redis_url, options, actor=ACTOR, reason="forwarding", client=r,
                       config_path=str(config))
    engine_pids.append(pid)
    wait_for(lambda: read_state(r).get("status") == "running", 20, "the engine to run")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    expected = [("--config", str(config)), ("--actor", ACTOR), ("--batch", "100"),
                ("--rps", "500.0"), ("--workers", "2"), ("--retry-for", "7.0"),
                ("--workspace", "ws-a"), ("--max-keys", "15000"), ("--max-latency-ms", "250.0")]
    for option, value in expected:
        assert argv[argv.index(option) + 1] == value, (option, argv)
    assert {"--execute", "--fresh", "--force"} <= set(argv), argv
    assert redis_url not in " ".join(argv), "the URL travels in the environment"
    state = read_state(r)
    assert (state["workspaces"], state["workers"]) == ("ws-a", "2"), state
    send_control(r, "stop", actor="pytest", reason="done")
    wait_for(lambda: not is_engine(pid), 20, "the engine to stop")
