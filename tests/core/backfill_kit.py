"""Backfill test helpers: seeding, a whole-keyspace audit of the copy, a fault-injecting TCP
proxy and CLI subprocess runners, shared by the backfill suites."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from relayctl.core import backfill as bf
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.demo import legacy_record
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id
from tests.conftest import wait_for

SCHEMA = KeySchema()
WORKSPACES = ("ws-a", "ws-b", "ws-c", "ws-d")
RELAYCTL = [sys.executable, "-m", "relayctl"]
STATE_KEY = bf.BackfillKeys().state
LEASE_KEY = bf.BackfillKeys().lease
DAY_MS = 86_400_000

# Invalid legacy records (SPEC §4 `invalid`): each must be counted and left untouched.
INVALID_KEYS = (
    "ai:jobs:corrupt-string",  # not a hash
    "ai:jobs:corrupt-nows",  # hash without workspace_id
    "ai:jobs:corrupt-badws",  # workspace id with glob and colon
    "ai:jobs:corrupt-mismatch",  # job_id field disagrees with its key
    "ai:jobs:corrupt-UPPER",  # job id that is not a valid id
)


# ---------------------------------------------------------------------------------------------
# seeding


@dataclass
class Seeded:
    jobs: list[tuple[str, str]]  # valid legacy jobs: (workspace_id, job_id)
    ttl_jobs: set[str]
    invalid: tuple[str, ...]
    newer: dict[str, dict[str, str]] = field(default_factory=dict)  # new key -> its record
    in_both: set[str] = field(default_factory=set)  # job ids with a pre-existing equal copy

    @property
    def legacy_only(self) -> set[str]:
        newer_ids = {key.rsplit(":", 1)[1] for key in self.newer}
        return {j for _, j in self.jobs} - newer_ids - self.in_both


def seed_invalid(client: redis.Redis) -> tuple[str, ...]:
    pipe = client.pipeline(transaction=False)
    pipe.set("ai:jobs:corrupt-string", "not a hash")
    pipe.hset("ai:jobs:corrupt-nows", mapping={"job_id": "corrupt-nows", "status": "pending"})
    pipe.hset("ai:jobs:corrupt-badws",
              mapping={"job_id": "corrupt-badws", "workspace_id": "Bad:WS*"})
    pipe.hset("ai:jobs:corrupt-mismatch",
              mapping={"job_id": "other-id", "workspace_id": "ws-a", "enqueued_at": ""})
    pipe.hset("ai:jobs:corrupt-UPPER",
              mapping={"job_id": "corrupt-UPPER", "workspace_id": "ws-a"})
    pipe.execute()
    return INVALID_KEYS


def seed_jobs(client: redis.Redis, n: int, *, workspaces: tuple[str, ...] = WORKSPACES,
              seed: int = 1, ttl_share: float = 1 / 3, invalid: bool = True, newer: int = 0,
              in_both: int = 0, now: float | None = None) -> Seeded:
    """n valid legacy jobs (a third with a TTL of days), optionally the invalid records,
    `newer` jobs whose new-schema copy was dual-written later and differs from the legacy
    record (status running, result "newer"), and `in_both` jobs already copied equal."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    jobs: list[tuple[str, str]] = []
    ttl_jobs: set[str] = set()
    for i in range(n):
        ws = workspaces[i % len(workspaces)]
        job_id = f"j{i:06d}-{rng.getrandbits(32):08x}"
        record = legacy_record(rng, ws, job_id, now - rng.uniform(0, 30 * 86400))
        old = SCHEMA.old_key(job_id)
        pipe.hset(old, mapping=record)
        if rng.random() < ttl_share:
            pipe.pexpire(old, rng.randint(3, 30) * DAY_MS)
            ttl_jobs.add(job_id)
        jobs.append((ws, job_id))
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    seeded = Seeded(jobs=jobs, ttl_jobs=ttl_jobs, invalid=seed_invalid(client) if invalid else ())
    picks = rng.sample(jobs, newer + in_both)
    for k, (ws, job_id) in enumerate(picks):
        record = client.hgetall(SCHEMA.old_key(job_id))
        pttl = client.pttl(SCHEMA.old_key(job_id))
        new = SCHEMA.new_key(ws, job_id)
        if k < newer:
            record = {**record, "status": "running", "result": "newer", "finished_at": ""}
            seeded.newer[new] = record
        else:
            seeded.in_both.add(job_id)
        pipe.hset(new, mapping=record)
        if pttl > 0:
            pipe.pexpire(new, pttl)
        pipe.zadd(SCHEMA.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})
    pipe.execute()
    return seeded


