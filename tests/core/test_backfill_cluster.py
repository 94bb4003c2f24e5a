"""The backfill engine on a real Redis Cluster: every shard walked, failover survived (issue 6).

The cluster is three primaries with one replica each (tests/conftest.py). The failover test
starts its own cluster, since it kills one of its primaries.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time

import pytest
import redis
from backfill_kit import (
    SCHEMA,
    assert_all_copied,
    assert_counters_add_up,
    cli_env,
    dual_write_on,
    run_relayctl,
    seed_jobs,
    spawn_backfill,
    wait_lease_gone,
)
from cluster_kit import TAGGED

from relayctl.core import cluster as clusterlib
from relayctl.core.backfill import Backfill, BackfillOptions, read_state, send_control
from relayctl.core.connection import connect
from relayctl.core.demo import legacy_record
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.verify import run_verify
from tests.conftest import start_cluster, wait_for


@pytest.fixture
def rc(cluster_url):
    client = connect(cluster_url)
    yield client
    client.close()


def fast_seed(client, n: int, schema: KeySchema = SCHEMA, workspaces: int = 10,
              seed: int = 7) -> int:
    """n legacy jobs (a third with a TTL), written straight to each key's primary."""
    rng = random.Random(seed)
    router = clusterlib.Router(client)
    items: list[tuple[str, tuple]] = []
    start = time.time() - 20 * 86400
    for i in range(n):
        job_id = f"j{i:07d}-{rng.getrandbits(24):06x}"
        key = schema.old_key(job_id)
        record = legacy_record(rng, f"ws-{i % workspaces}", job_id, start + i * 0.01)
        items.append((key, ("HSET", key, *(x for kv in record.items() for x in kv))))
        if i % 3 == 0:
            items.append((key, ("PEXPIRE", key, rng.randint(3, 30) * 86_400_000)))
        if len(items) >= 4000:
            router.execute(items)
            items.clear()
    router.execute(items)
    router.close()
    return n


def per_shard(client, pattern: str) -> dict[str, int]:
    out = {}
    for shard in clusterlib.shards(client):
        out[shard.name] = sum(1 for _ in shard.client.scan_iter(match=pattern, count=2000))
        shard.client.close()
    return out


def test_backfill_of_200k_jobs_on_the_cluster_then_verify_is_clean(rc):
    n = fast_seed(rc, 200_000)
    spread = per_shard(rc, SCHEMA.old_pattern)
    assert len(spread) == 3 and all(v > 50_000 for v in spread.values()), spread
    dual_write_on(rc)
    engine = Backfill(rc, BackfillOptions(execute=True, workers=3, batch=1000),
                      metrics=Metrics())
    assert engine.run() == 0
    p = engine.progress
    assert (p.scanned, p.migrated, p.errors) == (n, n, 0)
    assert p.shards_done == 3 and p.fraction == 1.0
    state = read_state(rc)
    assert assert_counters_add_up(state)["migrated"] == n
    assert {state[f"done:{name}"] for name in spread} == {"1"}
    report = run_verify(rc, SCHEMA)
    assert report.clean, report.as_dict()
    assert report.checked == n
    assert sum(per_shard(rc, SCHEMA.new_pattern).values()) == n


@pytest.mark.parametrize("workers", [1, 3])
def test_the_tagged_layout_copies_each_record_with_its_index_in_one_step(rc, workers):
    n = fast_seed(rc, 6000, seed=workers)
    dual_write_on(rc)
    engine = Backfill(rc, BackfillOptions(execute=True, workers=workers, batch=300),
                      schema=TAGGED, metrics=Metrics())
    assert engine.run() == 0
    assert (engine.progress.migrated, engine.progress.errors) == (n, 0)
    # every new record sits in its index's slot, so the copy and the ZADD were one script
    for keys in clusterlib.scan_all(rc, match=TAGGED.new_pattern):
        for key in keys:
            ws = key.split("{", 1)[1].split("}", 1)[0]
            assert clusterlib.key_slot(key) == clusterlib.key_slot(TAGGED.index_key(ws))
    report = run_verify(rc, TAGGED)
    assert report.clean and report.checked == n, report.as_dict()


