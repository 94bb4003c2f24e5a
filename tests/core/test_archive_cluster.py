"""Archive export / delete / restore (SPEC §5, phase 6) on a real Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from cluster_kit import SCHEMAS, cluster_client, legacy_state, primary_addresses, spread
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from relayctl.core.archive import (
    DELETE_IF_SAME,
    binary_client,
    check_archive,
    delete_verified,
    export,
    restore,
)
from relayctl.core.cluster import Router, run_script
from relayctl.core.demo import seed_pre_migration
from relayctl.core.keys import AUDIT_KEY, KeySchema
from relayctl.core.verify import run_verify

WORKSPACES = ["ws-a", "ws-b", "ws-c"]
LEGACY = 90
INVALID = 3


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


@pytest.fixture(params=list(SCHEMAS))
def schema(request: pytest.FixtureRequest) -> KeySchema:
    return SCHEMAS[request.param]


@pytest.fixture
def rc(cluster_url: str) -> Iterator[RedisCluster]:
    client = cluster_client(cluster_url)
    yield client
    client.close()


@pytest.fixture
def world(rc: RedisCluster, schema: KeySchema) -> list[tuple[str, str]]:
    """Every legacy job copied (some with TTLs), a few invalid legacy records."""
    seeded = seed_pre_migration(rc, schema, WORKSPACES, jobs=LEGACY, recent_share=1.0,
                                ttl_share=0.5, invalid=INVALID, seed=9)
    assert run_verify(rc, schema).clean  # the fresh verify archive delete requires
    return list(seeded.jobs)


def test_cluster_export_delete_restore_is_byte_identical(rc, schema, world, tmp_path):
    before = legacy_state(rc, schema)
    assert len(before) == LEGACY + INVALID
    assert set(spread(rc, [k.decode() for k in before])) == primary_addresses(rc)
    assert sum(1 for _, ttl in before.values() if ttl > 0) > 10
    path = tmp_path / "legacy.jsonl.gz"
    summary = export(rc, schema, path)
    assert summary.count == LEGACY + INVALID
    assert check_archive(path, schema) == LEGACY + INVALID

    deleted = delete_verified(rc, schema, path, actor="oncall", reason="phase 6", batch=17,
                              force=True)
    assert nonzero(deleted.counts) == {"deleted": LEGACY, "invalid": INVALID}
    assert len(legacy_state(rc, schema)) == INVALID
    assert all(rc.exists(schema.new_key(ws, j)) for ws, j in world)  # copies untouched

    restored = restore(rc, schema, path, actor="oncall", reason="undo phase 6")
    assert nonzero(restored.counts) == {"restored": LEGACY, "exists": INVALID}
    after = legacy_state(rc, schema)
    assert set(after) == set(before)
    for key, (dump, ttl) in before.items():
        assert after[key][0] == dump, key
        if ttl < 0:
            assert after[key][1] == -1, key
        else:
            assert abs(after[key][1] - ttl) <= 1000, key
    actions = [f["action"] for _, f in rc.xrange(AUDIT_KEY)]
    for action in ("archive.delete.start", "archive.delete.end", "archive.restore.start",
                   "archive.restore.end"):
        assert action in actions


def test_cluster_delete_keeps_legacy_keys_changed_since_export_or_whose_copy_differs(
        rc, schema, world, tmp_path):
    path = tmp_path / "a.gz"
    export(rc, schema, path)
    (_ws1, j1), (ws2, j2), (ws3, j3), (ws4, j4) = world[:4]
    rc.hset(schema.old_key(j1), "status", "failed")  # legacy changed after the export
    rc.hset(schema.new_key(ws2, j2), "status", "failed")  # the copy differs
    rc.delete(schema.new_key(ws3, j3))  # the copy is missing
    rc.hset(schema.new_key(ws4, j4), "extra_field", "x")  # the copy has one more field
    summary = delete_verified(rc, schema, path, actor="a", reason="x", force=True)
    assert nonzero(summary.counts) == {"deleted": LEGACY - 4, "changed": 1, "field_mismatch": 2,
                                       "missing": 1, "invalid": INVALID}
    assert rc.exists(*(schema.old_key(j) for j in (j1, j2, j3, j4))) == 4
    assert rc.hget(schema.old_key(j1), "status") == "failed"


def test_cluster_delete_script_deletes_only_a_legacy_key_holding_the_judged_fields(
        rc, schema, world):
    """DELETE_IF_SAME: 1 deleted; 0 when gone, or any field differs, is missing or extra."""
    (_ws1, j1), (_ws2, j2), (ws3, j3) = world[:3]
    bclient = binary_client(rc)
    router = Router(bclient)
    try:
        fields = {j: [x for kv in bclient.hgetall(schema.old_key(j)).items() for x in kv]
                  for j in (j1, j2, j3)}
        calls = [
            ([schema.old_key("never-existed")], [b"job_id", b"x"]),
            ([schema.old_key(j1)], fields[j2]),
            ([schema.old_key(j2)], fields[j2][:-2]),
            ([schema.old_key(j2)], [*fields[j2][:-1], b"other"]),
            ([schema.old_key(j2)], [*fields[j2], b"more", b"x"]),
            ([schema.old_key(j3)], fields[j3]),
        ]
        codes = run_script(router, DELETE_IF_SAME, calls)
    finally:
        router.close()
        bclient.close()
    assert codes == [0, 0, 0, 0, 0, 1]
    assert rc.exists(schema.old_key(j1), schema.old_key(j2)) == 2
    assert rc.exists(schema.old_key(j3)) == 0
    assert rc.exists(schema.new_key(ws3, j3)) == 1


def test_cluster_delete_counts_a_legacy_key_gone_since_export(rc, schema, world, tmp_path):
    path = tmp_path / "a.gz"
    export(rc, schema, path)
    rc.delete(schema.old_key(world[0][1]))
    summary = delete_verified(rc, schema, path, actor="a", reason="x", force=True)
    assert nonzero(summary.counts) == {"deleted": LEGACY - 1, "gone": 1, "invalid": INVALID}


def test_cluster_restore_never_overwrites_an_existing_key(rc, schema, world, tmp_path):
    path = tmp_path / "a.gz"
    export(rc, schema, path)
    delete_verified(rc, schema, path, actor="a", reason="x", force=True)
    _ws, job = world[0]
    occupant = {"job_id": job, "workspace_id": "ws-a", "status": "newer"}
    rc.hset(schema.old_key(job), mapping=occupant)
    summary = restore(rc, schema, path, actor="a", reason="x")
    assert nonzero(summary.counts) == {"restored": LEGACY - 1, "exists": INVALID + 1}
    assert rc.hgetall(schema.old_key(job)) == occupant


def test_cluster_scripts_are_reloaded_when_a_node_forgot_them(rc, schema, world, tmp_path,
                                                             redis_cluster):
    path = tmp_path / "a.gz"
    export(rc, schema, path)
    for port in redis_cluster.primaries():
        node = redis_cluster.node_client(port)
        node.script_flush()
        node.close()
    summary = delete_verified(rc, schema, path, actor="a", reason="x", force=True)
    assert summary.counts["deleted"] == LEGACY


def test_the_router_follows_redirections_from_a_stale_slot_map(rc, schema, world):
    """Every slot mapped to one node (as after a resharding): MOVED replies are re-sent."""
    keys = [schema.old_key(j) for _ws, j in world]
    expected = [rc.hget(k, "job_id") for k in keys]
    router = Router(rc)
    first = rc.get_primaries()[0].name
    try:
        router.node_name = lambda _key: first  # a stale map: one node for every slot
        assert router.run([("HGET", k, "job_id") for k in keys]) == expected
        del router.node_name
        assert router.run([("HGET", k, "job_id") for k in keys]) == expected
    finally:
        router.close()


def test_the_router_sends_a_dead_nodes_share_through_the_cluster_client(rc, schema, world):
    keys = [schema.old_key(j) for _ws, j in world]
    router = Router(rc)
    dead = redis.Redis(port=1, decode_responses=True, socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    try:
        victim = rc.get_primaries()[1].name
        router._clients[victim] = dead
        assert router.run([("EXISTS", k) for k in keys]) == [1] * len(keys)
        assert victim not in router._clients  # forgotten: the next batch reconnects
    finally:
        router.close()
        dead.close()
