"""Walks behind one endpoint that fails over: a real primary, its real `--replicaof` replica,
and a TCP proxy switched to the promoted replica (REPLICAOF NO ONE) in the middle of a walk."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from engines_kit import SwitchingProxy

from relayctl.core.archive import ArchiveError, check_archive, export, restore
from relayctl.core.census import run_census
from relayctl.core.demo import seed_pre_migration
from relayctl.core.keys import KeySchema
from relayctl.core.scan import ServerChangedError
from relayctl.core.verify import run_verify
from tests.conftest import RedisServer, _redis_binary, free_port, wait_for

SCHEMA = KeySchema()
LEGACY = 5000
INVALID = 3


class Pair:
    def __init__(self, primary: RedisServer, replica: RedisServer, proxy: SwitchingProxy):
        self.primary, self.replica, self.proxy = primary, replica, proxy
        self.promoted = False

    def fail_over(self) -> None:
        """Promote the replica and point the endpoint at it (the old primary stays up)."""
        rc = redis.Redis(port=self.replica.port)
        rc.execute_command("REPLICAOF", "NO", "ONE")
        rc.close()
        self.proxy.switch(self.replica.port)
        self.promoted = True


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    binary = _redis_binary()
    if binary is None:
        pytest.fail("redis-server is not on PATH")
    primary = RedisServer(binary=binary, port=free_port(), workdir=tmp_path / "p")
    replica = RedisServer(binary=binary, port=free_port(), workdir=tmp_path / "r",
                          extra=("--replicaof", "127.0.0.1", "0"))
    primary.workdir.mkdir()
    replica.workdir.mkdir()
    primary.start()
    replica.extra = ("--replicaof", "127.0.0.1", str(primary.port))
    pc = redis.Redis(port=primary.port, decode_responses=True)
    seed_pre_migration(pc, SCHEMA, ["ws-a", "ws-b", "ws-c"], jobs=LEGACY, recent_share=1.0,
                       ttl_share=0.0, invalid=INVALID, seed=3)
    replica.start()
    rc = redis.Redis(port=replica.port, decode_responses=True)
    wait_for(lambda: rc.info("replication").get("master_link_status") == "up"
             and rc.dbsize() == pc.dbsize(), 30, "the replica to sync")
    proxy = SwitchingProxy(primary.port)
    yield Pair(primary, replica, proxy)
    proxy.close()
    pc.close()
    rc.close()
    replica.stop()
    primary.stop()


def legacy_keys(port: int) -> set[bytes]:
    c = redis.Redis(port=port)
    try:
        return set(c.scan_iter(match=SCHEMA.old_pattern, count=1000))
    finally:
        c.close()


def archived(path: Path) -> Counter:
    with gzip.open(path, "rt") as f:
        return Counter(o["k"] for o in map(json.loads, f) if "k" in o)


def test_a_scan_cursor_continued_on_the_promoted_replica_skips_and_repeats_keys(pair):
    """The hazard itself, measured: why every walk checks the server identity."""
    a = redis.Redis(port=pair.primary.port)
    b = redis.Redis(port=pair.replica.port)
    seen: Counter = Counter()
    cursor, n = 0, 0
    while True:
        cursor, keys = (a if n < 3 else b).scan(cursor, match=SCHEMA.old_pattern, count=500)
        seen.update(keys)
        n += 1
        if cursor == 0:
            break
    total = len(legacy_keys(pair.primary.port))
    missing = total - len(seen)
    dupes = sum(v - 1 for v in seen.values())
    print(f"naive continuation: {missing} of {total} keys missed, {dupes} duplicates")
    assert missing > 0 or dupes > 0
    a.close()
    b.close()


def test_export_through_a_failover_restarts_and_archives_every_legacy_key_once(pair, tmp_path):
    client = redis.Redis(port=pair.proxy.port, decode_responses=True)
    path = tmp_path / "a.gz"

    def progress(count: int) -> None:
        if count >= LEGACY // 3 and not pair.promoted:
            pair.fail_over()

    summary = export(client, SCHEMA, path, progress=progress)
    assert pair.promoted and summary.restarts == 1 and summary.complete
    counts = archived(path)
    assert max(counts.values()) == 1  # no duplicates
    assert {k.encode() for k in counts} == legacy_keys(pair.replica.port)
    assert len(counts) == LEGACY + INVALID == check_archive(path, SCHEMA)
    with gzip.open(path, "rt") as f:
        manifest = [json.loads(line) for line in f][-1]["manifest"]
    replica_id = redis.Redis(port=pair.replica.port).info("server")["run_id"]
    assert manifest["complete"] is True
    assert [s["run_id"] for s in manifest["servers"]] == [replica_id]
    client.close()


def test_export_that_cannot_finish_on_one_server_fails_and_its_file_is_refused(pair, tmp_path):
    client = redis.Redis(port=pair.proxy.port, decode_responses=True)
    path = tmp_path / "a.gz"

    def progress(count: int) -> None:
        if count >= LEGACY // 3 and not pair.promoted:
            pair.fail_over()

    with pytest.raises(ServerChangedError, match="INCOMPLETE"):
        export(client, SCHEMA, path, progress=progress, restarts=0)
    assert path.exists()
    with pytest.raises(ArchiveError, match="incomplete"):
        check_archive(path, SCHEMA)
    with pytest.raises(ArchiveError, match="incomplete"):
        restore(client, SCHEMA, path, actor="a", reason="x")
    client.close()


def test_verify_through_a_failover_reports_one_full_run_over_the_right_count(pair):
    client = redis.Redis(port=pair.proxy.port, decode_responses=True)
    calls = [0]

    def progress(_report) -> None:
        calls[0] += 1
        if calls[0] == 2 and not pair.promoted:
            pair.fail_over()

    report = run_verify(client, SCHEMA, progress=progress)
    assert pair.promoted and report.restarts == 1
    assert report.complete and report.checked == LEGACY, report.as_dict()
    assert report.invalid_legacy == INVALID
    assert report.clean, report.as_dict()
    stored = redis.Redis(port=pair.replica.port, decode_responses=True).hgetall(
        "relay:verify:last")
    assert int(stored["checked"]) == LEGACY and stored["complete"] == "1"
    client.close()


def test_census_through_a_failover_counts_one_server(pair):
    client = redis.Redis(port=pair.proxy.port, decode_responses=True)
    calls = [0]

    def progress(_census, _fraction) -> None:
        calls[0] += 1
        if calls[0] == 1 and not pair.promoted:
            pair.fail_over()

    census = run_census(client, SCHEMA, progress=progress, store=False)
    assert pair.promoted and census.restarts == 1
    assert census.old == LEGACY + INVALID and census.new == LEGACY
    client.close()
