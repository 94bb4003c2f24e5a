"""The embedded default: a fakeredis TCP server on loopback with pre-migration data."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass

import redis

from relayctl.core.jobs import JOB_FIELDS, iso_now, iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.replies import fields as hash_fields


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


def _keepalive_handler() -> type:
    """fakeredis' TCP handler closes the connection after any error reply; real Redis keeps
    it open (and redis-py relies on that, e.g. SCRIPT LOAD after NOSCRIPT on one connection).
    This handler sends the error reply and keeps serving."""
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler

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


def start_embedded_redis(port: int = 0, host: str = "127.0.0.1") -> EmbeddedRedis:
    from fakeredis import TcpFakeServer

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
        pipe.hset(old, mapping=hash_fields(record))
        ttl_ms = rng.randint(3, 30) * 86400 * 1000 if rng.random() < ttl_share else 0
        if ttl_ms:
            pipe.pexpire(old, ttl_ms)
        if i >= jobs * (1 - recent_share):
            new = schema.new_key(ws, job_id)
            pipe.hset(new, mapping=hash_fields(record))
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
