"""Redis or a /metrics endpoint going away never crashes the console: panels keep their last
values marked stale, the header says DOWN / RECONNECTING / STALE, and it recovers by itself
when the source comes back (same port, same app, no restart)."""

from __future__ import annotations

import itertools
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from textual.pilot import Pilot

from relayctl.core.flags import PREFERS_NEW, set_flag
from relayctl.tui.app import MAX_BACKOFF, StateUpdated
from tests.conftest import RedisServer, free_port
from tests.tui.kit import (
    disconnected_state,
    fixed_app,
    live_app,
    mid_backfill_state,
    run_pilot,
    wait_connected,
    wait_until,
)

REDIS_PANELS = ("backfill", "flags", "keyspace", "gates", "audit")
METRICS_PANELS = ("read", "list", "dual")


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, so it can be stopped and started again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(binary=binary, port=free_port(), workdir=tmp_path)
    server.start()
    yield server
    server.stop()


def header(pilot: Pilot) -> str:
    return str(pilot.app.screen.query_one("#header").render())


def stale(pilot: Pilot, panel_ids: tuple[str, ...]) -> list[str]:
    return [p for p in panel_ids if pilot.app.screen.query_one(f"#{p}").has_class("stale")]


def test_redis_stopped_under_the_console_shows_down_then_recovers_on_restart(own_redis):
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    set_flag(client, PREFERS_NEW, True, actor="sre-bob", reason="phase 1")
    client.close()
    app = live_app(own_redis.url, refresh_s=0.5)

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: "CONNECTED" in header(pilot), "the CONNECTED badge")
        assert stale(pilot, REDIS_PANELS) == []
        flags_before = [(f.name, f.value, f.actor) for f in pilot.app.state.flags]
        assert (PREFERS_NEW, True, "sre-bob") in flags_before

        own_redis.stop()
        await wait_until(pilot, lambda: ("DOWN" in header(pilot)
                                         or "RECONNECTING" in header(pilot)),
                         "the header to show the outage", timeout=8)
        await wait_until(pilot, lambda: stale(pilot, REDIS_PANELS) == list(REDIS_PANELS),
                         "every Redis panel marked stale", timeout=2)
        assert pilot.app.state.redis_error, "the cause is kept"
        # the last values stay on screen
        assert [(f.name, f.value, f.actor) for f in pilot.app.state.flags] == flags_before
        await pilot.pause(1.0)  # a few more failing ticks: still running, still stale
        assert pilot.app.is_running and pilot.app.return_code is None
        assert stale(pilot, REDIS_PANELS) == list(REDIS_PANELS)

        own_redis.start()  # same port, empty dataset (no persistence)
        await wait_until(pilot, lambda: "CONNECTED" in header(pilot),
                         "recovery without a restart", timeout=20)
        await wait_until(pilot, lambda: stale(pilot, REDIS_PANELS) == [], "fresh panels", 2)
        # it reads the new server: the restarted one has no flags stored
        assert all(f.actor == "" for f in pilot.app.state.flags)

    run_pilot(app, scenario, timeout=60)


def test_while_redis_is_down_the_header_counts_down_to_the_next_retry(own_redis):
    """Defect 10: reconnecting took ~10 s with no countdown; the header says when it retries,
    the number falls second by second, and the backoff never exceeds its cap."""
    app = live_app(own_redis.url, refresh_s=0.5)
    seen: list[int] = []

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        own_redis.stop()
        await wait_until(pilot, lambda: "retry" in header(pilot), "the countdown", timeout=8)
        for _ in range(40):  # 10 s of header redraws
            found = re.search(r"retry (\d+)s", header(pilot))
            if found:
                seen.append(int(found.group(1)))
            await pilot.pause(0.25)
        own_redis.start()
        await wait_until(pilot, lambda: "CONNECTED" in header(pilot), "recovery", timeout=20)
        assert "retry" not in header(pilot)

    run_pilot(app, scenario, timeout=60)
    assert seen and max(seen) <= MAX_BACKOFF
    assert any(later < earlier for earlier, later in itertools.pairwise(seen)), seen
    assert len(set(seen)) >= 3, seen


class _Metrics(BaseHTTPRequestHandler):
    body = (b"# TYPE relay_job_read_path_total counter\n"
            b'relay_job_read_path_total{path="new"} 900\n'
            b'relay_job_read_path_total{path="old"} 100\n')

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def serve_metrics(port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_metrics_endpoint_going_away_turns_the_badge_stale_and_the_console_keeps_running(
        redis_url):
    metrics = serve_metrics()
    port = metrics.server_address[1]
    url = f"http://127.0.0.1:{port}/metrics"
    app = live_app(redis_url, refresh_s=0.5, metrics_urls=[url])

    async def scenario(pilot: Pilot) -> None:
        nonlocal metrics
        await wait_connected(pilot)
        await wait_until(pilot, lambda: pilot.app.state.metrics_status == "OK", "metrics OK")
        await wait_until(pilot, lambda: " OK " in header(pilot), "the OK badge")
        assert stale(pilot, METRICS_PANELS) == []

        metrics.shutdown()
        metrics.server_close()
        await wait_until(pilot, lambda: " STALE " in header(pilot), "the STALE badge", 8)
        assert pilot.app.state.metrics_error
        await wait_until(pilot, lambda: stale(pilot, METRICS_PANELS) == list(METRICS_PANELS),
                         "the metrics panels marked stale", timeout=2)
        assert pilot.app.state.redis_status == "CONNECTED", "Redis is unaffected"
        assert stale(pilot, REDIS_PANELS) == []
        await pilot.pause(1.0)
        assert pilot.app.is_running and pilot.app.return_code is None

        metrics = serve_metrics(port)  # back on the same port
        await wait_until(pilot, lambda: " OK " in header(pilot), "metrics back", 10)
        await wait_until(pilot, lambda: stale(pilot, METRICS_PANELS) == [], "fresh panels", 2)

    try:
        run_pilot(app, scenario, timeout=60)
    finally:
        metrics.shutdown()
        metrics.server_close()


def test_a_refresh_landing_after_quit_does_not_raise():
    """A fetch still in flight when the operator quits posts its state after the last screen
    is gone: that must not end the console with a traceback."""
    app = fixed_app(mid_backfill_state())

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause()

    run_pilot(app, scenario)
    assert not app._screen_stack
    app.on_state_updated(StateUpdated(disconnected_state("DOWN")))  # raised ScreenStackError
    assert app.state.redis_status == "DOWN"
