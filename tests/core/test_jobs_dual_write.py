"""Dual-write is all-or-nothing, the idempotency check is atomic, and an update never leaves a
partial new-schema record (SPEC §1, §3)."""

from __future__ import annotations

import threading

import pytest
import redis
from jobstore_kit import Combo, apply_flags, job_keys, metric, set_dual_write, snapshot

from relayctl.core.errors import JobNotFoundError, ValidationError
from relayctl.core.jobs import IDEMPOTENCY_TTL_MS, JOB_FIELDS, JobStore, iso_to_ms
from relayctl.core.metrics import Metrics

# every test here runs on a standalone server, on a cluster, and on a cluster with the
# hash-tagged templates (new record, index and idempotency key in one slot)
pytestmark = [pytest.mark.backends("standalone", "cluster"), pytest.mark.tagged_layout,
              pytest.mark.engines()]
DUAL_ON = Combo(dual=True, prefers_new=True, fallback=True)
DUAL_OFF = Combo(dual=False, prefers_new=False, fallback=True)
ATTEMPTS = "relay_dual_write_attempt_total"


def legacy_record(ws: str, jid: str, enqueued_at: str, **extra: str) -> dict[str, str]:
    rec = {name: "" for name in JOB_FIELDS}
    rec.update(job_id=jid, workspace_id=ws, status="pending", action_provider="prov",
               action_name="act", params='{"a":1}', actor_id="u1", enqueued_at=enqueued_at)
    rec.update(extra)
    return rec


# --- enqueue -----------------------------------------------------------------------------


def test_enqueue_under_dual_write_writes_old_new_index_queue_and_idempotency(r, store, schema):
    apply_flags(r, DUAL_ON, store)
    res = store.enqueue("ws-a", action_provider="prov", action_name="act", params={"x": 1},
                        actor_id="u1", request_id="req-1", now=1_714_557_600.123)
    jid = res.job_id
    assert res.created
    old = r.hgetall(schema.old_key(jid))
    new = r.hgetall(schema.new_key("ws-a", jid))
    assert set(old) == set(JOB_FIELDS) and old == new
    assert old["enqueued_at"] == "2024-05-01T10:00:00.123Z"
    assert old["workspace_id"] == "ws-a" and old["status"] == "pending"
    assert r.zscore(schema.index_key("ws-a"), jid) == 1_714_557_600_123
    assert r.lrange(schema.queue, 0, -1) == [jid]
    assert r.get(schema.idempotency_key("ws-a", "req-1")) == jid
    idem_ttl = r.pttl(schema.idempotency_key("ws-a", "req-1"))
    assert IDEMPOTENCY_TTL_MS - 5_000 < idem_ttl <= IDEMPOTENCY_TTL_MS
    assert r.pttl(schema.old_key(jid)) == -1 and r.pttl(schema.new_key("ws-a", jid)) == -1


