"""Verify (SPEC §5) on a real Redis Cluster, with the seed's and hash-tagged key templates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cluster_kit import SCHEMAS, cluster_client, dump_of, primary_addresses, spread
from redis.cluster import RedisCluster

from relayctl.core.archive import binary_client
from relayctl.core.cluster import Router, key_slot
from relayctl.core.demo import seed_pre_migration
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import VERIFY_KEY, KeySchema
from relayctl.core.verify import KINDS, _repair_on_cluster, last_verify, run_verify

WORKSPACES = ["ws-a", "ws-b", "ws-c", "ws-d", "ws-e", "ws-f"]
LEGACY = 240
INVALID = 3

Job = tuple[str, str]


@pytest.fixture(params=list(SCHEMAS))
def schema(request: pytest.FixtureRequest) -> KeySchema:
    return SCHEMAS[request.param]


@pytest.fixture
def rc(cluster_url: str) -> Iterator[RedisCluster]:
    client = cluster_client(cluster_url)
    yield client
    client.close()


@pytest.fixture
def migrated(rc: RedisCluster, schema: KeySchema) -> list[Job]:
    """Every legacy job copied and indexed (a finished backfill), some with TTLs."""
    seeded = seed_pre_migration(rc, schema, WORKSPACES, jobs=LEGACY, recent_share=1.0,
                                ttl_share=0.4, invalid=INVALID, seed=5)
    assert seeded.in_both == LEGACY
    return list(seeded.jobs)


def with_ttl(rc: RedisCluster, schema: KeySchema, jobs: list[Job], want: bool) -> list[Job]:
    return [(ws, j) for ws, j in jobs if (rc.pttl(schema.old_key(j)) > 0) == want]


@dataclass
class Planted:
    jobs: dict[str, Job]  # kind -> (ws, job_id), every kind but extra
    extra: str
    within_tolerance: str
    orphan: str

    def example(self, schema: KeySchema, kind: str) -> str:
        if kind == "index_orphan":
            return self.orphan
        return self.extra if kind == "extra" else schema.new_key(*self.jobs[kind])


def plant_differences(rc: RedisCluster, schema: KeySchema, jobs: list[Job]) -> Planted:
    """One difference of each kind on distinct jobs, plus a TTL drift inside the tolerance."""
    no_ttl = with_ttl(rc, schema, jobs, False)
    ttl = with_ttl(rc, schema, jobs, True)
    picked = {"missing": ttl[0], "field_mismatch": no_ttl[0], "ttl_drift": no_ttl[1],
              "workspace_mismatch": no_ttl[2], "index_missing": ttl[1]}
    new = {kind: schema.new_key(ws, j) for kind, (ws, j) in picked.items()}
    rc.delete(new["missing"])
    extra = schema.new_key("ws-b", "extra-job")
    rc.hset(extra, mapping={"job_id": "extra-job", "workspace_id": "ws-b", "status": "pending"})
    rc.zadd(schema.index_key("ws-b"), {"extra-job": 1})
    rc.hset(new["field_mismatch"], "status", "tampered")
    rc.expire(new["ttl_drift"], 3600)
    rc.hset(new["workspace_mismatch"], "workspace_id", "ws-zzz")
    ws, job = picked["index_missing"]
    rc.zrem(schema.index_key(ws), job)
    ws6, j6 = ttl[2]
    rc.pexpire(schema.new_key(ws6, j6), rc.pttl(schema.old_key(j6)) - 500)
    picked["partial"] = no_ttl[3]
    rc.hdel(schema.new_key(*no_ttl[3]), "params", "action_name")
    rc.zadd(schema.index_key("ws-a"), {"expired-job": 5})
    return Planted(jobs=picked, extra=extra, within_tolerance=schema.new_key(ws6, j6),
                   orphan=f"{schema.index_key('ws-a')} expired-job")


def test_the_templates_put_copies_and_indexes_where_the_test_expects(rc, schema, migrated):
    """Seed templates: copy and index in different slots; hash-tagged: the same slot."""
    pairs = [(schema.new_key(ws, j), schema.index_key(ws)) for ws, j in migrated]
    same = sum(key_slot(new) == key_slot(idx) for new, idx in pairs)
    assert same == (len(pairs) if schema is SCHEMAS["tagged"] else 0)
    primaries = primary_addresses(rc)
    assert set(spread(rc, [schema.old_key(j) for _ws, j in migrated])) == primaries
    assert set(spread(rc, [new for new, _idx in pairs])) == primaries


def test_cluster_verify_of_a_clean_migration_is_clean(rc, schema, migrated):
    report = run_verify(rc, schema)
    assert report.clean, report.as_dict()
    assert report.checked == LEGACY
    assert report.invalid_legacy == INVALID
    assert rc.hget(VERIFY_KEY, "clean") == "1"
    assert last_verify(rc)["checked"] == LEGACY


def test_cluster_verify_finds_each_kind_once_with_its_example(rc, schema, migrated):
    planted = plant_differences(rc, schema, migrated)
    report = run_verify(rc, schema)
    assert report.counts == dict.fromkeys(KINDS, 1), report.as_dict()
    for kind in KINDS:
        assert report.examples[kind] == [planted.example(schema, kind)], kind
    assert all(planted.within_tolerance not in keys for keys in report.examples.values())
    assert report.checked == LEGACY


def test_cluster_verify_repair_fixes_the_copies_and_a_second_run_is_clean(rc, schema,
                                                                         migrated):
    planted = plant_differences(rc, schema, migrated)
    report = run_verify(rc, schema, repair=True)
    # filled: missing, ttl_drift, index_missing, partial; the orphan removed; "tampered" and
    # another workspace's record are not provably older: conflicts, left alone
    assert report.repaired == 4 and report.repairs["orphans_removed"] == 1
    assert report.conflicts == 2
    assert rc.hget(schema.new_key(*planted.jobs["field_mismatch"]), "status") == "tampered"
    again = run_verify(rc, schema)
    assert again.counts == {**dict.fromkeys(KINDS, 0), "extra": 1, "field_mismatch": 1,
                            "workspace_mismatch": 1}, again.as_dict()
    run_verify(rc, schema, repair=True, prefer_legacy=True, reason="legacy wins")
    again = run_verify(rc, schema)
    assert again.counts == {**dict.fromkeys(KINDS, 0), "extra": 1}, again.as_dict()
    for kind, (ws, job) in planted.jobs.items():
        new, old = schema.new_key(ws, job), schema.old_key(job)
        if kind in ("missing", "field_mismatch", "workspace_mismatch"):
            assert dump_of(rc, new) == dump_of(rc, old), kind  # restored byte-identical
        assert rc.hgetall(new) == rc.hgetall(old), kind
        old_ttl, new_ttl = rc.pttl(old), rc.pttl(new)
        assert (old_ttl < 0) == (new_ttl < 0), kind
        assert abs(old_ttl - new_ttl) <= 2000, kind
        assert rc.zscore(schema.index_key(ws), job) == iso_to_ms(rc.hget(old, "enqueued_at"))
    assert rc.pttl(schema.new_key(*planted.jobs["missing"])) > 0  # the TTL was carried over
    assert rc.pttl(schema.new_key(*planted.jobs["ttl_drift"])) == -1
    rc.delete(planted.extra)
    rc.zrem(schema.index_key("ws-b"), "extra-job")
    assert run_verify(rc, schema).clean


def test_cluster_repair_never_overwrites_a_copy_that_is_not_a_hash(rc, schema, migrated):
    ws, job = migrated[0]
    rc.delete(schema.new_key(ws, job))
    rc.set(schema.new_key(ws, job), "not a hash")
    report = run_verify(rc, schema, repair=True)
    assert report.counts == {**dict.fromkeys(KINDS, 0), "missing": 1}
    assert report.repaired == 0
    assert rc.get(schema.new_key(ws, job)) == "not a hash"


def test_cluster_repair_skips_a_legacy_record_that_changed_hands_or_vanished(rc, schema,
                                                                             migrated):
    """The pairs verify found can change before the repair reads the legacy side."""
    (ws1, j1), (ws2, j2), (ws3, j3) = migrated[:3]
    for ws, job in ((ws1, j1), (ws2, j2), (ws3, j3)):
        rc.hset(schema.new_key(ws, job), "status", "tampered")
    rc.hset(schema.old_key(j1), "workspace_id", "ws-zzz")
    rc.delete(schema.old_key(j2))
    bclient = binary_client(rc)
    router = Router(bclient)
    try:
        repaired = _repair_on_cluster(router, schema, [(schema.old_key(j), ws, j)
                                                       for ws, j in migrated[:3]])
    finally:
        router.close()
        bclient.close()
    assert repaired == 1
    assert rc.hget(schema.new_key(ws1, j1), "status") == "tampered"
    assert rc.hget(schema.new_key(ws2, j2), "status") == "tampered"
    assert rc.hgetall(schema.new_key(ws3, j3)) == rc.hgetall(schema.old_key(j3))


def test_cluster_verify_sample_checks_exactly_n_keys_from_every_shard(rc, schema, migrated):
    plant_differences(rc, schema, migrated)
    report = run_verify(rc, schema, sample=25, seed=1)
    assert report.mode == "sample"
    assert report.checked + report.invalid_legacy == 25
    assert report.counts["extra"] == 0
    everything = run_verify(rc, schema, sample=10_000, seed=1)
    assert everything.checked == LEGACY
    assert everything.invalid_legacy == INVALID
    # all but extra and index_orphan (the sample pass checks legacy records only)
    assert sum(everything.counts.values()) == len(KINDS) - 2


def test_cluster_verify_workspace_option_checks_only_that_workspace(rc, schema, migrated):
    plant_differences(rc, schema, migrated)
    only = "ws-c"
    report = run_verify(rc, schema, workspaces=(only,))
    assert report.checked == sum(1 for ws, _ in migrated if ws == only)
    prefix = schema.new_key(only, "")
    for keys in report.examples.values():
        assert all(k.startswith(prefix) for k in keys)
