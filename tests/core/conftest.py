"""Fixtures of the job store invariant suite (SPEC §3), all against the private redis-server.

- `combo`: a test that takes it runs once per flag combination (all eight).
- `make_store`: JobStore factory (background=False, pins={} unless told), closed at teardown.
- `monitor`: `with monitor() as rec:` records every command the server executes meanwhile.
- `commandstats`: per-command call counts from INFO commandstats (take deltas).
- `counting_client`: a client whose connection counts round trips (send_packed_command).
- `raw`: a bytes client (for DUMP snapshots).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest
import redis
from jobstore_kit import ALL_COMBOS, Recording, RoundTrips

from relayctl.core.jobs import JobStore
from relayctl.core.metrics import Metrics


def _parametrized_explicitly(metafunc: pytest.Metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking `combo` runs under all eight flag combinations unless it narrows them."""
    if "combo" in metafunc.fixturenames and not _parametrized_explicitly(metafunc, "combo"):
        metafunc.parametrize("combo", ALL_COMBOS, ids=[c.id for c in ALL_COMBOS])


@pytest.fixture
def make_store(r: redis.Redis) -> Iterator[Callable[..., JobStore]]:
    stores: list[JobStore] = []

    def factory(client: redis.Redis | None = None, **kwargs) -> JobStore:
        kwargs.setdefault("background", False)
        kwargs.setdefault("pins", {})
        kwargs.setdefault("metrics", Metrics(labelled_workspaces=["ws-a", "ws-b"]))
        made = JobStore(client if client is not None else r, **kwargs)
        stores.append(made)
        return made

    yield factory
    for made in stores:
        made.close()


@pytest.fixture
def store(make_store: Callable[..., JobStore]) -> JobStore:
    """A foreground store on `r` with its own metrics registry."""
    return make_store()


_STOP = "__pytest_monitor_stop__"


@pytest.fixture
def monitor(redis_url: str) -> Callable[[], contextlib.AbstractContextManager[Recording]]:
    @contextlib.contextmanager
    def record() -> Iterator[Recording]:
        rec = Recording()
        stopper = redis.Redis.from_url(redis_url)
        stopper.ping()  # connect (and handshake) before recording starts
        watcher = redis.Redis.from_url(redis_url, decode_responses=True)
        mon = watcher.monitor()
        mon.__enter__()  # sends MONITOR and waits for OK: recording is live from here on
        done = threading.Event()

        def pump() -> None:
            try:
                while True:
                    cmd = mon.next_command()["command"]
                    if _STOP in cmd:
                        break
                    rec.commands.append(cmd)
            finally:
                done.set()

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            yield rec
        finally:
            stopper.echo(_STOP)
            stopper.close()
            finished = done.wait(10)
            thread.join(5)
            mon.__exit__(None, None, None)
            watcher.close()
            assert finished, "MONITOR reader did not see the stop marker"

    return record


@pytest.fixture
def commandstats(r: redis.Redis) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        info = r.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    return read


@pytest.fixture
def counting_client(redis_url: str) -> Iterator[tuple[redis.Redis, RoundTrips]]:
    trips = RoundTrips()

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command, check_health=True):
            trips.sends.append(command)
            return super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(
        redis_url, decode_responses=True, connection_class=CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    yield client, trips
    client.close()
    pool.disconnect()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