def test_a_second_run_counts_everything_as_existing_and_changes_nothing(rc):
    seeded = seed_jobs(rc, 3000, newer=40, in_both=40)
    dual_write_on(rc)
    assert Backfill(rc, BackfillOptions(execute=True, workers=2), metrics=Metrics()).run() == 0
    assert_all_copied(rc, seeded.newer, minimum=3000)
    again = Backfill(rc, BackfillOptions(execute=True, workers=3, fresh=True),
                     metrics=Metrics())
    assert again.run() == 0
    assert again.progress.migrated == 0
    assert again.progress.skipped["exists"] == 3000
    assert again.progress.skipped["invalid"] == len(seeded.invalid)
    assert_all_copied(rc, seeded.newer, minimum=3000)


def test_dry_run_on_the_cluster_writes_nothing(rc, redis_cluster):
    fast_seed(rc, 3000)
    before = redis_cluster.dbsize_sum()
    engine = Backfill(rc, BackfillOptions(execute=False, workers=3), metrics=Metrics())
    assert engine.run() == 0
    assert engine.progress.scanned == 3000 and engine.progress.migrated == 3000
    assert redis_cluster.dbsize_sum() == before


def test_max_keys_saves_a_cursor_per_shard_and_a_resume_finishes(rc):
    n = fast_seed(rc, 9000)
    dual_write_on(rc)
    first = Backfill(rc, BackfillOptions(execute=True, workers=3, batch=200, max_keys=2000),
                     metrics=Metrics())
    assert first.run() == 0
    state = read_state(rc)
    assert state["status"] == "partial"
    cursors = {k: v for k, v in state.items() if k.startswith("cursor:")}
    assert len(cursors) == 3 and any(v != "0" for v in cursors.values()), cursors
    second = Backfill(rc, BackfillOptions(execute=True, workers=3, batch=200, resume=True),
                      metrics=Metrics())
    assert second.run() == 0
    assert second.progress.migrated == n  # counters are cumulative across resumes
    assert 0 < first.progress.migrated < n
    assert run_verify(rc, SCHEMA).clean