def dual_write_on(client: redis.Redis) -> None:
    set_flag(client, DUAL_WRITE, "on", actor="pytest", reason="backfill test setup")


# ---------------------------------------------------------------------------------------------
# verification


@dataclass
class Audit:
    valid: int = 0
    copied_equal: int = 0
    newer_kept: int = 0
    problems: list[str] = field(default_factory=list)


def _chunks(items: list, size: int = 2000) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def audit_copy(client: redis.Redis, newer: dict[str, dict[str, str]] | None = None,
               workspaces: tuple[str, ...] | None = None) -> Audit:
    """Every valid legacy record (of `workspaces`, default all) has a new record equal to it
    (or, for a newer dual-written record, exactly that record), the same TTL presence and
    remaining TTL within 1 s, and an index entry scored with its enqueued_at."""
    newer = newer or {}
    out = Audit()
    keys = sorted(client.scan_iter(match=SCHEMA.old_pattern, count=2000))
    for chunk in _chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        types = pipe.execute()
        hashes = [k for k, t in zip(chunk, types, strict=True) if t == "hash"]
        for key in hashes:
            pipe.hgetall(key)
        valid = []
        for key, record in zip(hashes, pipe.execute(), strict=True):
            ws, job_id = record.get("workspace_id"), record.get("job_id")
            if not (is_valid_workspace_id(ws) and is_valid_job_id(job_id)
                    and SCHEMA.old_key(job_id) == key):
                continue
            if workspaces is not None and ws not in workspaces:
                continue
            valid.append((key, record, ws, job_id))
        for key, _record, ws, job_id in valid:
            new = SCHEMA.new_key(ws, job_id)
            pipe.hgetall(new)
            pipe.pttl(key)  # both TTLs read back to back
            pipe.pttl(new)
            pipe.zscore(SCHEMA.index_key(ws), job_id)
        got = pipe.execute()
        for i, (key, record, ws, job_id) in enumerate(valid):
            out.valid += 1
            new = SCHEMA.new_key(ws, job_id)
            new_record, pttl, new_pttl, score = got[4 * i:4 * i + 4]
            if new in newer:
                if new_record != newer[new]:
                    out.problems.append(f"{new}: newer record overwritten: {new_record}")
                    continue
                out.newer_kept += 1
            elif new_record != record:
                out.problems.append(f"{new}: {new_record} != legacy {record}")
                continue
            else:
                out.copied_equal += 1
            if (pttl > 0) != (new_pttl > 0):
                out.problems.append(f"{new}: TTL presence differs ({pttl} vs {new_pttl})")
            elif pttl > 0 and abs(pttl - new_pttl) > 1000:
                out.problems.append(f"{new}: TTL {new_pttl} ms vs legacy {pttl} ms")
            if score is None or int(score) != iso_to_ms(record["enqueued_at"]):
                out.problems.append(f"{key}: index score {score} != enqueued_at")
    return out


def assert_all_copied(client: redis.Redis, newer: dict[str, dict[str, str]] | None = None,
                      minimum: int = 0) -> Audit:
    audit = audit_copy(client, newer)
    assert not audit.problems, f"{len(audit.problems)} problems, e.g. {audit.problems[:5]}"
    assert audit.valid >= minimum
    assert audit.newer_kept == len(newer or {})
    return audit


def counters(state: dict[str, str]) -> dict[str, int]:
    names = ("scanned", "migrated", "skipped_exists", "skipped_invalid", "skipped_filtered",
             "errors")
    return {n: int(state.get(n, 0)) for n in names}


def assert_counters_add_up(state: dict[str, str]) -> dict[str, int]:
    c = counters(state)
    assert (c["migrated"] + c["skipped_exists"] + c["skipped_invalid"]
            + c["skipped_filtered"] + c["errors"]) == c["scanned"], c
    return c


