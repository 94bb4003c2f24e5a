"""The job store reads bytes (issue 14 item 2, 6): an undecodable record is a typed, counted
CorruptRecordError for get_job and a skipped, counted record for list_jobs, whose pages stay
full; index entries of vanished jobs are removed as list_jobs meets them (issue 13 item 8)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobstore_kit import ALL_COMBOS, Combo, apply_flags, metric, paginate

from relayctl.core.errors import ValidationError
from relayctl.core.jobs import JOB_FIELDS, PRUNE_PER_CALL, CorruptRecordError, Job

pytestmark = pytest.mark.backends("standalone", "cluster")

DESERIALIZE = "relay_job_deserialize_errors_total"
PRUNED = "relay_index_orphans_removed_total"
PAYLOAD = b"\xff\xfesecret-payload\x80"
ALL_ON = Combo(dual=True, prefers_new=True, fallback=True)


def _enqueue(store, n: int, ws: str = "ws-a", **kwargs) -> list[str]:
    start = 1_700_000_000.0
    return [store.enqueue(ws, action_provider="p", action_name="n", params={"i": i},
                          now=start + i, **kwargs).job_id for i in range(n)]


def _corrupt(raw, schema, ws: str, job_id: str, name: str = "params") -> None:
    for key in (schema.old_key(job_id), schema.new_key(ws, job_id)):
        if raw.exists(key):
            raw.hset(key, name, PAYLOAD)


def test_get_job_raises_corrupt_record_error_naming_the_job_and_counts_it(
        r, raw, store, schema, combo):
    apply_flags(r, Combo(dual=True, prefers_new=False, fallback=False), store)
    good, bad = _enqueue(store, 2)
    _corrupt(raw, schema, "ws-a", bad)
    apply_flags(r, combo, store)
    assert store.get_job("ws-a", good).params == '{"i":0}'
    with pytest.raises(CorruptRecordError) as caught:
        store.get_job("ws-a", bad)
    message = str(caught.value)
    assert bad in message and "params" in message and "ws-a" in message
    assert "secret" not in message and "\\xff" not in message
    assert caught.value.exit_code == 1
    assert metric(store, DESERIALIZE) == 1
    # another workspace never learns the record exists, corrupt or not
    assert store.get_job("ws-b", bad) is None
    assert metric(store, DESERIALIZE) == 1


@pytest.mark.parametrize("field", ["params", "status", "enqueued_at", "result", "action_name"])
def test_list_jobs_skips_and_counts_corrupt_records_and_pages_stay_full(
        r, raw, store, schema, combo, field):
    apply_flags(r, Combo(dual=True, prefers_new=False, fallback=False), store)
    ids = _enqueue(store, 130)
    corrupt = set(ids[5::7])  # 18 records
    for job_id in corrupt:
        _corrupt(raw, schema, "ws-a", job_id, field)
    apply_flags(r, combo, store)
    pages = paginate(store, "ws-a", limit=25)
    listed = [j.job_id for page in pages for j in page]
    assert sorted(listed) == sorted(set(ids) - corrupt)
    assert all(len(page) == 25 for page in pages[:-1]), [len(p) for p in pages]
    assert metric(store, DESERIALIZE) >= len(corrupt)


def test_non_utf8_key_names_and_index_members_do_not_break_listing(r, raw, store, schema,
                                                                   combo):
    apply_flags(r, Combo(dual=True, prefers_new=False, fallback=False), store)
    ids = _enqueue(store, 40)
    index = schema.index_key("ws-a").encode()
    raw.zadd(index, {b"\xff\xfe-job": 1_700_000_010_500})
    stray = {name.encode(): b"" for name in JOB_FIELDS}
    stray.update({b"job_id": b"j\xff", b"workspace_id": b"ws-a", b"status": b"pending"})
    raw.hset(schema.old_key("x").encode()[:-1] + b"\xff\xfe", mapping=stray)
    raw.hset(schema.old_key("x").encode()[:-1] + b"j\xff", mapping=stray)
    apply_flags(r, combo, store)
    listed = [j.job_id for page in paginate(store, "ws-a", limit=7) for j in page]
    assert sorted(listed) == sorted(ids)


def test_ten_thousand_expired_jobs_leave_full_pages_and_their_index_entries_are_removed(
        r, make_store, schema, backend):
    store = make_store()
    apply_flags(r, ALL_ON, store)
    live: list[str] = []
    start = 1_700_000_000.0
    for i in range(12_500):
        job = store.enqueue("ws-a", action_provider="p", action_name="n", now=start + i,
                            ttl_seconds=None if i % 5 == 0 else 1.0)
        if i % 5 == 0:
            live.append(job.job_id)
    index = schema.index_key("ws-a")
    assert r.zcard(index) == 12_500
    time.sleep(1.2)
    for combo in (ALL_ON, Combo(dual=True, prefers_new=True, fallback=False)):
        apply_flags(r, combo, store)
        pages = paginate(store, "ws-a", limit=50)
        listed = [j.job_id for page in pages for j in page]
        assert sorted(listed) == sorted(live)
        assert all(len(page) == 50 for page in pages[:-1]), [len(p) for p in pages]
    assert r.zcard(index) == len(live)
    assert metric(store, PRUNED) == 10_000


def test_one_list_call_removes_at_most_prune_per_call_orphans(r, make_store, schema):
    store = make_store()
    apply_flags(r, ALL_ON, store)
    index = schema.index_key("ws-a")
    live = _enqueue(store, 3)
    r.zadd(index, {f"gone-{i:04d}": 1_800_000_000_000 + i for i in range(1000)})
    page = store.list_jobs("ws-a", limit=10)
    assert sorted(j.job_id for j in page.jobs) == sorted(live)
    assert r.zcard(index) == 1003 - PRUNE_PER_CALL
    assert metric(store, PRUNED) == PRUNE_PER_CALL


def test_an_index_entry_whose_job_still_has_a_legacy_record_is_never_pruned(
        r, make_store, schema):
    store = make_store()
    apply_flags(r, ALL_ON, store)
    ids = _enqueue(store, 5)
    for job_id in ids:
        r.delete(schema.new_key("ws-a", job_id))  # new copies lost, legacy records remain
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=False), store)
    assert paginate(store, "ws-a", limit=10) == [[]]
    assert r.zcard(schema.index_key("ws-a")) == 5
    apply_flags(r, ALL_ON, store)
    listed = [j.job_id for page in paginate(store, "ws-a", limit=10) for j in page]
    assert sorted(listed) == sorted(ids)


# --- byte-level fuzz of the JobStore reads (issue 14 item 6) ---------------------------------

TRIED = {"datasets": 0, "records": 0, "reads": 0}
_ID = st.one_of(st.sampled_from(["j1", "j2", "job-3"]), st.binary(min_size=0, max_size=12))
_VALUE = st.one_of(st.binary(max_size=24), st.sampled_from(
    [b"", b"ws-a", b"ws-b", b"pending", b"{}", b"2024-01-01T00:00:00Z", b"20240101", b"j1"]))
_FIELD = st.one_of(st.sampled_from([f.encode() for f in JOB_FIELDS]), st.binary(max_size=10))


@st.composite
def hostile_record(draw: st.DrawFn) -> tuple[bytes, bytes, dict[bytes, bytes], float | None]:
    """(job id, workspace, record, index score or None): mostly plausible, bytes anywhere."""
    job_id = draw(_ID)
    job_id = job_id if isinstance(job_id, bytes) else job_id.encode()
    ws = draw(st.sampled_from([b"ws-a", b"ws-a", b"ws-b", b"ws-\xff"]))
    record = draw(st.dictionaries(_FIELD, _VALUE, max_size=8))
    if draw(st.integers(0, 3)):
        record[b"job_id"] = job_id
        record[b"workspace_id"] = draw(st.sampled_from([ws, ws, b"ws-a", b"\xff"]))
    score = draw(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False,
                                                width=32)))
    return job_id, ws, record, score


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(records=st.lists(hostile_record(), min_size=1, max_size=12),
       where=st.lists(st.sampled_from(["old", "new", "both"]), min_size=12, max_size=12))
def test_jobstore_reads_of_byte_level_data_never_traceback(r, raw, make_store, schema,
                                                           backend, records, where):
    r.flushall()
    store = make_store()
    for (job_id, ws, record, score), place in zip(records, where, strict=False):
        old = schema.old_key("x").encode()[:-1] + job_id
        new = schema.new_key("ws-a", "x").encode().replace(b"ws-a", ws)[:-1] + job_id
        index = schema.index_key("ws-a").encode().replace(b"ws-a", ws)
        for key, wanted in ((old, "old"), (new, "new")):
            if record and place in (wanted, "both"):
                raw.hset(key, mapping=record)
        if score is not None:
            raw.zadd(index, {job_id: score})
    TRIED["datasets"] += 1
    TRIED["records"] += len(records)
    for combo in ALL_COMBOS[::3]:
        apply_flags(r, combo, store)
        for ws in ("ws-a", "ws-b"):
            listed = [j for page in paginate(store, ws, limit=3) for j in page]
            assert all(isinstance(j, Job) and j.workspace_id == ws for j in listed)
            TRIED["reads"] += 1
        for job_id, _ws, _record, _score in records:
            try:
                text = job_id.decode()
            except UnicodeDecodeError:
                continue
            try:
                job = store.get_job("ws-a", text)
            except (CorruptRecordError, ValidationError):
                continue
            finally:
                TRIED["reads"] += 1
            assert job is None or (job.job_id == text and job.workspace_id == "ws-a")


def test_report_how_many_byte_level_inputs_the_jobstore_fuzz_tried():
    print(f"\njobstore byte fuzz: {TRIED['datasets']} datasets, {TRIED['records']} records, "
          f"{TRIED['reads']} reads")


def test_update_status_of_a_corrupt_record_copies_its_bytes_exactly(r, raw, store, schema):
    apply_flags(r, Combo(dual=False, prefers_new=False, fallback=True), store)
    (job_id,) = _enqueue(store, 1)
    raw.hset(schema.old_key(job_id), "params", PAYLOAD)
    apply_flags(r, ALL_ON, store)
    assert store.update_status("ws-a", job_id, "running") == "old+created"
    copy = raw.hgetall(schema.new_key("ws-a", job_id))
    assert copy == raw.hgetall(schema.old_key(job_id))
    assert copy[b"params"] == PAYLOAD and copy[b"status"] == b"running"
    assert r.zscore(schema.index_key("ws-a"), job_id) == 1_700_000_000_000
    assert store.update_status("ws-a", job_id, "completed") == "both"
    with pytest.raises(CorruptRecordError):
        store.get_job("ws-a", job_id)