def test_a_killed_engine_resumes_from_each_shards_cursor(cluster_url, rc):
    seeded = seed_jobs(rc, 20_000, newer=50)
    dual_write_on(rc)
    env = cli_env(RELAYCTL_BACKFILL_LEASE_MS="1500")
    proc = spawn_backfill(cluster_url, "--execute", "--workers", "3", "--rps", "5000",
                          "--batch", "200", env=env)
    wait_for(lambda: int(read_state(rc).get("scanned", 0)) >= 6000 or proc.poll() is not None,
             30, "the engine to copy 6000 keys")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    state = read_state(rc)
    assert state["status"] == "running" and int(state["scanned"]) < 20_000
    wait_lease_gone(rc)
    done = run_relayctl(cluster_url, "backfill", "--execute", "--resume", "--workers", "3",
                        "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed"
    assert_counters_add_up(read_state(rc))
    assert_all_copied(rc, seeded.newer, minimum=20_000)


def test_pause_resume_and_stop_reach_every_lane(cluster_url, rc):
    seed_jobs(rc, 8000, invalid=False)
    dual_write_on(rc)
    proc = spawn_backfill(cluster_url, "--execute", "--workers", "3", "--rps", "2000",
                          "--batch", "100")
    wait_for(lambda: int(read_state(rc).get("scanned", 0)) >= 500, 30, "the engine to start")
    send_control(rc, "pause", actor="pytest", reason="test")
    wait_for(lambda: read_state(rc).get("status") == "paused", 10, "the pause")
    held = int(read_state(rc)["scanned"])
    time.sleep(1.0)
    assert int(read_state(rc)["scanned"]) <= held + 3 * 100  # at most a batch per lane
    send_control(rc, "resume", actor="pytest", reason="test")
    wait_for(lambda: int(read_state(rc)["scanned"]) > held + 300, 10, "the resume")
    send_control(rc, "stop", actor="pytest", reason="test")
    assert proc.wait(20) == 3
    assert read_state(rc)["status"] == "stopped"
    actions = [f["action"] for _i, f in rc.xrange("relay:audit")]
    assert actions[-3:] == ["backfill.pause", "backfill.resume", "backfill.stop"]


def test_backfill_status_shows_every_shard(cluster_url, rc):
    fast_seed(rc, 2000)
    dual_write_on(rc)
    assert Backfill(rc, BackfillOptions(execute=True, workers=3), metrics=Metrics()).run() == 0
    out = run_relayctl(cluster_url, "backfill", "status")
    assert out.returncode == 0, out.stderr
    for name in ("0", "5461", "10923"):
        assert f"shard {name}: done" in out.stdout


def _primary_serving(client, key: str) -> int:
    return int(client.get_node_from_key(key).port)


def test_a_primary_killed_mid_backfill_fails_over_and_the_run_completes_clean(tmp_path):
    cluster = start_cluster(tmp_path / "cluster")
    try:
        rc = connect(cluster.url)
        # in_both: copies made earlier by dual-write, equal to the legacy record
        seeded = seed_jobs(rc, 30_000, in_both=100)
        dual_write_on(rc)
        proc = spawn_backfill(cluster.url, "--execute", "--workers", "3", "--rps", "6000",
                              "--batch", "200", "--retry-for", "60")
        wait_for(lambda: int(read_state(rc).get("scanned", 0)) >= 8000
                 or proc.poll() is not None, 30, "the engine to copy 8000 keys")
        assert proc.poll() is None, proc.communicate()
        # the primary holding the engine's own state: both a lane and every commit fail over
        victim = _primary_serving(rc, "relay:backfill:state")
        before = set(cluster.primaries())
        cluster.node(victim).stop(kill=True)
        wait_for(lambda: len(set(cluster.primaries()) - before) == 1 and cluster.healthy(),
                 60, "a replica to be promoted", 0.2)
        try:  # communicate, not wait: an engine blocked on a full stderr pipe never exits
            _out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
            state = read_state(connect(cluster.url))
            raise AssertionError(f"engine still running after 180 s: {state}\n"
                                 f"{err[-2000:]}") from None
        code = proc.returncode
        attempts = [code]
        if code == 4:  # Redis lost for longer than --retry-for: the documented way on
            rerun = run_relayctl(cluster.url, "backfill", "--execute", "--resume",
                                 "--workers", "3", timeout=180)
            attempts.append(rerun.returncode)
        assert attempts[-1] == 0, (attempts, err[-2000:])
        rc.close()
        rc = connect(cluster.url)
        state = read_state(rc)
        assert state["status"] == "completed", state
        c = assert_counters_add_up(state)
        # the failover made the engine walk every shard again: copies count as exists
        assert c["skipped_exists"] > 100 + 1000, c
        assert_all_copied(rc, seeded.newer, minimum=30_000)
        report = run_verify(rc, SCHEMA)
        assert report.clean, report.as_dict()
        assert report.checked == 30_000
    finally:
        cluster.stop()


def test_a_cluster_url_with_cluster_no_is_refused_by_the_node_for_other_slots(redis_cluster):
    client = connect(redis_cluster.url + "?cluster=no")
    assert not clusterlib.is_cluster(client)
    with pytest.raises(redis.ResponseError):
        for i in range(50):  # some key lands in a slot another node serves: MOVED
            client.set(f"k{i}", "1")
    client.close()


def test_a_live_dual_writing_store_during_the_backfill_leaves_verify_clean(rc):
    """Updates race the DUMP/RESTORE copies: the legacy record is updated first and the new
    copy after, so whichever lands second, the copy ends equal to its source."""
    from relayctl.core.jobs import JobStore

    seeded = seed_jobs(rc, 12_000, invalid=False)
    dual_write_on(rc)
    store = JobStore(rc, background=False, pins={}, metrics=Metrics())
    assert store.refresh_flags().dual_write
    stop = threading.Event()
    done = {"updates": 0, "enqueues": 0}
    rng = random.Random(3)

    def writer() -> None:
        while not stop.is_set():
            ws, job_id = rng.choice(seeded.jobs)
            store.update_status(ws, job_id, rng.choice(("running", "completed", "failed")),
                                result={"n": done["updates"]})
            done["updates"] += 1
            if done["updates"] % 10 == 0:
                store.enqueue(ws, action_provider="p", action_name="a", params={"x": 1})
                done["enqueues"] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        engine = Backfill(rc, BackfillOptions(execute=True, workers=3, batch=200, rps=4000),
                          metrics=Metrics())
        assert engine.run() == 0
    finally:
        stop.set()
        thread.join(10)
        store.close()
    assert done["updates"] > 500, done
    report = run_verify(rc, SCHEMA)
    assert report.clean, report.as_dict()
    assert report.checked == 12_000 + done["enqueues"]


def test_a_failover_under_live_dual_writes_leaves_only_what_repair_fixes(tmp_path):
    """A primary dies while the application dual-writes and the backfill runs. Writes in
    flight fail half-way (legacy written, new copy not): the write order promises that this
    only leaves differences `verify --repair` fixes, and the backfill still completes."""
    from relayctl.core.jobs import JobStore

    cluster = start_cluster(tmp_path / "cluster")
    stop = threading.Event()
    try:
        rc = connect(cluster.url)
        seeded = seed_jobs(rc, 15_000, invalid=False)
        dual_write_on(rc)
        store = JobStore(connect(cluster.url), background=False, pins={}, metrics=Metrics())
        assert store.refresh_flags().dual_write
        ops = {"ok": 0, "failed": 0}
        rng = random.Random(11)

        def writer() -> None:
            while not stop.is_set():
                ws, job_id = rng.choice(seeded.jobs)
                try:
                    if rng.random() < 0.2:
                        store.enqueue(ws, action_provider="p", action_name="a")
                    else:
                        store.update_status(ws, job_id, rng.choice(("running", "completed")))
                    ops["ok"] += 1
                except Exception:  # the failover window: the application sees errors
                    ops["failed"] += 1
                    time.sleep(0.02)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        proc = spawn_backfill(cluster.url, "--execute", "--workers", "3", "--rps", "4000",
                              "--batch", "200", "--retry-for", "60")
        wait_for(lambda: int(read_state(rc).get("scanned", 0)) >= 5000
                 or proc.poll() is not None, 30, "the engine to copy 5000 keys")
        state_node = _primary_serving(rc, "relay:backfill:state")
        victim = next(p for p in cluster.primaries() if p != state_node)
        before = set(cluster.primaries())
        cluster.node(victim).stop(kill=True)
        wait_for(lambda: len(set(cluster.primaries()) - before) == 1 and cluster.healthy(),
                 60, "a replica to be promoted", 0.2)
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        time.sleep(1.0)  # writes go on against the promoted replica
        stop.set()
        thread.join(10)
        store.close()
        assert ops["ok"] > 300, ops
        rc.close()
        rc = connect(cluster.url)
        first = run_verify(rc, SCHEMA)
        repairable = {"missing", "field_mismatch", "ttl_drift", "index_missing"}
        assert {k for k, n in first.counts.items() if n} <= repairable, first.as_dict()
        run_verify(rc, SCHEMA, repair=True)
        after = run_verify(rc, SCHEMA)
        assert after.clean, after.as_dict()
    finally:
        stop.set()
        cluster.stop()


def test_the_memory_guard_acts_per_shard_one_full_shard_throttles_the_run(rc):
    fast_seed(rc, 30_000)
    dual_write_on(rc)
    found = clusterlib.shards(rc)
    events: list[tuple[str, str]] = []
    full = found[1]
    engine = Backfill(rc, BackfillOptions(execute=True, batch=200, rps=6000, workers=3),
                      metrics=Metrics(), on_event=lambda e, p: events.append((e, p.message)))
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(engine.run()), daemon=True)
    try:
        worker.start()
        wait_for(lambda: int(read_state(rc).get("scanned", 0)) >= 3000, 60, "the run")
        used = int(full.client.info("memory")["used_memory"])
        full.client.config_set("maxmemory", int(used / 0.88))
        held = {}

        def throttled() -> bool:
            held.update(read_state(rc))
            return held.get("status") == "throttled"

        wait_for(throttled, 15, "the shard's memory throttle")
        assert held["throttle_kind"] == "memory"
        assert held["throttle_reason"].startswith(f"shard {full.name}: memory ")
        others = [sh for sh in found if sh.name != full.name]
        assert all(int(sh.client.config_get("maxmemory")["maxmemory"]) == 0 for sh in others)
        time.sleep(1.0)
        assert read_state(rc)["status"] == "throttled"
    finally:
        full.client.config_set("maxmemory", 0)
        worker.join(timeout=120)
        clusterlib.close_shards(found, rc)
    assert result == [0]
    state = read_state(rc)
    assert state["status"] == "completed" and float(state["throttled_s"]) >= 1.0
    assert ("throttled", held["throttle_reason"]) in events
    assert_all_copied(rc, minimum=30_000)
