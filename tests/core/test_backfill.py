"""The backfill engine against a real redis-server (SPEC §4, issue 3)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import redis
from backfill_kit import (
    COPY_SHA,
    INVALID_KEYS,
    LEASE_KEY,
    SCHEMA,
    STATE_KEY,
    WORKSPACES,
    FaultProxy,
    assert_all_copied,
    assert_counters_add_up,
    audit_copy,
    cli_env,
    dual_write_on,
    engine,
    run_relayctl,
    seed_jobs,
    snapshot_keys,
    spawn_backfill,
    wait_lease_gone,
)

from relayctl.core import backfill as bf
from relayctl.core.backfill import Backfill, BackfillOptions, read_state
from relayctl.core.metrics import Metrics

pytestmark = pytest.mark.engines()


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
