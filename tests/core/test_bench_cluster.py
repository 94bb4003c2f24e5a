"""`relayctl bench backfill` on a real cluster: one engine run per --workers value (issue 6)."""

from __future__ import annotations

import pytest

from relayctl.core.bench import bench_backfill
from relayctl.core.connection import connect
from relayctl.core.errors import UsageError


def test_the_cluster_bench_reports_each_workers_value_and_leaves_nothing_behind(
        cluster_url, redis_cluster):
    rc = connect(cluster_url)
    rc.set("unrelated", "kept")
    before = redis_cluster.dbsize_sum()
    result = bench_backfill(rc, keys=3000, batch=200, workers=(1, 3)).as_dict()
    m = result["measurements"]
    assert m["shards"] == 3 and m["keys"] == 3000
    assert m["relayctl_workers_1_keys_per_s"] > 0 and m["relayctl_workers_3_keys_per_s"] > 0
    assert result["ratios"]["workers_3_vs_workers_1"] == pytest.approx(
        m["relayctl_workers_3_keys_per_s"] / m["relayctl_workers_1_keys_per_s"])
    # every run migrated every valid seeded job (a shortfall is written into the notes)
    assert not [n for n in result["notes"] if "migrated" in n], result["notes"]
    assert redis_cluster.dbsize_sum() == before and rc.get("unrelated") == "kept"
    rc.close()


def test_workers_on_a_standalone_bench_is_refused(redis_url):
    with pytest.raises(UsageError, match="--workers applies to a Redis Cluster"):
        bench_backfill(connect(redis_url), keys=1000, workers=(1, 3))
