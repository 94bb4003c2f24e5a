"""The embedded default: a fakeredis TCP server on loopback with pre-migration data."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from relayctl.core.jobs import JOB_FIELDS, iso_now, iso_to_ms
from relayctl.core.keys import DEMO_CLOCK_KEY, KeySchema
from relayctl.core.replies import as_str_dict, fields


@dataclass
class EmbeddedRedis:
    """fakeredis served over TCP on 127.0.0.1, so every component uses a real connection."""

    host: str
    port: int
    _server: object
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def close(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]



class _PollSelect:
    """select() by poll() for the embedded server's handler: select() refuses descriptors
    past FD_SETSIZE (1024), which a long-lived process with many connections reaches."""

    @staticmethod
    def select(rlist: list[Any], _w: list[Any], _x: list[Any],
               timeout: float) -> tuple[list[Any], list[Any], list[Any]]:
        import select as _select

        poller = _select.poll()
        for sock in rlist:
            poller.register(sock, _select.POLLIN | _select.POLLHUP | _select.POLLERR)
        ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        return [s for s in rlist if s.fileno() in ready], [], []

def _keepalive_handler() -> type:
    """fakeredis' TCP handler closes the connection after any error reply; real Redis keeps
    it open (and redis-py relies on that, e.g. SCRIPT LOAD after NOSCRIPT on one connection).
    This handler sends the error reply and keeps serving."""
    from fakeredis._clients import _tcp_server
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler

    _tcp_server.select = _PollSelect  # type: ignore[assignment,attr-defined]

    class KeepAliveHandler(TCPFakeRequestHandler):
        def setup(self) -> None:
            super().setup()
            client = self.current_client
            original = client.read_response

            def read_response(*args: object, **kwargs: object) -> object:
                try:
                    return original(*args, **kwargs)
                except redis.ResponseError as exc:
                    return exc

            client.read_response = read_response  # type: ignore[method-assign]

    return KeepAliveHandler


def _support_restore_absttl() -> None:
    """fakeredis' RESTORE knows REPLACE only; `archive restore` sends ABSTTL (the TTL as an
    absolute unix time in ms, Redis >= 5). Teach the embedded server the real semantics:
    a time already past restores nothing and replies OK."""
    from fakeredis._helpers import OK
    from fakeredis._socket._fakesocket import FakeSocket

    original = FakeSocket.restore
    if getattr(original, "_relayctl_absttl", False):
        return

    def restore(self: object, key: object, ttl: int, value: bytes, *args: bytes) -> object:
        rest = [a for a in args if a.upper() != b"ABSTTL"]
        if len(rest) != len(args) and ttl > 0:
            ttl = int(ttl - self._db.time * 1000)  # type: ignore[attr-defined]
            if ttl <= 0:
                return OK
        return original(self, key, ttl, value, *rest)

    restore._relayctl_absttl = True  # type: ignore[attr-defined]
    setattr(FakeSocket, "restore", restore)  # noqa: B010 - patching the command table


BIG_VALUE = 64  # a collection with more elements than this is measured, not sampled


def _estimated_memory(server: object) -> tuple[int, dict[int, tuple[int, int]]]:
    """What real Redis reports as used_memory, estimated (fakeredis keeps no allocator
    figures), and each db's key and expiring-key counts for INFO keyspace.

    The few large collections (the per-workspace indexes, the audit stream) are measured
    whole; the job records are estimated from a fixed-seed sample of 256, so the figure moves
    with the data and not with which keys a sample happened to draw."""
    import pickle

    total = 1 << 20  # a fresh redis-server's baseline
    keyspace: dict[int, tuple[int, int]] = {}
    for number, db in server.dbs.items():  # type: ignore[attr-defined]  # fakeredis internals
        items = list(db._dict.values())
        if not items:
            continue
        keyspace[number] = (len(items), sum(1 for i in items if getattr(i, "expireat", None)))
        small = []
        for item in items:
            value = getattr(item, "value", item)
            try:
                big = not isinstance(value, bytes) and len(value) > BIG_VALUE
            except TypeError:  # a type without a length: sampled with the records
                big = False
            if big:
                total += len(pickle.dumps(value)) + 96
            else:
                small.append(value)
        if small:
            sample = random.Random(0).sample(small, min(256, len(small)))
            size = sum(len(pickle.dumps(v)) + 96 for v in sample)
            total += size * len(small) // len(sample)
    return total, keyspace


def _support_info() -> None:
    """fakeredis has no INFO; the console's memory panel and the `redis_memory` gate need
    `INFO memory` and `INFO stats`. The embedded server answers them (estimated memory, no
    maxmemory, no evictions), so the demo's gates read a value instead of UNKNOWN."""
    from fakeredis._commands import command
    from fakeredis._socket._fakesocket import FakeSocket

    if hasattr(FakeSocket, "_relayctl_info"):
        return

    @command(name="INFO", fixed=(), repeat=(bytes,))
    def _relayctl_info(self: object, *sections: bytes) -> bytes:
        wanted = {s.lower() for s in sections} or {b"default"}
        used, keyspace = _estimated_memory(self._server)  # type: ignore[attr-defined]
        parts: dict[bytes, dict[str, object]] = {
            b"server": {"redis_version": "7.2.0", "redis_mode": "standalone"},
            b"memory": {"used_memory": used, "used_memory_human": f"{used / 2**20:.2f}M",
                        "used_memory_dataset": max(used - (1 << 20), 0),
                        "maxmemory": 0, "maxmemory_policy": "noeviction"},
            b"stats": {"evicted_keys": 0, "expired_keys": 0},
            b"replication": {"role": "master", "connected_slaves": 0},
            b"keyspace": {f"db{n}": f"keys={k},expires={e},avg_ttl=0"
                          for n, (k, e) in sorted(keyspace.items())},
        }
        out = []
        for name, section in parts.items():
            if wanted & {name, b"all", b"default", b"everything"}:
                out.append(f"# {name.decode().title()}")
                out += [f"{k}:{v}" for k, v in section.items()]
        return ("\r\n".join(out) + "\r\n").encode()

    FakeSocket._relayctl_info = _relayctl_info  # type: ignore[attr-defined]


