"""Fixtures of the job store invariant suite (SPEC §3), against the private redis-server and,
in modules marked `backends("standalone", "cluster")`, the session's real Redis Cluster too.

- `backend`: "standalone" or "cluster"; `r`, `raw`, `store`, `make_store` and `new_client`
  talk to that backend. A test of such a module that needs one server (MONITOR, INFO
  commandstats, the round-trip counting client, ACL users, killing the server) is marked
  `standalone_only(reason)`; the single-server fixtures refuse to run on the cluster.
- `schema`: the key templates. Tests marked `tagged_layout` also run on the cluster with the
  hash-tagged templates (`TAGGED`: new record, index and idempotency key in one slot).
- `combo`: a test that takes it runs once per flag combination (all eight).
- `make_store`: JobStore factory (background=False, pins={} unless told), closed at teardown.
- `monitor`: `with monitor() as rec:` records every command the server executes meanwhile.
- `commandstats`: per-command call counts from INFO commandstats (take deltas).
- `counting_client`: a client whose connection counts round trips (send_packed_command).
- `raw`: a bytes client (for DUMP snapshots).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator

import pytest
import redis
from jobstore_kit import ALL_COMBOS, LAYOUTS, Recording, RoundTrips, monitored
from redis.cluster import RedisCluster

from relayctl.core.connection import connect
from relayctl.core.jobs import JobStore
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from tests.conftest import REQUIRE_REDIS, RedisServer, free_port

BACKENDS = ("standalone", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run the module's tests on these job-store backends "
        "(standalone, cluster); without it, standalone only")
    config.addinivalue_line(
        "markers", "standalone_only(reason): needs one redis-server (says why); never run on "
        "the cluster")
    config.addinivalue_line(
        "markers", "tagged_layout: also run on the cluster with hash-tagged key templates")


def _parametrized_explicitly(metafunc: pytest.Metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if name in names:
            return True
    return False


def _backends(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    """The backends a test runs on: its module's `backends` marker, unless standalone_only."""
    marks = list(metafunc.definition.iter_markers("backends"))
    chosen = tuple(marks[0].args) if marks else ("standalone",)
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown backends {sorted(unknown)}: expected {BACKENDS}")
    only = metafunc.definition.get_closest_marker("standalone_only")
    if only is not None:
        if not only.args or not str(only.args[0]).strip():
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: standalone_only needs a reason")
        chosen = tuple(b for b in chosen if b == "standalone")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking `combo` runs under all eight flag combinations unless it narrows them;
    a test of a module marked with several backends runs on each (see the module doc)."""
    if "combo" in metafunc.fixturenames and not _parametrized_explicitly(metafunc, "combo"):
        metafunc.parametrize("combo", ALL_COMBOS, ids=[c.id for c in ALL_COMBOS])
    if "backend" not in metafunc.fixturenames:
        return
    marked = any(True for _ in metafunc.definition.iter_markers("backends"))
    if not marked:
        return  # other modules keep their ids and their standalone server
    cases = [(b, "default") for b in _backends(metafunc)]
    if "cluster" in dict(cases) and metafunc.definition.get_closest_marker("tagged_layout"):
        cases.append(("cluster", "tagged"))
    ids = [b if lay == "default" else f"{b}-{lay}" for b, lay in cases]
    if "layout" in metafunc.fixturenames:
        metafunc.parametrize(("backend", "layout"), cases, ids=ids, indirect=True)
    else:
        metafunc.parametrize("backend", [b for b, _ in cases], ids=ids, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "standalone")


@pytest.fixture
def layout(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "default")


@pytest.fixture
def schema(layout: str) -> KeySchema:
    """The key templates of this run (the seed's defaults unless `tagged_layout`)."""
    return LAYOUTS[layout]


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, backend: str, engine: str) -> str:
    """URL of the test's backend, flushed first (every primary on the cluster); standalone runs
    on the test's `engine` (cluster variants of other engines are deselected)."""
    return request.getfixturevalue("cluster_url" if backend == "cluster" else "redis_url")


@pytest.fixture
def new_client(backend: str, backend_url: str) -> Iterator[Callable[..., redis.Redis]]:
    """Factory of fresh clients of the backend (decoding unless told), closed at teardown."""
    made: list[redis.Redis] = []

    def factory(decode_responses: bool = True) -> redis.Redis:
        if backend == "cluster":
            client = connect(backend_url, decode_responses=decode_responses)
            assert isinstance(client, RedisCluster), type(client)
        else:
            client = redis.Redis.from_url(backend_url, decode_responses=decode_responses)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


@pytest.fixture
def r(new_client: Callable[..., redis.Redis]) -> redis.Redis:
    """A decoding client of the backend: a RedisCluster for the cluster variant."""
    return new_client()


def _standalone_only(backend: str, what: str) -> None:
    if backend != "standalone":
        pytest.fail(f"{what} needs one redis-server: mark the test standalone_only(reason)")


@pytest.fixture
def make_store(r: redis.Redis, schema: KeySchema) -> Iterator[Callable[..., JobStore]]:
    stores: list[JobStore] = []

    def factory(client: redis.Redis | None = None, **kwargs) -> JobStore:
        kwargs.setdefault("schema", schema)
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


@pytest.fixture
def monitor(backend: str, redis_url: str
            ) -> Callable[[], contextlib.AbstractContextManager[Recording]]:
    _standalone_only(backend, "MONITOR recording")

    @contextlib.contextmanager
    def record() -> Iterator[Recording]:
        rec = Recording()
        with monitored(lambda **kw: redis.Redis.from_url(redis_url, **kw),
                       lambda cmd: rec.commands.append(cmd["command"])):
            yield rec

    return record


@pytest.fixture
def commandstats(backend: str, r: redis.Redis) -> Callable[[], dict[str, int]]:
    _standalone_only(backend, "INFO commandstats")

    def read() -> dict[str, int]:
        info = r.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    return read


@pytest.fixture
def counting_client(backend: str, redis_url: str) -> Iterator[tuple[redis.Redis, RoundTrips]]:
    _standalone_only(backend, "the round-trip counting client")
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
def raw(new_client: Callable[..., redis.Redis]) -> redis.Redis:
    return new_client(decode_responses=False)


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers with production options (maxmemory, a policy,
    --replicaof ...) on free ports; every one is killed (and continued first, if a test
    SIGSTOPped it) at teardown."""
    import os
    import signal

    binary = shutil.which("redis-server")
    if binary is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not on PATH and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH")
    started: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        server = RedisServer(binary=binary, port=free_port(),
                             workdir=tmp_path_factory.mktemp("redis-guard"), extra=extra)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGCONT)
            server.stop(kill=True)