def test_enqueue_without_dual_write_writes_only_the_legacy_schema(r, store, schema):
    apply_flags(r, DUAL_OFF, store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n", request_id="r").job_id
    assert r.exists(schema.old_key(jid)) == 1
    assert r.exists(schema.new_key("ws-a", jid)) == 0
    assert r.exists(schema.index_key("ws-a")) == 0
    assert r.lrange(schema.queue, 0, -1) == [jid]
    assert r.get(schema.idempotency_key("ws-a", "r")) == jid


@pytest.mark.parametrize("combo", [DUAL_ON, DUAL_OFF], ids=lambda c: c.id)
def test_a_job_ttl_is_kept_by_every_copy(r, store, combo, schema):
    apply_flags(r, combo, store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n", ttl_seconds=3600).job_id
    old_ttl = r.pttl(schema.old_key(jid))
    assert 3_599_000 < old_ttl <= 3_600_000
    if combo.dual:
        assert abs(r.pttl(schema.new_key("ws-a", jid)) - old_ttl) <= 1000


def test_a_repeated_request_returns_the_existing_job_and_writes_nothing(r, raw, store):
    apply_flags(r, DUAL_ON, store)
    first = store.enqueue("ws-a", action_provider="p", action_name="n", request_id="same")
    before = snapshot(raw)
    again = store.enqueue("ws-a", action_provider="p", action_name="other", request_id="same")
    assert (again.job_id, again.created) == (first.job_id, False)
    assert snapshot(raw) == before
    # the same request id in another workspace is another request
    other = store.enqueue("ws-b", action_provider="p", action_name="n", request_id="same")
    assert other.created and other.job_id != first.job_id


@pytest.mark.parametrize("combo", [DUAL_ON, DUAL_OFF], ids=lambda c: c.id)
def test_concurrent_identical_requests_create_exactly_one_job(r, new_client, combo, schema):
    threads = 8
    clients = [new_client() for _ in range(threads)]
    stores = [JobStore(c, background=False, pins={}, schema=schema) for c in clients]
    try:
        apply_flags(r, combo, *stores)
        for round_no in range(5):
            request_id = f"req-{round_no}"
            barrier = threading.Barrier(threads)
            results: list = [None] * threads
            errors: list[BaseException] = []

            def worker(i: int, request_id: str = request_id, barrier=barrier,
                       results=results, errors=errors) -> None:
                try:
                    barrier.wait(timeout=10)
                    results[i] = stores[i].enqueue(
                        "ws-a", action_provider="p", action_name="n", request_id=request_id)
                except BaseException as exc:  # collected and asserted below
                    errors.append(exc)

            pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join(20)
            assert errors == []
            assert len({res.job_id for res in results}) == 1
            assert sum(res.created for res in results) == 1
        assert len(job_keys(r, schema.old_pattern)) == 5
        assert r.llen(schema.queue) == 5
        assert len(job_keys(r, schema.new_pattern)) == (5 if combo.dual else 0)
        assert r.zcard(schema.index_key("ws-a")) == (5 if combo.dual else 0)
    finally:
        for s in stores:
            s.close()


def _assert_nothing_written(r, before_keys: set[str], schema) -> None:
    assert set(r.scan_iter(count=1000)) == before_keys
    assert job_keys(r, schema.old_pattern) == []
    assert job_keys(r, schema.new_pattern) == []
    assert job_keys(r, "ai:idempotency:*") == []


@pytest.mark.parametrize("breaker", ["queue-is-a-string", "index-is-a-string",
                                     "idempotency-is-a-hash"])
@pytest.mark.parametrize("with_ttl", [False, True], ids=["no-ttl", "ttl"])
def test_a_failing_dual_write_enqueue_writes_nothing_and_raises(
    r, store, breaker, with_ttl, schema
):
    apply_flags(r, DUAL_ON, store)
    if breaker == "queue-is-a-string":
        r.set(schema.queue, "oops")
    elif breaker == "index-is-a-string":
        r.set(schema.index_key("ws-a"), "oops")
    else:
        r.hset(schema.idempotency_key("ws-a", "req"), "x", "y")
    keys_before = set(r.scan_iter(count=1000))
    failed = metric(store, ATTEMPTS, result="failed", workspace_id="ws-a")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.enqueue("ws-a", action_provider="p", action_name="n", request_id="req",
                      job_id="job-1", ttl_seconds=60 if with_ttl else None)
    assert set(r.scan_iter(count=1000)) == keys_before
    assert r.exists(schema.old_key("job-1"), schema.new_key("ws-a", "job-1")) == 0
    if breaker != "idempotency-is-a-hash":
        assert r.exists(schema.idempotency_key("ws-a", "req")) == 0
    assert metric(store, ATTEMPTS, result="failed", workspace_id="ws-a") == failed + 1
    assert metric(store, ATTEMPTS, result="succeeded", workspace_id="ws-a") == 0


def test_a_job_id_collision_writes_nothing_and_raises(r, raw, store):
    apply_flags(r, DUAL_ON, store)
    store.enqueue("ws-a", action_provider="p", action_name="n", job_id="dup")
    before = snapshot(raw)
    with pytest.raises(redis.ResponseError, match="collision"):
        store.enqueue("ws-a", action_provider="p", action_name="m", job_id="dup",
                      request_id="fresh")
    assert snapshot(raw) == before


@pytest.mark.parametrize("ttl", [1e13, 1e16, 1e20])
def test_an_out_of_range_ttl_never_leaves_a_half_written_job(r, store, ttl, schema):
    """A TTL Redis cannot apply must fail before the first write, not after the legacy hash
    and the idempotency key were already written."""
    apply_flags(r, DUAL_ON, store)
    keys_before = set(r.scan_iter(count=1000))
    try:
        res = store.enqueue("ws-a", action_provider="p", action_name="n", request_id="req",
                            ttl_seconds=ttl)
    except (ValidationError, redis.ResponseError):
        _assert_nothing_written(r, keys_before, schema)
        return
    # accepted: then every copy exists and carries the same TTL
    assert r.exists(schema.old_key(res.job_id), schema.new_key("ws-a", res.job_id)) == 2
    assert r.pttl(schema.old_key(res.job_id)) > 0
    assert abs(r.pttl(schema.old_key(res.job_id))
               - r.pttl(schema.new_key("ws-a", res.job_id))) <= 1000


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_a_non_positive_or_non_finite_ttl_is_refused_without_writing(r, store, ttl, schema):
    keys_before = set(r.scan_iter(count=1000))
    with pytest.raises((ValidationError, ValueError, OverflowError)):
        store.enqueue("ws-a", action_provider="p", action_name="n", ttl_seconds=ttl)
    _assert_nothing_written(r, keys_before, schema)


def test_a_failing_enqueue_without_dual_write_is_raised_and_not_counted_as_dual_write(
    r, store, schema
):
    apply_flags(r, DUAL_OFF, store)
    r.set(schema.queue, "oops")
    with pytest.raises(redis.ResponseError):
        store.enqueue("ws-a", action_provider="p", action_name="n", job_id="j1")
    assert r.exists(schema.old_key("j1")) == 0
    assert metric(store, ATTEMPTS, result="failed", workspace_id="ws-a") == 0


# --- update ------------------------------------------------------------------------------


@pytest.mark.parametrize("enqueued_at", [
    "2024-05-01T10:00:00.123Z",
    "2024-05-01T12:00:00.123+02:00",
    "2024-05-01T05:30:00-04:30",
    "2024-05-01T10:00:00Z",
    "2024-05-01T10:00:00",
    "2024-05-01 10:00:00.5Z",
    "2024-02-29T23:59:59.999Z",
    "1999-12-31T23:59:59.001+00:00",
    "2024-05-01T10:00:00.123456Z",
    "2024-05-01T10:00:00.999999Z",
    "2024-05-01T10:00:00.123456+05:45",
])
def test_updating_a_legacy_only_job_under_dual_write_creates_the_whole_new_record(
    r, store, enqueued_at, schema
):
    """The new copy equals the updated legacy record field for field, keeps its TTL, and is
    indexed at the epoch ms of enqueued_at as Python computes it (Lua and Python agree)."""
    apply_flags(r, DUAL_ON, store)
    jid = "legacy-1"
    r.hset(schema.old_key(jid), mapping=legacy_record("ws-a", jid, enqueued_at))
    r.pexpire(schema.old_key(jid), 600_000)
    attempts = metric(store, ATTEMPTS, result="succeeded", workspace_id="ws-a")
    where = store.update_status("ws-a", jid, "completed", result={"ok": True}, now=1_714_560_000)
    assert where == "old+created"
    old = r.hgetall(schema.old_key(jid))
    new = r.hgetall(schema.new_key("ws-a", jid))
    assert new == old
    assert set(new) == set(JOB_FIELDS)
    assert new["status"] == "completed" and new["result"] == '{"ok":true}'
    assert new["finished_at"] == "2024-05-01T10:40:00.000Z"
    assert new["enqueued_at"] == enqueued_at
    old_ttl, new_ttl = r.pttl(schema.old_key(jid)), r.pttl(schema.new_key("ws-a", jid))
    assert 0 < old_ttl <= 600_000 and abs(old_ttl - new_ttl) <= 1000
    assert r.zscore(schema.index_key("ws-a"), jid) == iso_to_ms(enqueued_at)
    assert iso_to_ms(enqueued_at) > 0
    assert metric(store, ATTEMPTS, result="succeeded", workspace_id="ws-a") == attempts + 1


def test_iso_to_ms_reads_offsets_and_missing_fractions():
    assert iso_to_ms("2024-05-01T10:00:00Z") == 1_714_557_600_000
    assert iso_to_ms("2024-05-01T12:00:00+02:00") == 1_714_557_600_000
    assert iso_to_ms("2024-05-01T12:00:00.250+02:00") == 1_714_557_600_250
    assert iso_to_ms("2024-05-01T10:00:00") == 1_714_557_600_000
    assert iso_to_ms("2024-05-01T10:00:00.0009Z") == 1_714_557_600_000  # truncated, as in Lua
    assert iso_to_ms("") == 0 and iso_to_ms(None) == 0 and iso_to_ms("yesterday") == 0


def test_a_legacy_record_without_a_ttl_gives_a_new_copy_without_a_ttl(r, store, schema):
    apply_flags(r, DUAL_ON, store)
    r.hset(schema.old_key("j1"), mapping=legacy_record("ws-a", "j1", "2024-05-01T10:00:00Z"))
    store.update_status("ws-a", "j1", "running")
    assert r.pttl(schema.new_key("ws-a", "j1")) == -1
    assert r.hget(schema.new_key("ws-a", "j1"), "started_at")


def test_an_update_under_dual_write_without_index_drift_keeps_the_existing_score(
    r, store, schema
):
    apply_flags(r, DUAL_ON, store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n", now=1_700_000_000).job_id
    r.zadd(schema.index_key("ws-a"), {jid: 42})
    assert store.update_status("ws-a", jid, "running") == "both"
    assert r.zscore(schema.index_key("ws-a"), jid) == 42


def test_an_indexless_new_record_is_indexed_on_update_under_dual_write(r, store, schema):
    apply_flags(r, DUAL_ON, store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n", now=1_700_000_000).job_id
    r.zrem(schema.index_key("ws-a"), jid)
    store.update_status("ws-a", jid, "failed", error="boom")
    assert r.zscore(schema.index_key("ws-a"), jid) == 1_700_000_000_000


def test_update_without_dual_write_does_not_create_the_new_copy(r, store, schema):
    apply_flags(r, DUAL_OFF, store)
    r.hset(schema.old_key("j1"), mapping=legacy_record("ws-a", "j1", "2024-05-01T10:00:00Z"))
    assert store.update_status("ws-a", "j1", "running") == "old"
    assert r.hget(schema.old_key("j1"), "status") == "running"
    assert r.exists(schema.new_key("ws-a", "j1")) == 0
    assert r.exists(schema.index_key("ws-a")) == 0


def test_update_without_dual_write_still_updates_an_existing_new_copy(r, store, schema):
    apply_flags(r, DUAL_ON, store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
    apply_flags(r, DUAL_OFF, store)
    assert store.update_status("ws-a", jid, "completed") == "both"
    assert r.hgetall(schema.old_key(jid)) == r.hgetall(schema.new_key("ws-a", jid))


@pytest.mark.parametrize("combo", [DUAL_ON, DUAL_OFF], ids=lambda c: c.id)
def test_updating_another_workspaces_legacy_job_raises_not_found_and_changes_nothing(
    r, raw, store, combo, schema
):
    apply_flags(r, combo, store)
    r.hset(schema.old_key("jb"), mapping=legacy_record("ws-b", "jb", "2024-05-01T10:00:00Z"))
    r.pexpire(schema.old_key("jb"), 600_000)
    before = snapshot(raw)
    with pytest.raises(JobNotFoundError):
        store.update_status("ws-a", "jb", "completed")
    with pytest.raises(JobNotFoundError):
        store.update_status("ws-a", "missing", "completed")
    assert snapshot(raw) == before
    assert r.exists(schema.new_key("ws-a", "jb"), schema.index_key("ws-a")) == 0


def test_an_update_that_fails_on_a_broken_index_writes_nothing_and_is_counted(
    r, raw, store, schema
):
    apply_flags(r, DUAL_ON, store)
    r.hset(schema.old_key("j1"), mapping=legacy_record("ws-a", "j1", "2024-05-01T10:00:00Z"))
    r.set(schema.index_key("ws-a"), "oops")
    before = snapshot(raw)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.update_status("ws-a", "j1", "completed")
    assert snapshot(raw) == before
    assert metric(store, ATTEMPTS, result="failed", workspace_id="ws-a") == 1


def test_an_invalid_status_is_refused_before_redis(r, store, schema):
    r.hset(schema.old_key("j1"), mapping=legacy_record("ws-a", "j1", "2024-05-01T10:00:00Z"))
    with pytest.raises(ValidationError):
        store.update_status("ws-a", "j1", "done")
    assert r.hget(schema.old_key("j1"), "status") == "pending"


def test_dual_write_metrics_use_bounded_workspace_labels(r, make_store):
    store = make_store(metrics=Metrics(labelled_workspaces=["ws-a"]))
    apply_flags(r, DUAL_ON, store)
    store.enqueue("ws-a", action_provider="p", action_name="n")
    store.enqueue("ws-zz", action_provider="p", action_name="n")
    assert metric(store, ATTEMPTS, result="succeeded", workspace_id="ws-a") == 1
    assert metric(store, ATTEMPTS, result="succeeded", workspace_id="_other") == 1
    assert metric(store, ATTEMPTS, result="succeeded", workspace_id="ws-zz") == 0


def test_toggling_dual_write_between_enqueues_keeps_each_job_whole(r, store, schema):
    ids = []
    for i in range(6):
        set_dual_write(r, i % 2 == 0, store)
        ids.append(store.enqueue("ws-a", action_provider="p", action_name="n").job_id)
    for i, jid in enumerate(ids):
        new = r.hgetall(schema.new_key("ws-a", jid))
        assert (new == r.hgetall(schema.old_key(jid))) if i % 2 == 0 else new == {}
