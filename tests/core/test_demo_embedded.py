"""The embedded demo server answers what the demo walkthrough needs (fakeredis lacks it)."""

from __future__ import annotations

import re
import time

from relayctl.core import archive
from relayctl.core.census import run_census
from relayctl.core.connection import connect
from relayctl.core.demo import seed_pre_migration, start_embedded_redis
from relayctl.core.gates import PASS, GateContext, evaluate
from relayctl.core.keys import KeySchema
from relayctl.core.serverinfo import memory_info


def test_archive_export_delete_restore_round_trips_on_the_embedded_server(tmp_path):
    """Defect 9: `archive restore` failed with `Redis error: syntax error` (RESTORE ABSTTL)."""
    embedded = start_embedded_redis()
    try:
        client = connect(embedded.url)
        schema = KeySchema()
        seed_pre_migration(client, schema, ["acme", "globex"], jobs=200, invalid=0)
        old = sorted(client.scan_iter(match=schema.old_pattern, count=1000))
        ttls = {k: client.pttl(k) for k in old}
        values = {k: client.hgetall(k) for k in old}
        path = tmp_path / "jobs.jsonl.gz"
        archive.export(client, schema, path)
        client.delete(*old)
        summary = archive.restore(client, schema, path, actor="t", reason="round trip")
        assert summary.counts["restored"] == len(old)
        assert {k: client.hgetall(k) for k in old} == values
        for k, ttl in ttls.items():
            if ttl > 0:  # the absolute TTL survived (within the seconds the test took)
                assert 0 < ttl - client.pttl(k) < 60_000
            else:
                assert client.pttl(k) == -1
    finally:
        embedded.close()


def test_a_restore_whose_absolute_ttl_has_passed_restores_nothing():
    embedded = start_embedded_redis()
    try:
        client = connect(embedded.url)
        client.set("k", "v")
        dump = client.dump("k")
        client.delete("k")
        assert client.restore("k", int(time.time() * 1000) - 1000, dump, absttl=True)
        assert client.exists("k") == 0
    finally:
        embedded.close()


def test_info_memory_grows_with_the_data_so_the_memory_gate_has_a_value():
    embedded = start_embedded_redis()
    try:
        client = connect(embedded.url)
        empty = memory_info(client)
        assert empty is not None and empty["maxmemory"] == 0 and empty["evicted"] == 0
        seed_pre_migration(client, KeySchema(), ["acme"], jobs=2000)
        assert memory_info(client)["used"] > empty["used"] + 500_000  # type: ignore[index]
    finally:
        embedded.close()


def test_the_memory_projection_on_the_embedded_server_is_steady_and_plausible():
    """Issue 17: the embedded INFO had no keyspace section, so `memory_headroom` divided the
    whole dataset by one key and projected 22,149 MiB for 4,207 records; and a 64-key sample
    reseeded on every key count moved `used_memory` by 167% between two ticks."""
    embedded = start_embedded_redis()
    try:
        client = connect(embedded.url)
        seed_pre_migration(client, KeySchema(), ["acme", "globex"], jobs=2000)
        space = client.info("keyspace")
        assert space["db0"]["keys"] == client.dbsize()
        used = [memory_info(client)["used"] for _ in range(3)]  # type: ignore[index]
        assert used[0] == used[1] == used[2]
        census = run_census(client, KeySchema())
        assert census.old >= 1000
        client.sadd("ai:jobs:index:acme", *[f"x{i}" for i in range(2000)])  # one big key
        grown = memory_info(client)["used"]  # type: ignore[index]
        assert used[0] < grown < used[0] * 1.5
        [gate] = evaluate(GateContext(client=client), ["memory_headroom"])
        assert gate.status == PASS and gate.value == "no maxmemory", gate
        projected_mib = float(re.search(r"projected copy ([\d,.]+) MiB", gate.detail)
                              .group(1).replace(",", ""))  # type: ignore[union-attr]
        assert 0 < projected_mib * 2**20 < 2 * grown, gate.detail
    finally:
        embedded.close()


def test_the_embedded_server_serves_connections_past_1024_descriptors():
    """fakeredis' handler waits with select(), which refuses descriptors past FD_SETSIZE:
    a long-lived console (or test process) with many files open reached it."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    pipes = [os.pipe() for _ in range(600)]  # 1,200 descriptors in use
    embedded = start_embedded_redis()
    try:
        client = connect(embedded.url)
        client.set("k", "v")
        time.sleep(0.3)  # the handler polls for the next command while idle
        assert client.get("k") == "v"
        client.close()
    finally:
        embedded.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
