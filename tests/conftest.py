"""Fixtures: a private redis-server on a free loopback port, a clean database per test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
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
        return redis.Redis(port=self.port, socket_connect_timeout=0.2)

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


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The private server's URL, flushed before the test so every test starts empty."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    yield redis_server.url


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
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
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