@dataclass(frozen=True, eq=False)
class Expiry:
    """A key's absolute expiry: exact (PEXPIRETIME, Redis >= 7.0) or, on 6.2, now + PTTL, which
    equals another reading within the time between the two reads."""

    at_ms: int
    exact: bool

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expiry):
            return NotImplemented
        if (self.exact and other.exact) or min(self.at_ms, other.at_ms) < 0:
            return self.at_ms == other.at_ms
        return abs(self.at_ms - other.at_ms) <= 250


def expiry(raw_client: redis.Redis, key: str) -> Expiry:
    try:
        return Expiry(raw_client.pexpiretime(key), True)
    except redis.ResponseError:  # Redis 6.2: no PEXPIRETIME
        pttl = raw_client.pttl(key)
        return Expiry(pttl if pttl < 0 else int(time.time() * 1000) + pttl, False)


def snapshot_keys(raw_client: redis.Redis, keys: tuple[str, ...]) -> dict[str, object]:
    return {k: (raw_client.dump(k), expiry(raw_client, k)) for k in keys}


# ---------------------------------------------------------------------------------------------
# CLI subprocesses


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW",
                        "READ_FALLBACK_OLD", "RELAYCTL_BACKFILL_LEASE_MS")}
    env["PYTHONUNBUFFERED"] = "1"
    env["RELAYCTL_ACTOR"] = "pytest-operator"
    env.update(extra)
    return env


def spawn_backfill(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*RELAYCTL, "--redis-url", url, "backfill", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or cli_env())


def run_relayctl(url: str, *args: str, timeout: float = 120,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RELAYCTL, "--redis-url", url, *args], capture_output=True,
                          text=True, timeout=timeout, env=env or cli_env())




def wait_lease_gone(client: redis.Redis, timeout: float = 20) -> None:
    wait_for(lambda: not client.exists(LEASE_KEY), timeout, what="the lease to expire")


# ---------------------------------------------------------------------------------------------
# a TCP proxy that injects real network faults between the engine and redis-server


class FaultProxy:
    """Forwards 127.0.0.1:port to redis-server. Armed with a marker it either
    - `drop_reply`: forwards the request that contains the marker, lets the server execute
      it, then throws the reply away and cuts the connection (a reply lost in flight); or
    - `swallow`: never forwards that request and reports it (the client hangs there)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.marker: bytes | None = None
        self.mode = ""
        self.skip = 0
        self.fired = threading.Event()
        self.closed = False
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, marker: bytes, mode: str, skip: int = 0) -> None:
        with self.lock:
            self.marker, self.mode, self.skip = marker, mode, skip
            self.fired.clear()

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.socks += [down, up]
            state = {"drop": False}
            threading.Thread(target=self._c2s, args=(down, up, state), daemon=True).start()
            threading.Thread(target=self._s2c, args=(up, down, state), daemon=True).start()

    def _trigger(self, data: bytes) -> str:
        with self.lock:
            if self.marker is None or self.marker not in data:
                return ""
            if self.skip > 0:
                self.skip -= 1
                return ""
            mode, self.marker = self.mode, None
            return mode

    def _c2s(self, down: socket.socket, up: socket.socket, state: dict) -> None:
        try:
            while True:
                data = down.recv(65536)
                if not data:
                    break
                mode = self._trigger(data)
                if mode == "swallow":
                    self.fired.set()
                    continue
                if mode == "drop_reply":
                    state["drop"] = True
                    up.sendall(data)
                    time.sleep(0.3)  # the server executes the request and replies
                    self.fired.set()
                    break
                up.sendall(data)
        except OSError:
            pass
        finally:
            for s in (down, up):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _s2c(self, up: socket.socket, down: socket.socket, state: dict) -> None:
        try:
            while True:
                data = up.recv(65536)
                if not data:
                    break
                if not state["drop"]:
                    down.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


COPY_SHA = hashlib.sha1(bf.COPY_BATCH.encode()).hexdigest().encode()


def engine(client: redis.Redis, **options) -> Backfill:
    events: list[tuple[str, dict]] = []
    options.setdefault("execute", True)
    metrics = options.pop("metrics", None) or Metrics()
    b = Backfill(client, BackfillOptions(**options), metrics=metrics,
                 on_event=lambda e, p: events.append((e, p.as_dict())))
    b.events = events  # type: ignore[attr-defined]
    return b
