"""The backfill engine against a real redis-server (SPEC §4, issue 3).

The helpers at the top (seeding, a whole-keyspace audit of the copy, a fault-injecting TCP
proxy, CLI subprocess runners) are shared with test_backfill_crash.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis

from relayctl.core import backfill as bf
from relayctl.core.backfill import Backfill, BackfillOptions, read_state
from relayctl.core.demo import legacy_record
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id
from tests.conftest import wait_for

pytestmark = pytest.mark.engines()

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


# =============================================================================================
# tests


def test_execute_copies_every_valid_record_with_ttl_and_index_and_counts_each_reason(r):
    seeded = seed_jobs(r, 3000, newer=40, in_both=60)
    dual_write_on(r)
    b = engine(r, batch=250)
    assert b.run() == bf.EXIT_DONE
    audit = assert_all_copied(r, seeded.newer, minimum=3000)
    assert audit.copied_equal == 3000 - 40
    state = read_state(r)
    c = assert_counters_add_up(state)
    assert state["status"] == "completed" and state["cursor"] == "0"
    assert c == {"scanned": 3000 + len(INVALID_KEYS), "migrated": 3000 - 100,
                 "skipped_exists": 100, "skipped_invalid": len(INVALID_KEYS),
                 "skipped_filtered": 0, "errors": 0}
    p = b.progress.as_dict()
    assert (p["scanned"], p["migrated"], p["skipped"]) == (
        c["scanned"], c["migrated"],
        {"exists": 100, "invalid": len(INVALID_KEYS), "filtered": 0, "error": 0})
    assert not r.exists(LEASE_KEY), "the lease is released at the end"
    # a second full run copies nothing again: every record now exists
    b2 = engine(r, batch=250, fresh=True)
    assert b2.run() == bf.EXIT_DONE
    assert b2.progress.migrated == 0 and b2.progress.skipped["exists"] == 3000


def test_newer_dual_written_record_is_never_overwritten_by_the_copy(r, raw):
    seeded = seed_jobs(r, 600, newer=150, invalid=False)
    dual_write_on(r)
    before = snapshot_keys(raw, tuple(seeded.newer))
    assert engine(r, batch=100).run() == bf.EXIT_DONE
    after = snapshot_keys(raw, tuple(seeded.newer))
    assert before == after
    for key, record in seeded.newer.items():
        assert r.hget(key, "result") == "newer" and r.hgetall(key) == record
    assert read_state(r)["skipped_exists"] == "150"
    assert_all_copied(r, seeded.newer, minimum=600)


def test_workspace_filter_copies_only_that_workspace_and_counts_the_rest_filtered(r, raw):
    seed_jobs(r, 2000)
    dual_write_on(r)
    invalid_before = snapshot_keys(raw, INVALID_KEYS)
    b = engine(r, batch=300, workspaces=("ws-b",))
    assert b.run() == bf.EXIT_DONE
    in_b = audit_copy(r, workspaces=("ws-b",))
    assert not in_b.problems and in_b.valid == 500
    new_keys = list(r.scan_iter(match=SCHEMA.new_pattern, count=2000))
    assert len(new_keys) == 500 and all(k.startswith("ai:job:ws-b:") for k in new_keys)
    assert [k for k in r.scan_iter(match="ai:jobidx:*")] == ["ai:jobidx:ws-b"]
    c = assert_counters_add_up(read_state(r))
    assert (c["migrated"], c["skipped_filtered"], c["skipped_invalid"]) == (
        500, 1500, len(INVALID_KEYS))
    assert read_state(r)["workspaces"] == "ws-b"
    assert snapshot_keys(raw, INVALID_KEYS) == invalid_before
    # resuming an unfinished run needs the same scope
    r.hset(STATE_KEY, "status", "partial")
    with pytest.raises(bf.UsageError, match="workspaces"):
        engine(r, workspaces=("ws-a",)).run()
    assert not r.exists(LEASE_KEY)


def test_invalid_records_are_counted_invalid_and_left_untouched(r, raw):
    seed_jobs(r, 50, invalid=True)
    dual_write_on(r)
    before = snapshot_keys(raw, INVALID_KEYS)
    b = engine(r, batch=20)
    assert b.run() == bf.EXIT_DONE
    assert b.progress.skipped["invalid"] == len(INVALID_KEYS)
    assert b.progress.migrated == 50
    assert snapshot_keys(raw, INVALID_KEYS) == before
    new_keys = set(r.scan_iter(match=SCHEMA.new_pattern))
    assert len(new_keys) == 50
    assert not any("corrupt" in k or "other-id" in k for k in new_keys)
    assert not [k for k in r.scan_iter(match="ai:jobidx:*") if "ws-" not in k]
    # a bad workspace id never becomes a key or an index
    assert not r.exists("ai:jobidx:Bad:WS*", "ai:job:Bad:WS*:corrupt-badws")


def test_metrics_scraped_at_the_end_match_the_engine_summary(r):
    seed_jobs(r, 2500, newer=30, in_both=70)
    dual_write_on(r)
    metrics = Metrics(labelled_workspaces=["ws-a"])
    server = metrics.serve(0)
    try:
        b = engine(r, batch=200, workspaces=("ws-a", "ws-b", "ws-c"), metrics=metrics)
        assert b.run() == bf.EXIT_DONE
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",
                                    timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.close()
    summary = b.progress.as_dict()

    def total(name: str, **labels: str) -> float:
        value = 0.0
        for line in text.splitlines():
            if (line.startswith((name + "{", name + " "))
                    and all(f'{k}="{v}"' in line for k, v in labels.items())):
                value += float(line.rsplit(" ", 1)[1])
        return value

    assert summary["scanned"] == 2500 + len(INVALID_KEYS)
    assert summary["skipped"]["filtered"] > 0 and summary["skipped"]["exists"] > 0
    assert total("relay_backfill_scanned_total") == summary["scanned"]
    assert total("relay_backfill_migrated_total") == summary["migrated"]
    for reason in ("exists", "invalid", "filtered"):
        assert total("relay_backfill_skipped_total", reason=reason) == summary["skipped"][reason]
    assert total("relay_backfill_errors_total") == summary["errors"] == 0
    assert total("relay_backfill_duration_seconds_count") > 0
    # the bounded label: ws-a is labelled, everything else is _other
    assert total("relay_backfill_migrated_total", workspace_id="ws-a") > 0
    labels = {line.split('workspace_id="', 1)[1].split('"', 1)[0]
              for line in text.splitlines()
              if line.startswith("relay_backfill_") and 'workspace_id="' in line}
    assert labels <= {"ws-a", "_other"}


def test_max_keys_stops_partial_and_the_next_run_resumes_at_the_saved_cursor(
        redis_url, r, monitor):
    seed_jobs(r, 4000)
    dual_write_on(r)
    first = run_relayctl(redis_url, "backfill", "--execute", "--batch", "200",
                         "--max-keys", "1000", "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["status"] == "partial"
    state = read_state(r)
    assert state["status"] == "partial" and state["cursor"] != "0"
    saved_cursor, scanned_first = state["cursor"], int(state["scanned"])
    assert 1000 <= scanned_first < 4000
    status = run_relayctl(redis_url, "backfill", "status", "--json")
    assert status.returncode == 3 and json.loads(status.stdout)["state"]["status"] == "partial"
    with monitor() as rec:
        second = run_relayctl(redis_url, "backfill", "--execute", "--resume", "--batch", "200",
                              "--json")
    assert second.returncode == 0, second.stderr
    scans = [c for c in rec.named("SCAN") if "ai:jobs:*" in c]
    assert scans, "the resumed run scanned"
    assert scans[0].split()[1] == saved_cursor, f"first SCAN {scans[0]} not at {saved_cursor}"
    assert not any(c.split()[1] == "0" for c in scans), "no rescan from zero"
    final = read_state(r)
    c = assert_counters_add_up(final)
    assert final["status"] == "completed" and final["run_id"] == state["run_id"]
    assert c["scanned"] == 4000 + len(INVALID_KEYS)  # every key exactly once
    assert c["migrated"] == 4000 and c["skipped_invalid"] == len(INVALID_KEYS)
    assert json.loads(second.stdout)["scanned"] == c["scanned"]
    assert_all_copied(r, minimum=4000)


def test_rps_limits_keys_per_second_counting_skipped_keys(r):
    seed_jobs(r, 2000, invalid=False, in_both=1000)
    for i in range(2000):  # 1000 filtered-out records too: skipped keys count against --rps
        r.hset(f"ai:jobs:x{i:05d}", mapping={"job_id": f"x{i:05d}", "workspace_id": "ws-z",
                                              "enqueued_at": "2024-01-01T00:00:00.000Z"})
    dual_write_on(r)
    b = engine(r, batch=200, rps=2000, workspaces=WORKSPACES)
    t0 = time.monotonic()
    assert b.run() == bf.EXIT_DONE
    elapsed = time.monotonic() - t0
    p = b.progress
    assert p.scanned == 4000 and p.migrated == 1000
    assert p.skipped["exists"] == 1000 and p.skipped["filtered"] == 2000
    assert elapsed >= 1.8, f"4000 keys at --rps 2000 took only {elapsed:.2f}s"
    assert elapsed < 6


def test_max_latency_throttles_while_exceeded_yet_the_run_completes(r):
    seed_jobs(r, 1500, invalid=False)
    dual_write_on(r)
    seen: list[float] = []
    b = Backfill(r, BackfillOptions(execute=True, batch=300, max_latency_ms=0.001),
                 on_event=lambda e, p: seen.append(p.throttle_s))
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        time.sleep(s)

    b.sleep = sleep
    assert b.run() == bf.EXIT_DONE
    assert b.progress.status == "completed" and b.progress.migrated == 1500
    assert max(seen) > 0 or b.progress.throttle_s > 0
    assert sum(slept) > 0.01
    assert_all_copied(r, minimum=1500)


def test_lost_reply_of_a_copy_step_is_not_applied_or_counted_twice(engine_server, redis_url, r):
    """The copy reaches Redis and runs; its reply is lost and the call retried. The retried
    call must not count the batch again (scanned/exists) nor report its copies as skips."""
    seed_jobs(r, 1000, invalid=False)
    dual_write_on(r)
    proxy = FaultProxy(engine_server.port)
    try:
        proxy.arm(COPY_SHA, "drop_reply", skip=2)
        client = redis.Redis.from_url(proxy.url, decode_responses=True, socket_timeout=5)
        b = engine(client, batch=100)
        assert b.run() == bf.EXIT_DONE
        assert proxy.fired.is_set(), "the fault was injected"
        client.close()
    finally:
        proxy.close()
    c = assert_counters_add_up(read_state(r))
    assert c["scanned"] == 1000 and c["migrated"] == 1000 and c["skipped_exists"] == 0
    assert b.progress.scanned == 1000 and b.progress.migrated == 1000
    assert b.progress.skipped["exists"] == 0
    assert_all_copied(r, minimum=1000)


def test_crash_after_the_final_batch_resumes_to_completed_without_rescanning(
        engine_server, redis_url, r, monitor):
    """SIGKILL the engine exactly between its last copy and its final status write (the proxy
    holds that write); the resumed run must finish, not scan the keyspace a second time."""
    seed_jobs(r, 1200)
    dual_write_on(r)
    proxy = FaultProxy(engine_server.port)
    try:
        proxy.arm(b"completed", "swallow")
        proc = spawn_backfill(proxy.url, "--execute", "--batch", "200", "--json",
                              env=cli_env(RELAYCTL_BACKFILL_LEASE_MS="1000"))
        assert proxy.fired.wait(30), "the engine reached its final status write"
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        proxy.close()
    state = read_state(r)
    assert state["status"] == "running" and state["cursor"] == "0"
    assert int(state["scanned"]) == 1200 + len(INVALID_KEYS)
    wait_lease_gone(r)
    with monitor() as rec:
        b = engine(r, resume=True, batch=200)
        assert b.run() == bf.EXIT_DONE
    assert not [c for c in rec.named("SCAN") if "ai:jobs:*" in c], "no rescan"
    final = read_state(r)
    c = assert_counters_add_up(final)
    assert final["status"] == "completed" and final["run_id"] == state["run_id"]
    assert c["scanned"] == 1200 + len(INVALID_KEYS) and c["migrated"] == 1200
    assert b.progress.scanned == c["scanned"]
    assert_all_copied(r, minimum=1200)


def test_backfill_runs_where_info_is_denied_by_acl(redis_url, r):
    """The restart check reads INFO server; without that permission the copy still runs."""
    seed_jobs(r, 800)
    dual_write_on(r)
    r.acl_setuser("bf-noinfo", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                  commands=["+@all", "-info"], reset=True)
    try:
        client = redis.Redis.from_url(redis_url, username="bf-noinfo", password="pw",
                                      decode_responses=True)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.info("server")
        b = engine(client, batch=100)
        assert b.run() == bf.EXIT_DONE
        client.close()
    finally:
        r.acl_deluser("bf-noinfo")
    assert b.progress.migrated == 800
    assert_all_copied(r, minimum=800)


def test_backfill_runs_on_the_embedded_demo_redis_which_has_no_info():
    from relayctl.core.connection import connect
    from relayctl.core.demo import seed_pre_migration, start_embedded_redis

    embedded = start_embedded_redis(0)
    try:
        client = connect(embedded.url)
        summary = seed_pre_migration(client, SCHEMA, ["ws-a", "ws-b"], jobs=1500)
        dual_write_on(client)
        dry = engine(client, execute=False, batch=300)
        assert dry.run() == bf.EXIT_DONE
        b = engine(client, batch=300)
        assert b.run() == bf.EXIT_DONE
        assert b.progress.migrated == dry.progress.migrated == summary.legacy - summary.in_both
        assert b.progress.skipped["invalid"] == summary.invalid
        assert_all_copied(client, minimum=summary.legacy)
        client.close()
    finally:
        embedded.close()
