"""Verify (SPEC §5): parity of legacy and new records on a real redis-server."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import redis

from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.demo import seed_pre_migration
from relayctl.core.errors import UsageError
from relayctl.core.flags import FALLBACK_OLD, set_flag
from relayctl.core.keys import AUDIT_KEY, VERIFY_KEY, KeySchema
from relayctl.core.verify import KINDS, MAX_EXAMPLES, last_verify, run_verify

pytestmark = pytest.mark.engines()

SCHEMA = KeySchema()
WORKSPACES = ["ws-a", "ws-b", "ws-c"]
LEGACY = 240
INVALID = 3


@dataclass
class Migrated:
    jobs: list[tuple[str, str]]

    def with_ttl(self, r: redis.Redis, want: bool) -> list[tuple[str, str]]:
        return [(ws, j) for ws, j in self.jobs if (r.pttl(SCHEMA.old_key(j)) > 0) == want]


@pytest.fixture
def migrated(r: redis.Redis) -> Migrated:
    seeded = seed_pre_migration(r, SCHEMA, WORKSPACES, jobs=LEGACY, recent_share=0.3,
                                ttl_share=0.4, invalid=INVALID, seed=5)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    return Migrated(jobs=list(seeded.jobs))


@dataclass
class Planted:
    missing: str
    extra: str
    field_mismatch: str
    ttl_drift: str
    workspace_mismatch: str
    index_missing: str
    partial: str
    index_orphan: str
    within_tolerance: str

    def by_kind(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in KINDS}


def plant_differences(r: redis.Redis, m: Migrated) -> Planted:
    """One difference of each kind, on distinct jobs, plus a TTL drift inside the tolerance."""
    no_ttl = m.with_ttl(r, False)
    ttl = m.with_ttl(r, True)
    (ws1, j1), (ws2, j2), (ws3, j3), (ws4, j4), (ws5, j5), (ws7, j7) = no_ttl[:6]
    ws6, j6 = ttl[0]
    # missing: the new copy is gone (its index entry stays)
    r.delete(SCHEMA.new_key(ws1, j1))
    # extra: a new record with no legacy record behind it
    extra = SCHEMA.new_key("ws-b", "extra-job")
    r.hset(extra, mapping={"job_id": "extra-job", "workspace_id": "ws-b", "status": "pending"})
    r.zadd(SCHEMA.index_key("ws-b"), {"extra-job": 1})
    # field mismatch
    r.hset(SCHEMA.new_key(ws2, j2), "status", "tampered")
    # TTL drift: the legacy record never expires, its copy does in an hour
    r.expire(SCHEMA.new_key(ws3, j3), 3600)
    # the new record claims another workspace
    r.hset(SCHEMA.new_key(ws4, j4), "workspace_id", "ws-zzz")
    # the index lost the job
    r.zrem(SCHEMA.index_key(ws5), j5)
    # within tolerance: 500 ms less than the legacy TTL is not drift (tolerance 2 s)
    r.pexpire(SCHEMA.new_key(ws6, j6), r.pttl(SCHEMA.old_key(j6)) - 500)
    # partial: the copy lost fields (what the seed's update_status on a missing copy wrote)
    r.hdel(SCHEMA.new_key(ws7, j7), "params", "action_name")
    # index orphan: an entry whose job exists in neither schema (it expired)
    r.zadd(SCHEMA.index_key("ws-a"), {"expired-job": 5})
    return Planted(
        missing=SCHEMA.new_key(ws1, j1), extra=extra,
        field_mismatch=SCHEMA.new_key(ws2, j2), ttl_drift=SCHEMA.new_key(ws3, j3),
        workspace_mismatch=SCHEMA.new_key(ws4, j4), index_missing=SCHEMA.new_key(ws5, j5),
        partial=SCHEMA.new_key(ws7, j7), index_orphan=f"{SCHEMA.index_key('ws-a')} expired-job",
        within_tolerance=SCHEMA.new_key(ws6, j6),
    )


def test_verify_after_a_backfill_is_clean_and_checks_every_valid_legacy_record(r, migrated):
    report = run_verify(r, SCHEMA)
    assert report.clean, report.as_dict()
    assert report.checked == LEGACY
    assert report.invalid_legacy == INVALID
    assert report.mode == "full"


def test_verify_counts_each_planted_difference_once_with_its_example_key(r, migrated):
    planted = plant_differences(r, migrated)
    report = run_verify(r, SCHEMA)
    assert report.counts == dict.fromkeys(KINDS, 1), report.as_dict()
    for kind, key in planted.by_kind().items():
        assert report.examples[kind] == [key], kind
    assert all(planted.within_tolerance not in keys for keys in report.examples.values())
    assert not report.clean
    assert report.checked == LEGACY


def test_verify_counts_a_new_record_naming_another_workspace_without_legacy_once(r, migrated):
    key = SCHEMA.new_key("ws-a", "orphan")
    r.hset(key, mapping={"job_id": "orphan", "workspace_id": "ws-b"})
    report = run_verify(r, SCHEMA)
    assert report.counts["workspace_mismatch"] == 1
    assert report.examples["workspace_mismatch"] == [key]
    assert sum(report.counts.values()) == 1


def test_verify_counts_a_copy_whose_job_id_field_was_altered_once(r, migrated):
    ws, job = migrated.jobs[1]
    r.hset(SCHEMA.new_key(ws, job), "job_id", "someone-else")
    report = run_verify(r, SCHEMA)
    assert report.counts["field_mismatch"] == 1
    assert sum(report.counts.values()) == 1, report.as_dict()


def test_verify_reports_a_non_hash_new_copy_as_missing_and_repair_leaves_it(r, migrated):
    ws, job = migrated.jobs[0]
    r.delete(SCHEMA.new_key(ws, job))
    r.set(SCHEMA.new_key(ws, job), "not a hash")
    report = run_verify(r, SCHEMA)
    assert report.counts["missing"] == 1
    assert report.examples["missing"] == [SCHEMA.new_key(ws, job)]
    assert sum(report.counts.values()) == 1
    repaired = run_verify(r, SCHEMA, repair=True)
    assert repaired.repaired == 0 and repaired.conflicts == 1
    assert r.get(SCHEMA.new_key(ws, job)) == "not a hash"


def test_verify_sample_checks_exactly_n_legacy_keys_and_skips_the_extra_pass(r, migrated):
    plant_differences(r, migrated)
    report = run_verify(r, SCHEMA, sample=25, seed=1)
    assert report.mode == "sample"
    assert report.checked + report.invalid_legacy == 25
    assert report.counts["extra"] == 0
    everything = run_verify(r, SCHEMA, sample=10_000, seed=1)
    assert everything.checked == LEGACY
    assert everything.invalid_legacy == INVALID
    with pytest.raises(UsageError):
        run_verify(r, SCHEMA, sample=0)


def test_verify_workspace_option_checks_only_that_workspace(r, migrated):
    plant_differences(r, migrated)
    only = "ws-c"
    report = run_verify(r, SCHEMA, workspaces=(only,))
    assert report.checked == sum(1 for ws, _ in migrated.jobs if ws == only)
    for keys in report.examples.values():
        assert all(k.startswith(f"ai:job:{only}:") for k in keys)
    with pytest.raises(Exception, match="workspace"):
        run_verify(r, SCHEMA, workspaces=("Bad*WS",))


def test_verify_examples_are_capped_at_twenty_per_kind_but_counts_are_exact(r, migrated):
    victims = migrated.jobs[:MAX_EXAMPLES + 7]
    for ws, job in victims:
        r.delete(SCHEMA.new_key(ws, job))
    report = run_verify(r, SCHEMA)
    assert report.counts["missing"] == MAX_EXAMPLES + 7
    assert len(report.examples["missing"]) == MAX_EXAMPLES


def test_verify_repair_fills_what_is_missing_and_reports_differing_fields_as_conflicts(
        r, migrated):
    planted = plant_differences(r, migrated)
    tampered = r.hgetall(planted.field_mismatch)
    report = run_verify(r, SCHEMA, repair=True)
    # missing, ttl_drift, index_missing and partial are filled; the orphan entry is removed
    assert report.repaired == 4
    assert report.repairs["orphans_removed"] == 1
    # "tampered" and another workspace's record are not provably older: left alone
    assert report.conflicts == 2
    assert set(report.conflict_examples) == {planted.field_mismatch, planted.workspace_mismatch}
    assert r.hgetall(planted.field_mismatch) == tampered
    again = run_verify(r, SCHEMA)
    assert again.counts == {**dict.fromkeys(KINDS, 0), "extra": 1, "field_mismatch": 1,
                            "workspace_mismatch": 1}, again.as_dict()
    for kind in ("missing", "ttl_drift", "index_missing", "partial"):
        new_key = getattr(planted, kind)
        ws, job = new_key.split(":")[2], new_key.split(":")[3]
        assert r.hgetall(new_key) == r.hgetall(SCHEMA.old_key(job)), kind
        assert r.pttl(new_key) == r.pttl(SCHEMA.old_key(job)) == -1, kind
        assert r.zscore(SCHEMA.index_key(ws), job) is not None, kind
    assert r.zscore(SCHEMA.index_key("ws-a"), "expired-job") is None

    preferred = run_verify(r, SCHEMA, repair=True, prefer_legacy=True, reason="legacy wins")
    assert preferred.repairs["overwritten"] == 2 and preferred.conflicts == 0
    final = run_verify(r, SCHEMA)
    assert final.counts == {**dict.fromkeys(KINDS, 0), "extra": 1}, final.as_dict()
    actions = [(f["action"], f["reason"]) for _, f in r.xrange(AUDIT_KEY)]
    assert ("verify.repair.start", "legacy wins") in actions
    assert ("verify.repair.end", "legacy wins") in actions


def test_verify_repair_is_refused_once_fallback_is_off_unless_forced(r, migrated):
    planted = plant_differences(r, migrated)
    set_flag(r, FALLBACK_OLD, False, actor="test", reason="phase 5")
    with pytest.raises(UsageError, match="READ_FALLBACK_OLD"):
        run_verify(r, SCHEMA, repair=True)
    assert r.hget(planted.field_mismatch, "status") == "tampered"  # nothing was repaired
    assert r.exists(planted.missing) == 0
    forced = run_verify(r, SCHEMA, repair=True, force=True)
    assert forced.repaired == 4
    assert r.exists(planted.missing) == 1


def test_verify_summary_lands_in_relay_verify_last_for_the_gates(r, migrated):
    planted = plant_differences(r, migrated)
    run_verify(r, SCHEMA, now=lambda: 1_700_000_000.0)
    raw = r.hgetall(VERIFY_KEY)
    assert raw["clean"] == "0"
    assert raw["mode"] == "full"
    assert int(raw["checked"]) == LEGACY
    assert json.loads(raw["counts"]) == dict.fromkeys(KINDS, 1)
    assert json.loads(raw["examples"])["missing"] == [planted.missing]
    last = last_verify(r)
    assert last == {"ts": 1_700_000_000.0, "mode": "full", "clean": False, "checked": LEGACY,
                    "counts": dict.fromkeys(KINDS, 1), "repaired": 0,
                    "started": 1_700_000_000.0, "complete": True, "workspaces": "",
                    "conflicts": 0}
    run_verify(r, SCHEMA, repair=True, prefer_legacy=True, now=lambda: 1_700_000_100.0)
    run_verify(r, SCHEMA, now=lambda: 1_700_000_200.0)
    last = last_verify(r)
    assert last["ts"] == 1_700_000_200.0
    assert last["counts"]["extra"] == 1 and sum(last["counts"].values()) == 1