def start_embedded_redis(port: int = 0, host: str = "127.0.0.1") -> EmbeddedRedis:
    from fakeredis import TcpFakeServer

    _support_restore_absttl()
    _support_info()

    server = TcpFakeServer((host, port), server_type="redis", server_version=(7, 2))
    server.RequestHandlerClass = _keepalive_handler()
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="relayctl-fakeredis",
                              daemon=True)
    thread.start()
    return EmbeddedRedis(host=host, port=server.server_address[1], _server=server,
                         _thread=thread)


def legacy_record(rng: random.Random, ws: str, job_id: str, enqueued: float) -> dict[str, str]:
    status = rng.choices(("completed", "failed", "pending", "running"), (80, 8, 7, 5))[0]
    done = status in ("completed", "failed")
    return {
        "job_id": job_id,
        "workspace_id": ws,
        "status": status,
        "action_provider": rng.choice(("openai", "anthropic", "google", "internal")),
        "action_name": rng.choice(("summarize", "draft", "translate", "classify")),
        "params": json.dumps({"prompt_tokens": rng.randint(10, 4000)}),
        "actor_id": f"user-{rng.randint(1, 50)}",
        "result": json.dumps({"tokens": rng.randint(1, 900)}) if status == "completed" else "",
        "error": "provider timeout" if status == "failed" else "",
        "enqueued_at": iso_now(enqueued),
        "started_at": iso_now(enqueued + 1) if status != "pending" else "",
        "finished_at": iso_now(enqueued + 5) if done else "",
    }


@dataclass(frozen=True)
class SeedSummary:
    legacy: int
    in_both: int
    invalid: int
    jobs: list[tuple[str, str]]


def seed_pre_migration(
    client: redis.Redis,
    schema: KeySchema,
    workspaces: list[str],
    jobs: int = 3000,
    recent_share: float = 0.3,
    ttl_share: float = 0.3,
    invalid: int = 5,
    seed: int = 7,
    now: float | None = None,
) -> SeedSummary:
    """Legacy jobs over the last 60 days; the most recent share also in the new schema
    (the seed's Phase 1 dual-write), a third with a TTL, and a few invalid records."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    made: list[tuple[str, str]] = []
    both = 0
    for i in range(jobs):
        ws = rng.choice(workspaces)
        job_id = f"{rng.getrandbits(64):016x}"
        age = (jobs - i) / jobs * 60 * 86400
        record = legacy_record(rng, ws, job_id, now - age)
        old = schema.old_key(job_id)
        pipe.hset(old, mapping=fields(record))
        ttl_ms = rng.randint(3, 30) * 86400 * 1000 if rng.random() < ttl_share else 0
        if ttl_ms:
            pipe.pexpire(old, ttl_ms)
        if i >= jobs * (1 - recent_share):
            new = schema.new_key(ws, job_id)
            pipe.hset(new, mapping=fields(record))
            if ttl_ms:
                pipe.pexpire(new, ttl_ms)
            pipe.zadd(schema.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})
            both += 1
        made.append((ws, job_id))
        if i % 500 == 499:
            pipe.execute()
    bad = 0
    for j in range(invalid):
        key = schema.old_key(f"corrupt-{j}")
        if j % 3 == 0:
            pipe.set(key, "not a hash")
        elif j % 3 == 1:
            pipe.hset(key, mapping={f: "" for f in JOB_FIELDS if f != "workspace_id"})
        else:
            pipe.hset(key, mapping={"job_id": f"corrupt-{j}", "workspace_id": "Bad:WS*"})
        bad += 1
    pipe.execute()
    return SeedSummary(legacy=jobs, in_both=both, invalid=bad, jobs=made)




class ScaledClock:
    """The demo's clock: time runs `speed` x faster than the wall clock from `start` on, so
    the rollout's weeks pass in minutes. Every caller in the demo (console, gates, census,
    verify, advance) reads this one clock."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        self.speed = speed
        self.start = time.time() if start is None else start

    def __call__(self) -> float:
        return self.start + (time.time() - self.start) * self.speed


