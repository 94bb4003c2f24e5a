"""A read never returns another workspace's job, and bad ids never reach Redis (SPEC §1, §3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobstore_kit import (
    ADVERSARIAL,
    ALL_COMBOS,
    Combo,
    apply_flags,
    metric,
    oracle_ws,
    paginate,
    snapshot,
    stats_delta,
)

from relayctl.core.errors import JobNotFoundError, ValidationError
from relayctl.core.jobs import JOB_FIELDS, JobStore
from relayctl.core.metrics import Metrics

pytestmark = [pytest.mark.backends("standalone", "cluster"), pytest.mark.tagged_layout,
              pytest.mark.engines()]
MISMATCH = "relay_workspace_mismatch_total"
HYPO = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

bad_workspace = st.sampled_from(ADVERSARIAL) | st.text(max_size=80).filter(
    lambda s: not oracle_ws(s)
)
workspace = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
job_id = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)


def record(ws: str, jid: str, **extra: str) -> dict[str, str]:
    rec = {name: "" for name in JOB_FIELDS}
    rec.update(job_id=jid, workspace_id=ws, status="pending", action_provider="p",
               action_name="n", params="{}", enqueued_at="2024-05-01T10:00:00.000Z")
    rec.update(extra)
    return rec


@pytest.mark.standalone_only("counts round trips on one connection and INFO commandstats")
@HYPO
@given(bad=bad_workspace)
def test_adversarial_workspace_ids_raise_before_any_redis_command(
    bad, counting_client, commandstats
):
    client, trips = counting_client
    store = JobStore(client, background=False, pins={})
    try:
        before = commandstats()
        trips.reset()
        calls = [
            lambda: store.get_job(bad, "job1"),
            lambda: store.list_jobs(bad),
            lambda: store.list_jobs(bad, status="pending", limit=5),
            lambda: store.enqueue(bad, action_provider="p", action_name="n"),
            lambda: store.enqueue(bad, action_provider="p", action_name="n", request_id="r1"),
            lambda: store.update_status(bad, "job1", "completed"),
        ]
        for call in calls:
            with pytest.raises(ValidationError, match="invalid workspace id"):
                call()
        assert trips.count == 0, "the store sent something to Redis for an invalid workspace"
        assert stats_delta(before, commandstats()) == {}
    finally:
        store.close()


@pytest.mark.standalone_only("counts round trips on one connection and INFO commandstats")
@pytest.mark.parametrize("bad_job", ["", "*", "a:b", "Job1", "j\n", "j" * 65, "{j}", "j?"],
                         ids=repr)
def test_adversarial_job_ids_raise_before_any_redis_command(
    bad_job, counting_client, commandstats
):
    client, trips = counting_client
    with JobStore(client, background=False, pins={}) as store:
        before = commandstats()
        trips.reset()
        with pytest.raises(ValidationError, match="invalid job id"):
            store.get_job("ws-a", bad_job)
        with pytest.raises(ValidationError, match="invalid job id"):
            store.update_status("ws-a", bad_job, "failed")
        with pytest.raises(ValidationError, match="invalid job id"):
            store.enqueue("ws-a", action_provider="p", action_name="n", job_id=bad_job)
        assert trips.count == 0
        assert stats_delta(before, commandstats()) == {}


# Values a foreign record's workspace_id may hold that must never pass for `ws`.
def foreign_values(ws: str, other: str) -> list[str | None]:
    return [other, ws.upper() + "X" if ws.upper() == ws else ws.upper(), ws + " ", ws + "\n",
            " " + ws, "", None, ws + "*"]


@HYPO
@given(
    pair=st.lists(workspace, min_size=2, max_size=2, unique=True),
    ids=st.lists(job_id, min_size=6, max_size=6, unique=True),
    foreign=st.integers(min_value=0, max_value=7),
)
def test_get_and_list_never_return_another_workspaces_job_under_any_flags(
    r, pair, ids, foreign, schema
):
    """Data in both schemas, legacy records of B under A's job ids, and new-schema records
    planted at ai:job:A:<id> whose own workspace_id is not A: under all eight flag
    combinations no get_job or list_jobs of A returns a job whose workspace_id is not A, and
    each rejection is counted in relay_workspace_mismatch_total."""
    a, b = pair
    j_legacy_b, j_planted, j_both_a, j_old_a, j_planted_legacy_a, j_new_b = ids
    wrong = foreign_values(a, b)[foreign]
    r.flushdb()
    metrics = Metrics(labelled_workspaces=[a, b])
    store = JobStore(r, background=False, pins={}, metrics=metrics, schema=schema)
    try:
        # legit jobs: one of A in both schemas, one of A legacy-only, one of B new-only
        apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), store)
        store.enqueue(a, action_provider="p", action_name="n", job_id=j_both_a)
        store.enqueue(b, action_provider="p", action_name="n", job_id=j_new_b)
        r.delete(schema.old_key(j_new_b))
        apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), store)
        store.enqueue(a, action_provider="p", action_name="n", job_id=j_old_a)
        # a legacy record that belongs elsewhere, under an id A will ask for
        foreign_rec = record(wrong or "", j_legacy_b)
        if wrong is None:
            del foreign_rec["workspace_id"]
        r.hset(schema.old_key(j_legacy_b), mapping=foreign_rec)
        # new-schema records planted inside A's keyspace and index, owned by someone else
        planted = record(wrong or "", j_planted)
        if wrong is None:
            del planted["workspace_id"]
        r.hset(schema.new_key(a, j_planted), mapping=planted)
        r.zadd(schema.index_key(a), {j_planted: 1_714_557_600_000})
        r.hset(schema.old_key(j_planted), mapping=record(b, j_planted))
        # planted new record whose legacy twin really is A's: fallback may return the legacy
        r.hset(schema.new_key(a, j_planted_legacy_a), mapping=record(b, j_planted_legacy_a))
        r.zadd(schema.index_key(a), {j_planted_legacy_a: 1_714_557_600_001})
        r.hset(schema.old_key(j_planted_legacy_a), mapping=record(a, j_planted_legacy_a))

        for combo in ALL_COMBOS:
            apply_flags(r, combo, store)
            for ws in (a, b):
                for jid in ids:
                    job = store.get_job(ws, jid)
                    assert job is None or job.workspace_id == ws, (combo.id, ws, jid)
                    assert job is None or job.job_id == jid
                for limit, status in ((1, None), (50, None), (50, "pending")):
                    listed = [j for page in paginate(store, ws, limit=limit, status=status)
                              for j in page]
                    assert all(j.workspace_id == ws for j in listed), (combo.id, ws)
                    assert len({j.job_id for j in listed}) == len(listed)

            # each foreign record A's reads touch is a counted miss
            before = metric(store, MISMATCH, operation="get", workspace_id=a)
            assert store.get_job(a, j_legacy_b) is None
            touched_legacy = not combo.prefers_new or combo.fallback
            after = metric(store, MISMATCH, operation="get", workspace_id=a)
            assert after == before + int(touched_legacy), combo.id
            before = after
            assert store.get_job(a, j_planted) is None
            after = metric(store, MISMATCH, operation="get", workspace_id=a)
            # new record (if read) and its legacy twin of B (if read) are both rejected
            expected = int(combo.prefers_new) + int(touched_legacy)
            assert after == before + expected, combo.id
            job = store.get_job(a, j_planted_legacy_a)
            if touched_legacy:
                assert job is not None and job.workspace_id == a and job.source == "old"
            else:
                assert job is None
            # the legit jobs are still found where the flags say they are
            found_both = store.get_job(a, j_both_a)
            assert found_both is not None and found_both.workspace_id == a
            found_old = store.get_job(a, j_old_a)
            assert (found_old is not None) is touched_legacy
    finally:
        store.close()


def test_list_counts_a_planted_new_record_of_another_workspace_as_a_mismatch(r, make_store, schema):
    store = make_store()
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=False), store)
    r.hset(schema.new_key("ws-a", "planted"), mapping=record("ws-b", "planted"))
    r.zadd(schema.index_key("ws-a"), {"planted": 1})
    before = metric(store, MISMATCH, operation="list", workspace_id="ws-a")
    page = store.list_jobs("ws-a")
    assert page.jobs == [] and page.cursor is None
    assert metric(store, MISMATCH, operation="list", workspace_id="ws-a") == before + 1


def test_a_new_record_whose_job_id_field_differs_from_its_key_is_not_returned(
    r, make_store, schema
):
    store = make_store()
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=False), store)
    r.hset(schema.new_key("ws-a", "key-id"), mapping=record("ws-a", "other-id"))
    r.zadd(schema.index_key("ws-a"), {"key-id": 1})
    assert store.get_job("ws-a", "key-id") is None
    assert store.list_jobs("ws-a").jobs == []


@pytest.mark.parametrize("combo", [c for c in ALL_COMBOS if c.dual], ids=lambda c: c.id)
def test_update_of_another_workspaces_job_is_not_found_and_changes_nothing(
    r, raw, make_store, combo, schema
):
    store = make_store()
    apply_flags(r, combo, store)
    b_job = store.enqueue("ws-b", action_provider="p", action_name="n").job_id
    r.hset(schema.new_key("ws-a", "planted"), mapping=record("ws-b", "planted"))
    before = snapshot(raw)
    for jid in (b_job, "planted"):
        with pytest.raises(JobNotFoundError):
            store.update_status("ws-a", jid, "completed", result={"stolen": True})
    assert snapshot(raw) == before
    assert metric(store, MISMATCH, operation="update", workspace_id="ws-a") == 2
    assert json.loads(r.hget(schema.old_key(b_job), "params")) == {}
    assert r.hget(schema.old_key(b_job), "status") == "pending"
