"""Census (SPEC §5) against the private redis-server: exact counts, stored result, no KEYS."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import redis

from relayctl.core.census import last_census, run_census
from relayctl.core.demo import seed_pre_migration
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.jobs import JobStore
from relayctl.core.keys import CENSUS_KEY, KeySchema
from relayctl.core.metrics import Metrics

pytestmark = pytest.mark.engines()

SCHEMA = KeySchema()
WORKSPACES = ["ws-a", "ws-b", "ws-c"]


def _scan_count(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def _seed_mixed(r: redis.Redis) -> dict:
    """Legacy jobs (some also in the new schema), dual-written jobs, unrelated keys."""
    seeded = seed_pre_migration(r, SCHEMA, WORKSPACES, jobs=600, recent_share=0.25,
                                invalid=4, seed=11)
    set_flag(r, DUAL_WRITE, True, actor="test", reason="census test")
    dual = Counter()
    with JobStore(r, background=False, pins={}, metrics=Metrics()) as store:
        for i in range(90):
            ws = WORKSPACES[i % 3] if i % 10 else "ws-d"
            store.enqueue(ws, action_provider="openai", action_name="draft")
            dual[ws] += 1
    # keys that are none of old / new / index
    r.set("unrelated:key", "1")
    r.hset("ai:jobsx", mapping={"a": "b"})
    return {"seeded": seeded, "dual": dual}


def test_census_counts_old_new_and_index_entries_exactly(r):
    data = _seed_mixed(r)
    seeded, dual = data["seeded"], data["dual"]
    keys_before = r.dbsize()
    census = run_census(r, SCHEMA, by_workspace=True)

    in_both = Counter(ws for ws, _ in seeded.jobs[len(seeded.jobs) - seeded.in_both:])
    assert seeded.in_both == 150
    assert census.old == seeded.legacy + seeded.invalid + sum(dual.values())
    assert census.new == seeded.in_both + sum(dual.values())
    assert census.index_entries == seeded.in_both + sum(dual.values())
    assert census.index_keys == 4  # ws-a, ws-b, ws-c, ws-d
    expected_ws = {ws: {"new": in_both[ws] + dual[ws],
                        "index_entries": in_both[ws] + dual[ws]}
                   for ws in sorted(set(in_both) | set(dual))}
    assert census.by_workspace == expected_ws
    # every key of the database was scanned exactly once
    assert census.scanned == keys_before
    assert census.old + census.new + census.index_keys + census.other == census.scanned


def test_census_equals_an_independent_scan_match_count(r):
    _seed_mixed(r)
    census = run_census(r, SCHEMA, store=False)
    assert census.old == _scan_count(r, SCHEMA.old_pattern)
    assert census.new == _scan_count(r, SCHEMA.new_pattern)
    index_keys = list(r.scan_iter(match=SCHEMA.index_pattern, count=1000))
    assert census.index_keys == len(index_keys)
    assert census.index_entries == sum(r.zcard(k) for k in index_keys)


def test_census_is_stored_in_relay_census_with_its_time(r):
    _seed_mixed(r)
    census = run_census(r, SCHEMA, by_workspace=True, now=lambda: 1_700_000_123.5)
    stored = r.hgetall(CENSUS_KEY)
    assert float(stored["ts"]) == pytest.approx(1_700_000_123.5)
    assert int(stored["old"]) == census.old
    assert int(stored["new"]) == census.new
    assert int(stored["index_entries"]) == census.index_entries
    assert int(stored["index_keys"]) == census.index_keys
    assert json.loads(stored["by_workspace"]) == census.by_workspace
    again = last_census(r)
    assert again is not None
    assert (again.old, again.new, again.index_entries, again.ts) == (
        census.old, census.new, census.index_entries, pytest.approx(1_700_000_123.5))
    assert again.by_workspace == census.by_workspace


def test_census_with_store_false_leaves_relay_census_alone(r):
    _seed_mixed(r)
    run_census(r, SCHEMA, store=False)
    assert r.exists(CENSUS_KEY) == 0
    assert last_census(r) is None


def test_census_on_an_empty_database_counts_zero_and_still_records_its_time(r):
    census = run_census(r, SCHEMA, now=lambda: 42.0)
    assert (census.old, census.new, census.index_entries, census.scanned) == (0, 0, 0, 0)
    assert last_census(r).ts == 42.0


def test_census_counts_an_index_key_of_the_wrong_type_as_other_not_as_entries(r):
    r.hset(SCHEMA.new_key("ws-a", "j1"), mapping={"job_id": "j1", "workspace_id": "ws-a"})
    r.zadd(SCHEMA.index_key("ws-a"), {"j1": 1})
    r.set(SCHEMA.index_key("ws-b"), "not a zset")
    census = run_census(r, SCHEMA)
    assert (census.index_keys, census.index_entries, census.other) == (1, 1, 1)


def test_census_never_issues_keys_only_scan(r, monitor):
    _seed_mixed(r)
    with monitor() as rec:
        census = run_census(r, SCHEMA, by_workspace=True)
    names = Counter(c.split(" ", 1)[0].strip('"').upper() for c in rec.commands)
    assert names["KEYS"] == 0
    assert names["SCAN"] >= 1
    assert census.scanned > 0
    # SCAN (with the server identity: INFO), ZCARD of the index keys and the stored
    # result, plus the bytes client's handshake: nothing per legacy/new key
    assert set(names) <= {"SCAN", "INFO", "ZCARD", "DBSIZE", "HSET", "HELLO", "CLIENT"}, names
    assert names["INFO"] == 2 * names["SCAN"] + 2


def test_census_reports_progress_while_streaming(r):
    seed_pre_migration(r, SCHEMA, WORKSPACES, jobs=12_000, recent_share=0.0, ttl_share=0.0,
                       invalid=0, seed=3)
    seen: list[tuple[int, float]] = []
    census = run_census(r, SCHEMA, progress=lambda c, f: seen.append((c.scanned, f)))
    assert len(seen) >= 2  # more than one SCAN batch
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert all(0.0 <= f <= 1.0 for _, f in seen)
    assert seen[-1][0] == census.scanned == 12_000
