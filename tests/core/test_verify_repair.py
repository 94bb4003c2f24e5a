"""verify --repair never reverts a newer write, heals seed-format Phase-1 copies and removes
index orphans (issue 13); key names and values are bytes (issue 14). Real redis-server."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from relayctl.core.archive import delete_verified, export, restore
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.census import run_census
from relayctl.core.checklist import rollback
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW, set_flag
from relayctl.core.jobs import JobStore, iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.verify import run_verify

SCHEMA = KeySchema()
T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def flags(r: redis.Redis, **values: bool) -> None:
    for name, on in values.items():
        set_flag(r, name, on, actor="test", reason="setup")


def store(r: redis.Redis) -> JobStore:
    s = JobStore(r, schema=SCHEMA, background=False, pins={})
    s.refresh_flags()
    return s


def seed_record(ws: str, job_id: str, i: int) -> dict[str, str]:
    """The seed application's enqueue: 9 fields (no `error`), isoformat times with
    microseconds and +00:00, params from json.dumps (with spaces)."""
    return {
        "job_id": job_id, "workspace_id": ws, "status": "pending",
        "action_provider": "openai", "action_name": "summarize",
        "params": json.dumps({"doc": f"d{i}", "max_tokens": 256}),
        "actor_id": f"user-{i % 7}", "result": "",
        "enqueued_at": (T0 + timedelta(seconds=i)).isoformat(),
    }


def running(ws: str, job_id: str, i: int) -> dict[str, str]:
    return {**seed_record(ws, job_id, i), "status": "running",
            "started_at": (T0 + timedelta(seconds=i, milliseconds=500)).isoformat()}


def put(r: redis.Redis, ws: str, job_id: str, record: dict[str, str], *, copy: bool = True,
        index: bool = True) -> None:
    r.hset(SCHEMA.old_key(job_id), mapping=record)
    if copy:
        r.hset(SCHEMA.new_key(ws, job_id), mapping=record)
    if index:
        r.zadd(SCHEMA.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})


def test_restore_then_fallback_rollback_then_repair_reverts_no_newer_write(r, tmp_path):
    jobs = [("ws-a", str(uuid.uuid4())) for _ in range(1000)]
    for i, (ws, job) in enumerate(jobs):
        put(r, ws, job, running(ws, job, i))
    flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: False})
    assert run_verify(r, SCHEMA).clean
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    assert delete_verified(r, SCHEMA, path, actor="oncall", reason="p6").counts["deleted"] \
        == 1000
    s = store(r)
    for ws, job in jobs:  # the jobs finish after the archive: only their copies exist now
        assert s.update_status(ws, job, "completed", result={"tokens": 42}) == "new"
    s.close()
    newer = {job: r.hgetall(SCHEMA.new_key(ws, job)) for ws, job in jobs}

    restore(r, SCHEMA, path, actor="oncall", reason="404s after delete")
    rollback(r, "fallback-disable", actor="oncall", reason="404s after delete")
    report = run_verify(r, SCHEMA, repair=True, reason="after restore")
    assert report.counts["field_mismatch"] == 1000
    assert report.conflicts == 1000 and report.repairs["overwritten"] == 0
    reverted = sum(1 for ws, job in jobs if r.hgetall(SCHEMA.new_key(ws, job)) != newer[job])
    assert reverted == 0
    assert all(r.hget(SCHEMA.new_key(ws, job), "status") == "completed" for ws, job in jobs)


def test_repair_overwrites_a_copy_only_when_the_legacy_record_is_provably_newer(r):
    cases = {
        # (legacy, copy) -> overwritten?
        "legacy-completed": ({"status": "completed",
                              "finished_at": "2024-05-01T10:00:09+00:00"},
                             {"status": "running"}, True),
        "copy-completed": ({"status": "running"},
                           {"status": "completed", "finished_at": "2024-05-01T10:00:09+00:00"},
                           False),
        "later-finish": ({"status": "failed", "finished_at": "2024-05-01T10:00:09+00:00"},
                         {"status": "completed", "finished_at": "2024-05-01T10:00:05+00:00"},
                         True),
        "earlier-finish": ({"status": "failed", "finished_at": "2024-05-01T10:00:01+00:00"},
                           {"status": "completed",
                            "finished_at": "2024-05-01T10:00:05+00:00"}, False),
        "unknown-status": ({"status": "weird"}, {"status": "running"}, False),
        "same-state-other-result": ({"status": "completed", "result": "a"},
                                    {"status": "completed", "result": "b"}, False),
    }
    for i, (job, (legacy, copy, _)) in enumerate(cases.items()):
        base = running("ws-a", job, i)
        put(r, "ws-a", job, {**base, **legacy}, copy=False)
        r.hset(SCHEMA.new_key("ws-a", job), mapping={**base, **copy})
    report = run_verify(r, SCHEMA, repair=True, reason="test")
    for job, (_legacy, _copy, overwritten) in cases.items():
        got = r.hgetall(SCHEMA.new_key("ws-a", job))
        assert (got == r.hgetall(SCHEMA.old_key(job))) == overwritten, job
    assert report.repairs["overwritten"] == 2 and report.conflicts == 4


def test_seed_format_phase1_copies_are_healed_and_listed_once_read_whole(r):
    """Unindexed full copies and partial copies (`update_status` on a missing copy)."""
    jobs = [("ws-a", str(uuid.uuid4())) for _ in range(300)]
    for i, (ws, job) in enumerate(jobs):
        record = seed_record(ws, job, i)
        if i % 3 == 0:  # Phase-1 copy written without an index entry
            put(r, ws, job, record, index=False)
        elif i % 3 == 1:  # partial copy: only what update_status wrote
            done = {"status": "completed", "result": json.dumps({"ok": True}),
                    "finished_at": (T0 + timedelta(seconds=i, minutes=1)).isoformat()}
            put(r, ws, job, {**record, **done}, copy=False, index=False)
            r.hset(SCHEMA.new_key(ws, job), mapping=done)
        else:
            put(r, ws, job, record, copy=False, index=False)  # legacy only
    found = run_verify(r, SCHEMA)
    assert (found.counts["index_missing"], found.counts["partial"], found.counts["missing"]) \
        == (100, 100, 100), found.as_dict()
    metrics = Metrics()
    engine = Backfill(r, BackfillOptions(execute=True, force=True), metrics=metrics)
    assert engine.run() == 0
    # the backfill alone heals what Phase 1 left: index entries added, partial copies
    # completed from the legacy record, no verify --repair needed
    assert (engine.progress.migrated, engine.progress.indexed, engine.progress.healed) \
        == (100, 200, 100)
    assert [metrics.registry.get_sample_value("relay_backfill_healed_total", {"what": w})
            for w in ("indexed", "healed")] == [200.0, 100.0]
    assert run_verify(r, SCHEMA).clean
    flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: False})
    s = store(r)
    listed: list[str] = []
    cursor = None
    while True:
        page = s.list_jobs("ws-a", cursor=cursor, limit=50)
        listed += [j.job_id for j in page.jobs]
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(listed) == sorted(j for _ws, j in jobs)  # each exactly once
    for ws, job in jobs:
        got = s.get_job(ws, job)
        assert got is not None and got.action_name == "summarize" and got.params, job
        assert r.hgetall(SCHEMA.new_key(ws, job)) == r.hgetall(SCHEMA.old_key(job))
    s.close()


def test_expired_jobs_leave_index_orphans_that_verify_reports_and_repair_removes(r):
    pipe = r.pipeline(transaction=False)
    for i in range(10_000):
        job = f"short-{i}"
        record = seed_record("ws-a", job, i)
        for key in (SCHEMA.old_key(job), SCHEMA.new_key("ws-a", job)):
            pipe.hset(key, mapping=record)
            pipe.pexpire(key, 300 + i % 700)
        pipe.zadd(SCHEMA.index_key("ws-a"), {job: iso_to_ms(record["enqueued_at"])})
        if i % 1000 == 999:
            pipe.execute()
    for i in range(120):
        job = f"kept-{i}"
        put(r, "ws-a", job, seed_record("ws-a", job, 20_000 + i))
    pipe.execute()
    deadline = time.monotonic() + 30
    while r.dbsize() > 2 * 120 + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.dbsize() == 2 * 120 + 1, "the short jobs did not expire"
    found = run_verify(r, SCHEMA)
    assert found.counts["index_orphan"] == 10_000
    assert sum(found.counts.values()) == 10_000
    assert found.examples["index_orphan"][0].startswith("ai:jobidx:ws-a short-")
    fixed = run_verify(r, SCHEMA, repair=True, reason="expired jobs")
    assert fixed.repairs["orphans_removed"] == 10_000
    assert r.zcard(SCHEMA.index_key("ws-a")) == 120
    assert run_verify(r, SCHEMA).clean
    flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: False})
    s = store(r)
    sizes = []
    cursor = None
    while True:
        page = s.list_jobs("ws-a", cursor=cursor, limit=50)
        sizes.append(len(page.jobs))
        cursor = page.cursor
        if cursor is None:
            break
    assert sizes == [50, 50, 20]
    s.close()


@pytest.fixture
def hostile(r, raw):
    """5k valid jobs (legacy + copy + index) and key names that are not UTF-8."""
    pipe = r.pipeline(transaction=False)
    for i in range(5000):
        ws = ("ws-a", "ws-b")[i % 2]
        job = f"job-{i}"
        record = seed_record(ws, job, i)
        for key in (SCHEMA.old_key(job), SCHEMA.new_key(ws, job)):
            pipe.hset(key, mapping=record)
        pipe.zadd(SCHEMA.index_key(ws), {job: iso_to_ms(record["enqueued_at"])})
    pipe.execute()
    bad = [b"ai:jobs:\xff", b"ai:jobs:\xc3\x28-x", b"ai:job:ws-a:\xff\xfe", b"ai:jobidx:\xff"]
    for key in bad[:3]:
        raw.hset(key, mapping={b"job_id": key[-2:], b"workspace_id": b"ws-a"})
    raw.zadd(bad[3], {b"\xff": 1})
    # a record whose params are not UTF-8, copied byte-exact
    params = b'{"blob": "\xff\xfe\x00\x80"}'
    for key in (SCHEMA.old_key("job-0"), SCHEMA.new_key("ws-a", "job-0")):
        raw.hset(key, b"params", params)
    return bad


def test_census_verify_and_export_count_non_utf8_keys_as_invalid_and_finish(
        r, raw, hostile, tmp_path):
    census = run_census(r, SCHEMA)
    assert census.invalid["encoding"] == 4
    assert census.old == 5000 and census.new == 5000
    assert "ai:jobs:\\xff" in census.invalid_examples
    report = run_verify(r, SCHEMA)
    assert report.checked == 5000
    # two legacy names, one new-schema name and one index name that are not UTF-8
    assert report.invalid["encoding"] == 4, report.as_dict()
    assert report.clean, report.as_dict()  # job-0's non-UTF-8 params compare equal
    raw.hset(SCHEMA.new_key("ws-a", "job-0"), b"params", b'{"blob": "\xff\xfe\x00\x81"}')
    differs = run_verify(r, SCHEMA)
    assert differs.counts["field_mismatch"] == 1
    assert differs.examples["field_mismatch"] == [SCHEMA.new_key("ws-a", "job-0")]
    summary = export(r, SCHEMA, tmp_path / "a.gz")
    assert summary.count == 5000 and summary.excluded["encoding"] == 2
    assert sorted(summary.excluded_examples) == ["ai:jobs:\\xc3(-x", "ai:jobs:\\xff"]
    before = raw.hgetall(SCHEMA.old_key("job-0"))
    raw.delete(SCHEMA.old_key("job-0"))
    restored = restore(r, SCHEMA, tmp_path / "a.gz", actor="a", reason="x")
    assert restored.counts["restored"] == 1
    assert raw.hgetall(SCHEMA.old_key("job-0")) == before  # byte-exact
