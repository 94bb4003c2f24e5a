"""The backfill engine survives SIGKILL, dropped connections and Redis restarts (issue 3).

Every test runs the real CLI in a subprocess against a real redis-server and then audits the
whole keyspace: each valid legacy job has an equal new record with its TTL (within 1 s) and
index entry, newer dual-written records are untouched, and the saved counters add up.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from backfill_kit import (
    INVALID_KEYS,
    SCHEMA,
    Seeded,
    assert_all_copied,
    assert_counters_add_up,
    cli_env,
    dual_write_on,
    run_relayctl,
    seed_jobs,
    snapshot_keys,
    spawn_backfill,
    wait_lease_gone,
)

from relayctl.core.backfill import LEASE_TTL_MS, UNFINISHED, BackfillKeys, read_state
from relayctl.core.jobs import STATUSES, JobStore
from tests.conftest import wait_for

LEASE_KEY = BackfillKeys().lease
SHORT_LEASE = cli_env(RELAYCTL_BACKFILL_LEASE_MS="1200")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def aof_server(redis_server, tmp_path_factory):
    """A second private redis-server with AOF persistence, fsync on every write."""
    server = type(redis_server)(
        binary=redis_server.binary, port=_free_port(), workdir=tmp_path_factory.mktemp("aof"),
        extra=("--appendonly", "yes", "--appendfsync", "always"),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aof(aof_server) -> Iterator[tuple[object, redis.Redis]]:
    if aof_server.proc is None:
        aof_server.start()
    client = redis.Redis(port=aof_server.port, decode_responses=True)
    client.flushall()
    yield aof_server, client
    client.close()


def _owner(client: redis.Redis, pid: int) -> bool:
    return read_state(client).get("owner") == f"{socket.gethostname()}:{pid}"


def _wait_engine_started(client: redis.Redis, proc, timeout: float = 20) -> None:
    wait_for(lambda: _owner(client, proc.pid) or proc.poll() is not None, timeout,
             what="the engine to take the lease")
    assert proc.poll() is None, proc.communicate()


def _wait_scanned(client: redis.Redis, proc, at_least: int, timeout: float = 20,
                  poll: float = 0.02) -> None:
    wait_for(lambda: int(read_state(client).get("scanned", 0)) >= at_least
             or proc.poll() is not None, timeout, what=f"{at_least} keys scanned", interval=poll)
    assert proc.poll() is None, proc.communicate()


class Writer(threading.Thread):
    """Application traffic through JobStore with dual-write on: enqueues new jobs (a third
    with a TTL) and updates statuses of random existing legacy jobs (which, for a legacy-only
    job, makes its new copy in the same script: 'old+created')."""

    def __init__(self, url: str, seeded: Seeded, seed: int = 5) -> None:
        super().__init__(name="pytest-writer", daemon=True)
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.store = JobStore(self.client, background=False, pins={})
        assert self.store.refresh_flags().dual_write
        self.rng = random.Random(seed)
        self.candidates = [(ws, j) for ws, j in seeded.jobs
                           if SCHEMA.new_key(ws, j) not in seeded.newer]
        self.created: set[str] = set()
        self.enqueued = 0
        self.updates = 0
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        rng = self.rng
        try:
            while not self.halt.is_set():
                if rng.random() < 0.4:
                    ws = rng.choice(("ws-a", "ws-b", "ws-c", "ws-d"))
                    ttl = rng.randint(1, 9) * 86400 if rng.random() < 1 / 3 else None
                    self.store.enqueue(ws, action_provider="openai", action_name="draft",
                                       params={"n": self.enqueued}, ttl_seconds=ttl)
                    self.enqueued += 1
                else:
                    ws, job_id = rng.choice(self.candidates)
                    where = self.store.update_status(
                        ws, job_id, rng.choice(STATUSES), result={"u": self.updates})
                    if where == "old+created":
                        self.created.add(job_id)
                    self.updates += 1
                time.sleep(0.001)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        self.store.close()
        self.client.close()
        assert not self.errors, self.errors


def test_sigkill_at_random_points_under_live_dual_write_traffic_loses_and_duplicates_nothing(
        redis_url, r, raw):
    rng = random.Random()
    seeded = seed_jobs(r, 22_000, newer=300, in_both=200)
    dual_write_on(r)
    invalid_before = snapshot_keys(raw, INVALID_KEYS)
    writer = Writer(redis_url, seeded)
    writer.start()
    args = ("--execute", "--batch", "200", "--rps", "0", "--json")
    # kill points: random places in the keyspace, plus a random delay (0-30 ms) so the kill
    # lands anywhere in the engine's read / copy / checkpoint cycle
    kill_at = sorted(int(rng.uniform(0.03, 0.85) * 22_000) for _ in range(4))
    kills: list[dict[str, str]] = []
    try:
        while len(kills) < len(kill_at):
            unfinished = read_state(r).get("status") in UNFINISHED
            proc = spawn_backfill(redis_url, *args, *(("--resume",) if unfinished else ()),
                                  env=SHORT_LEASE)
            _wait_engine_started(r, proc)
            _wait_scanned(r, proc, kill_at[len(kills)], poll=0.002)
            time.sleep(rng.uniform(0.0, 0.03))
            assert proc.poll() is None, "the kill must land before the run completes"
            proc.kill()
            proc.communicate(timeout=10)
            state = read_state(r)
            assert state["status"] == "running", "a killed run stays resumable"
            assert_counters_add_up(state)
            kills.append(state)
            assert r.exists(LEASE_KEY), "the dead owner's lease outlives it ..."
            wait_lease_gone(r, timeout=10)  # ... until it expires
        final = run_relayctl(redis_url, "backfill", *args, "--resume", env=SHORT_LEASE)
        assert final.returncode == 0, final.stderr
    finally:
        writer.finish()
    assert writer.updates > 100 and writer.enqueued > 50 and writer.created
    scanned_at_kills = [int(s["scanned"]) for s in kills]
    assert scanned_at_kills == sorted(scanned_at_kills)
    assert all(n >= at for n, at in zip(scanned_at_kills, kill_at, strict=True))
    assert len({s["run_id"] for s in kills}) == 1, "every rerun resumed the same run"

    audit = assert_all_copied(r, seeded.newer, minimum=22_000 + writer.enqueued)
    assert audit.newer_kept == 300
    state = read_state(r)
    assert state["status"] == "completed" and state["run_id"] == kills[0]["run_id"]
    c = assert_counters_add_up(state)
    summary = json.loads(final.stdout)
    assert (summary["scanned"], summary["migrated"]) == (c["scanned"], c["migrated"])
    # every key present for the whole run was seen at least once
    assert c["scanned"] >= 22_000 + len(INVALID_KEYS)
    assert c["skipped_invalid"] == len(INVALID_KEYS) and c["errors"] == 0
    # none written twice: each legacy-only job got its copy from exactly one writer, either
    # the backfill (counted migrated) or an application update under dual-write
    legacy_only = seeded.legacy_only
    assert c["migrated"] == len(legacy_only - writer.created)
    assert snapshot_keys(raw, INVALID_KEYS) == invalid_before
    assert not r.exists(LEASE_KEY)


def test_dropped_connections_mid_run_complete_and_lose_nothing(redis_url, r):
    seeded = seed_jobs(r, 6000, newer=50)
    dual_write_on(r)
    proc = spawn_backfill(redis_url, "--execute", "--batch", "100", "--rps", "3000", "--json")
    _wait_scanned(r, proc, 500)
    killer = redis.Redis.from_url(redis_url)
    dropped = []
    for _ in range(4):
        dropped.append(killer.client_kill_filter(_type="normal", skipme=True))
        time.sleep(0.3)
    killer.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert all(n >= 1 for n in dropped), dropped
    state = read_state(r)
    c = assert_counters_add_up(state)
    assert state["status"] == "completed"
    assert c["scanned"] == 6000 + len(INVALID_KEYS), "every key counted exactly once"
    assert c["migrated"] == 6000 - 50 and c["skipped_exists"] == 50
    summary = json.loads(out)
    assert (summary["scanned"], summary["migrated"]) == (c["scanned"], c["migrated"])
    assert_all_copied(r, seeded.newer, minimum=6000)


def test_redis_restart_mid_run_with_aof_completes_or_resumes_and_loses_nothing(aof):
    server, client = aof
    seeded = seed_jobs(client, 6000, newer=40)
    dual_write_on(client)
    proc = spawn_backfill(server.url, "--execute", "--batch", "100", "--rps", "2500",
                          "--retry-for", "30", "--json")
    _wait_scanned(client, proc, 1000)
    client.close()
    server.stop()
    time.sleep(1.0)
    server.start()
    out, err = proc.communicate(timeout=90)
    client = redis.Redis(port=server.port, decode_responses=True)
    assert proc.returncode in (0, 4), err
    if proc.returncode == 4:
        assert "--resume" in err
        wait_lease_gone(client, timeout=LEASE_TTL_MS / 1000 + 5)
        again = run_relayctl(server.url, "backfill", "--execute", "--resume", "--json")
        assert again.returncode == 0, again.stderr
    else:
        assert json.loads(out)["status"] == "completed"
    state = read_state(client)
    c = assert_counters_add_up(state)
    assert state["status"] == "completed"
    assert c["scanned"] >= 6000 + len(INVALID_KEYS)
    assert c["migrated"] == 6000 - 40
    # the restarted server orders keys anew, so the engine rescanned: records it had copied
    # before the restart came round again and were skipped as existing, never recopied
    assert c["skipped_exists"] > 40
    assert_all_copied(client, seeded.newer, minimum=6000)
    client.close()


def test_redis_down_longer_than_retry_for_exits_4_with_a_resumable_cursor(aof):
    server, client = aof
    seeded = seed_jobs(client, 6000)
    dual_write_on(client)
    proc = spawn_backfill(server.url, "--execute", "--batch", "100", "--rps", "2500",
                          "--retry-for", "2", "--json", env=SHORT_LEASE)
    _wait_scanned(client, proc, 1000)
    client.close()
    server.stop(kill=True)
    down = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
        waited = time.monotonic() - down
    finally:
        server.start()
    assert proc.returncode == 4, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--resume" in lines[0], err
    assert 1.5 <= waited < 20, waited
    client = redis.Redis(port=server.port, decode_responses=True)
    state = read_state(client)
    assert state["status"] in UNFINISHED and state["cursor"] != "0", state
    scanned_at_loss, migrated_at_loss = int(state["scanned"]), int(state["migrated"])
    assert scanned_at_loss >= 1000 and migrated_at_loss > 0
    assert state["server"] != client.info("server")["run_id"], "the cursor's server is gone"
    status = run_relayctl(server.url, "backfill", "status", "--json")
    assert json.loads(status.stdout)["state"]["cursor"] == int(state["cursor"])  # a number
    wait_lease_gone(client)
    again = run_relayctl(server.url, "backfill", "--execute", "--resume", "--json")
    assert again.returncode == 0, again.stderr
    final = read_state(client)
    c = assert_counters_add_up(final)
    assert final["status"] == "completed" and final["run_id"] == state["run_id"]
    # a restarted server hashes keys in a new order, so the saved cursor is void there: the
    # resumed run rescans from 0 once; what was copied before the loss is skipped as existing
    assert c["scanned"] == scanned_at_loss + 6000 + len(INVALID_KEYS)
    assert c["migrated"] == 6000 and c["skipped_exists"] == migrated_at_loss
    assert_all_copied(client, seeded.newer, minimum=6000)
    client.close()