@dataclass
class DemoStack:
    """The embedded Redis with pre-migration data, the simulator's traffic and its /metrics:
    what `relayctl demo` runs and what the walkthrough test drives."""

    redis: EmbeddedRedis
    metrics_url: str
    clock: ScaledClock
    thresholds: dict[str, float]
    summary: SeedSummary
    rate: float
    workspaces: list[str]
    simulator: object
    _closers: list[object]

    @property
    def url(self) -> str:
        return self.redis.url

    def close(self) -> None:
        for closer in self._closers:  # closing down: each part is closed regardless
            with contextlib.suppress(Exception):
                closer()  # type: ignore[operator]


def start_demo(schema: KeySchema, *, speed: float = 1.0, thresholds: dict[str, float] | None = None,
               redis_port: int = 0, metrics_port: int = 0, jobs: int = 3000,
               rate: float | None = None, seed: int = 1) -> DemoStack:
    """Start the embedded stack. The freshness window (`max_age_s`) is scaled by `speed`, so a
    census taken a real minute ago is as fresh to the gates as it is to the operator; the
    scaled clock is stored in Redis (`relay:demo:clock`) for other processes to read."""
    from relayctl.core.connection import connect
    from relayctl.core.jobs import JobStore
    from relayctl.core.metrics import Metrics
    from relayctl.core.simulate import Simulator, workspace_names

    embedded = start_embedded_redis(redis_port)
    closers: list[object] = [embedded.close]
    try:
        names = workspace_names(5)
        metrics = Metrics(labelled_workspaces=names)
        server = metrics.serve(metrics_port)
        closers.insert(0, server.close)
        client = connect(embedded.url)
        clock = ScaledClock(speed)
        summary = seed_pre_migration(client, schema, names, jobs=jobs, now=clock.start)
        client.hset(DEMO_CLOCK_KEY, mapping=fields({"start": f"{clock.start:.3f}",
                                                    "speed": f"{speed:g}"}))
        store = JobStore(client, schema=schema, metrics=metrics)
        closers.insert(0, store.close)
        ops = rate if rate is not None else 20 * min(speed, 10)
        # the seeded jobs, oldest first: reads favour the newest (the ones already in both
        # schemas), as real traffic reads recent jobs most
        sim = Simulator(store, rate=ops, workspaces=names, seed=seed, known_jobs=summary.jobs)
        sim.start()
        closers.insert(0, sim.stop)
    except BaseException:
        for closer in closers:
            closer()  # type: ignore[operator]
        raise
    merged = scaled_thresholds(dict(thresholds or {}), speed)
    stack = DemoStack(redis=embedded, metrics_url=server.url, clock=clock, thresholds=merged,
                      summary=summary, rate=ops, workspaces=names, simulator=sim,
                      _closers=closers)
    return stack


def scaled_thresholds(thresholds: dict[str, float], speed: float) -> dict[str, float]:
    """The freshness windows on the demo's clock (census and verify `max_age_s`, archive
    delete's `verify_max_age`): a census a real minute old is as fresh to the gates as it is
    to the operator, for the console and a CLI pointed at the demo alike."""
    from relayctl.core.gates import THRESHOLDS

    return {**thresholds, **{name: thresholds.get(name, THRESHOLDS[name]) * speed
                             for name in ("max_age_s", "verify_max_age")}}


def stored_clock(client: redis.Redis) -> ScaledClock | None:
    """The demo's clock as the demo stored it, for a CLI process pointed at the demo."""
    raw = as_str_dict(client.hgetall(DEMO_CLOCK_KEY))
    try:
        return ScaledClock(float(raw["speed"]), float(raw["start"]))
    except (KeyError, ValueError, TypeError):
        return None
