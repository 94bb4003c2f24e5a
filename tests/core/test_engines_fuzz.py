"""Byte-level fuzz of the engines (issue 14 item 6): Redis data made of arbitrary bytes —
key names, field names and values — run through the backfill (dry run and execute), census,
verify and archive export on a real redis-server. None may raise; a dry run leaves the
keyspace digest unchanged; a valid record is copied byte-exact; counters add up."""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis
from backfill_kit import assert_counters_add_up, dual_write_on
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayctl.core.archive import export
from relayctl.core.backfill import Backfill, BackfillOptions, read_state
from relayctl.core.census import run_census
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.verify import run_verify

SCHEMA = KeySchema()
EXAMPLES = 100

junk_records = st.lists(
    st.tuples(st.binary(max_size=20),
              st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=24),
                              max_size=4)),
    max_size=10, unique_by=lambda t: t[0])
valid_jobs = st.lists(
    st.tuples(st.sampled_from([b"ws-a", b"ws-b"]),
              st.from_regex(rb"\A[a-z0-9][a-z0-9_.-]{0,11}\Z"),
              st.binary(max_size=40)),  # params: any bytes
    max_size=8, unique_by=lambda t: t[1])


def digest(raw: redis.Redis) -> str:
    h = hashlib.sha256()
    for key in sorted(raw.scan_iter(count=1000)):
        h.update(key + b"\0" + (raw.dump(key) or b"") + str(raw.pttl(key)).encode())
    return h.hexdigest()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(junk=junk_records, jobs=valid_jobs)
def test_arbitrary_bytes_never_break_an_engine_and_valid_records_copy_byte_exact(
        r: redis.Redis, raw: redis.Redis, tmp_path: Path,
        junk: list[tuple[bytes, dict[bytes, bytes]]],
        jobs: list[tuple[bytes, bytes, bytes]]) -> None:
    raw.flushall()
    for suffix, fields in junk:
        key = b"ai:jobs:" + suffix
        if fields:
            raw.hset(key, mapping=fields)
        else:
            raw.set(key, b"\xff not a hash")
    for ws, job_id, params in jobs:
        raw.delete(b"ai:jobs:" + job_id)  # a valid job replaces junk of the same name
        raw.hset(b"ai:jobs:" + job_id, mapping={
            b"workspace_id": ws, b"job_id": job_id, b"status": b"pending", b"params": params,
            b"enqueued_at": b"2024-05-01T10:00:00+00:00"})
    dual_write_on(r)
    before = digest(raw)
    assert Backfill(r, BackfillOptions(execute=False), metrics=Metrics()).run() in (0, 1)
    assert digest(raw) == before, "a dry run wrote something"
    assert Backfill(r, BackfillOptions(execute=True), metrics=Metrics()).run() in (0, 1)
    c = assert_counters_add_up(read_state(r))
    assert c["migrated"] >= len({j for _w, j, _p in jobs} - {b"ai:jobs:" + s for s, _ in junk})
    for ws, job_id, _params in jobs:
        old = raw.hgetall(b"ai:jobs:" + job_id)
        if old.get(b"job_id") == job_id and old.get(b"workspace_id") == ws:
            new = raw.hgetall(SCHEMA.new_key(ws.decode(), job_id.decode()))
            assert new == old, job_id
    run_census(r, SCHEMA)
    run_verify(r, SCHEMA)
    archive = tmp_path / "fuzz.jsonl.gz"
    archive.unlink(missing_ok=True)  # hypothesis reuses the test's tmp_path
    export(r, SCHEMA, archive)
