"""Census (SPEC §5) on a real Redis Cluster: every primary scanned, counts match DBSIZE."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cluster_kit import SCHEMAS, cluster_client, primary_addresses, spread
from redis.cluster import RedisCluster

from relayctl.core.census import last_census, run_census
from relayctl.core.demo import seed_pre_migration
from relayctl.core.keys import CENSUS_KEY, KeySchema

WORKSPACES = [f"ws-{i}" for i in range(12)]
JOBS = 900
INVALID = 4
OTHER = 40


@pytest.fixture
def rc(cluster_url: str) -> Iterator[RedisCluster]:
    client = cluster_client(cluster_url)
    yield client
    client.close()


@dataclass
class Dataset:
    old: list[str]
    new: list[str]
    index: dict[str, int]  # index key -> entries
    other: list[str]


def seed_dataset(rc: RedisCluster, schema: KeySchema) -> Dataset:
    """Legacy jobs (40% also copied and indexed), invalid legacy records, unrelated keys."""
    seeded = seed_pre_migration(rc, schema, WORKSPACES, jobs=JOBS, recent_share=0.4,
                                invalid=INVALID, seed=21)
    copied = seeded.jobs[JOBS - seeded.in_both:]
    other = [f"unrelated:{i}" for i in range(OTHER - 1)] + ["ai:jobsx"]
    pipe = rc.pipeline(transaction=False)
    for key in other:
        pipe.set(key, "1")
    pipe.execute()
    return Dataset(
        old=[schema.old_key(j) for _ws, j in seeded.jobs]
        + [schema.old_key(f"corrupt-{i}") for i in range(INVALID)],
        new=[schema.new_key(ws, j) for ws, j in copied],
        index=dict(Counter(schema.index_key(ws) for ws, _j in copied)),
        other=other,
    )


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_cluster_census_counts_equal_the_dataset_spread_over_every_shard(
        name, rc, redis_cluster):
    schema = SCHEMAS[name]
    data = seed_dataset(rc, schema)
    primaries = primary_addresses(rc)
    assert len(primaries) == 3
    for kind, keys in (("old", data.old), ("new", data.new), ("index", data.index),
                       ("other", data.other)):
        assert set(spread(rc, keys)) == primaries, f"{kind} keys are not on every shard"

    keys_before = redis_cluster.dbsize_sum()
    census = run_census(rc, schema, by_workspace=True)

    assert census.old == len(data.old) == JOBS + INVALID
    assert census.new == len(data.new) == JOBS * 4 // 10
    assert census.index_keys == len(data.index)
    assert census.index_entries == sum(data.index.values()) == len(data.new)
    assert census.other == OTHER
    ws_of = {schema.index_key(ws): ws for ws in WORKSPACES}
    assert census.by_workspace == {ws_of[k]: {"new": n, "index_entries": n}
                                   for k, n in sorted(data.index.items(),
                                                      key=lambda kv: ws_of[kv[0]])}
    # the issue's must-show: the census scanned exactly the sum of DBSIZE over the primaries
    assert census.scanned == keys_before
    assert census.old + census.new + census.index_keys + census.other == census.scanned
    # relay:census is written after the scan: one more key, counted by the next census
    assert redis_cluster.dbsize_sum() == keys_before + 1
    again = run_census(rc, schema, store=False)
    assert again.scanned == redis_cluster.dbsize_sum() == keys_before + 1
    assert again.other == OTHER + 1
    assert (again.old, again.new, again.index_entries) == (census.old, census.new,
                                                          census.index_entries)


def test_cluster_census_is_stored_under_its_plain_name(rc):
    seed_dataset(rc, SCHEMAS["seed"])
    census = run_census(rc, SCHEMAS["seed"], now=lambda: 1_700_000_321.0)
    assert rc.exists(CENSUS_KEY) == 1
    stored = last_census(rc)
    assert stored is not None
    assert (stored.old, stored.new, stored.index_entries, stored.scanned, stored.ts) == (
        census.old, census.new, census.index_entries, census.scanned, 1_700_000_321.0)


def test_cluster_census_scans_every_primary_and_never_issues_keys(rc, redis_cluster):
    seed_dataset(rc, SCHEMAS["seed"])

    def calls() -> dict[int, Counter]:
        out = {}
        for port in redis_cluster.primaries():
            node = redis_cluster.node_client(port, decode_responses=True)
            stats = node.info("commandstats")
            node.close()
            out[port] = Counter({k.removeprefix("cmdstat_"): int(v["calls"])
                                 for k, v in stats.items()})
        return out

    before = calls()
    run_census(rc, SCHEMAS["seed"])
    after = calls()
    assert set(after) == set(before) and len(after) == 3
    for port in after:
        delta = after[port] - before[port]
        assert delta["keys"] == 0, port
        assert delta["scan"] >= 1, port  # every primary was scanned
        assert delta["zcard"] >= 1, port  # each shard's index keys counted on that shard


def test_cluster_census_progress_is_monotonic_and_ends_at_one(rc):
    data = seed_dataset(rc, SCHEMAS["seed"])
    seen: list[tuple[int, float]] = []
    census = run_census(rc, SCHEMAS["seed"], store=False,
                        progress=lambda c, f: seen.append((c.scanned, f)))
    assert len(seen) >= 3  # at least one batch per shard
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    assert all(0.0 < f <= 1.0 for _, f in seen)
    assert seen[-1] == (census.scanned, 1.0)
    assert census.scanned == len(data.old) + len(data.new) + len(data.index) + len(data.other)
