"""Phase 6 must not lose a job (issue 13): delete trusts only `verified` and a fresh clean
verify, compares content (not DUMP bytes), survives restarts and big records, and an
archive restores across engines. Real redis-server processes; restarts are real."""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from engines_kit import require_packaged

from relayctl.core.archive import check_archive, delete_verified, export, restore
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.demo import seed_pre_migration
from relayctl.core.errors import UsageError
from relayctl.core.flags import FALLBACK_OLD, set_flag
from relayctl.core.keys import AUDIT_KEY, KeySchema
from relayctl.core.verify import run_verify
from tests.conftest import RedisServer, _redis_binary, free_port

SCHEMA = KeySchema()
WORKSPACES = ["ws-a", "ws-b", "ws-c"]


def server(tmp_path: Path, name: str, binary: str | None = None, *extra: str) -> RedisServer:
    binary = binary or _redis_binary()
    if binary is None:
        pytest.fail("redis-server is not on PATH")
    workdir = tmp_path / name
    workdir.mkdir()
    s = RedisServer(binary=binary, port=free_port(), workdir=workdir, extra=extra)
    s.start()
    return s


def phase6(r: redis.Redis, jobs: int, *, ttl_share: float = 0.0, seed: int = 1) -> list:
    """Legacy jobs, backfilled, fallback off: where archive delete runs."""
    seeded = seed_pre_migration(r, SCHEMA, WORKSPACES, jobs=jobs, recent_share=0.0,
                                ttl_share=ttl_share, invalid=0, seed=seed)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    set_flag(r, FALLBACK_OLD, False, actor="test", reason="phase 5 done")
    return list(seeded.jobs)


def legacy_count(r: redis.Redis) -> int:
    return sum(1 for _ in r.scan_iter(match=SCHEMA.old_pattern, count=1000))


def test_delete_keeps_every_job_verify_flagged_and_deletes_all_after_a_fresh_clean_verify(
        r, tmp_path):
    jobs = phase6(r, 1000)
    short = jobs[:100]  # copies with a 3 s TTL whose source has none
    unindexed = jobs[100:200]  # copies whose index entry is gone
    for ws, job in short:
        r.pexpire(SCHEMA.new_key(ws, job), 3000)
    for ws, job in unindexed:
        r.zrem(SCHEMA.index_key(ws), job)
    flagged = run_verify(r, SCHEMA)
    assert (flagged.counts["ttl_drift"], flagged.counts["index_missing"]) == (100, 100)
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)

    with pytest.raises(UsageError, match="verify_fresh"):
        delete_verified(r, SCHEMA, path, actor="oncall", reason="phase 6")
    assert legacy_count(r) == 1000

    forced = delete_verified(r, SCHEMA, path, actor="oncall", reason="phase 6",
                             overrides=("verify_fresh",))
    assert forced.counts["ttl_drift"] == 100 and forced.counts["index_missing"] == 100
    assert forced.counts["deleted"] == 800
    kept = [SCHEMA.old_key(j) for _ws, j in short + unindexed]
    assert r.exists(*kept) == 200  # 0 of the flagged legacy keys deleted
    override = [f for _, f in r.xrange(AUDIT_KEY) if f["action"] == "archive.delete.override"]
    assert override and override[0]["reason"] == "phase 6"
    time.sleep(3.2)  # the short copies expire: their jobs live on in the legacy schema
    assert r.exists(*(SCHEMA.new_key(ws, j) for ws, j in short)) == 0
    assert r.exists(*(SCHEMA.old_key(j) for _ws, j in short)) == 100

    run_verify(r, SCHEMA, repair=True, force=True, reason="copies lost")
    after = run_verify(r, SCHEMA)
    # clean but for the 800 copies whose legacy keys are already archived
    assert {k: n for k, n in after.counts.items() if n} == {"extra": 800}, after.as_dict()
    done = delete_verified(r, SCHEMA, path, actor="oncall", reason="phase 6, again")
    assert done.counts["deleted"] == 200 and legacy_count(r) == 0

    # a clean verify goes stale at the next flag change
    set_flag(r, FALLBACK_OLD, True, actor="test", reason="rollback")
    set_flag(r, FALLBACK_OLD, False, actor="test", reason="again")
    with pytest.raises(UsageError, match="flag changed"):
        delete_verified(r, SCHEMA, path, actor="oncall", reason="x")


def test_delete_after_a_redis_restart_refuses_no_untouched_key(tmp_path):
    s = server(tmp_path, "aof", None, "--appendonly", "yes", "--appendfsync", "always")
    try:
        r = redis.Redis(port=s.port, decode_responses=True)
        raw = redis.Redis(port=s.port)
        jobs = phase6(r, 600)
        rng = random.Random(2)
        for ws, job in jobs:  # fields over 64 bytes: hashtable-encoded hashes
            params = json.dumps({"prompt": "x" * rng.randint(80, 300)})
            r.hset(SCHEMA.old_key(job), "params", params)
            r.hset(SCHEMA.new_key(ws, job), "params", params)
        assert run_verify(r, SCHEMA).clean
        path = tmp_path / "a.gz"
        export(r, SCHEMA, path)
        before = {k: raw.dump(k) for k in raw.scan_iter(match=SCHEMA.old_pattern)}
        r.close()
        raw.close()
        s.restart()  # SIGTERM, then a new process loading the AOF
        r = redis.Redis(port=s.port, decode_responses=True)
        raw = redis.Redis(port=s.port)
        after = {k: raw.dump(k) for k in raw.scan_iter(match=SCHEMA.old_pattern)}
        assert set(after) == set(before)
        changed_dumps = sum(1 for k in before if before[k] != after[k])
        print(f"DUMP payloads that differ after the restart: {changed_dumps} of {len(before)}")
        assert changed_dumps > 0  # what made the DUMP comparison refuse untouched keys
        summary = delete_verified(r, SCHEMA, path, actor="oncall", reason="phase 6")
        assert summary.counts["changed"] == 0
        assert summary.counts["deleted"] == 600
        r.close()
        raw.close()
    finally:
        s.stop()


def test_records_with_5_mb_fields_and_10k_fields_are_deleted_and_restored_unchanged(
        r, raw, tmp_path):
    jobs = phase6(r, 20)
    big, wide = jobs[:3], jobs[3:6]
    for ws, job in big:
        blob = random.Random(job).randbytes(5 << 20)
        for key in (SCHEMA.old_key(job), SCHEMA.new_key(ws, job)):
            raw.hset(key, "result", blob)
    for ws, job in wide:
        extra = {f"meta_{i}": f"v{i}" for i in range(10_000)}
        for key in (SCHEMA.old_key(job), SCHEMA.new_key(ws, job)):
            r.hset(key, mapping=extra)
    contents = {SCHEMA.old_key(j): raw.hgetall(SCHEMA.old_key(j)) for _w, j in big + wide}
    assert run_verify(r, SCHEMA).clean
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    summary = delete_verified(r, SCHEMA, path, actor="oncall", reason="phase 6")
    assert summary.counts["deleted"] == 20 and legacy_count(r) == 0
    restored = restore(r, SCHEMA, path, actor="oncall", reason="undo")
    assert restored.counts["restored"] == 20
    for key, fields in contents.items():
        assert raw.hgetall(key) == fields


def test_an_export_leaves_out_keys_outside_the_schema_and_its_file_restores(r, raw, tmp_path):
    phase6(r, 50)
    raw.hset(b"ai:jobs:", mapping={b"job_id": b"", b"workspace_id": b"ws-a"})
    raw.hset(b"ai:jobs:\xff\xfe", mapping={b"job_id": b"\xff\xfe", b"workspace_id": b"ws-a"})
    assert run_verify(r, SCHEMA).clean
    path = tmp_path / "a.gz"
    summary = export(r, SCHEMA, path)
    assert summary.count == 50
    assert summary.excluded == {"encoding": 1, "schema": 1}
    assert sorted(summary.excluded_examples) == ["ai:jobs:", "ai:jobs:\\xff\\xfe"]
    assert check_archive(path, SCHEMA) == 50
    deleted = delete_verified(r, SCHEMA, path, actor="a", reason="x")
    assert deleted.counts["deleted"] == 50
    restored = restore(r, SCHEMA, path, actor="a", reason="undo")
    assert restored.counts["restored"] == 50
    assert raw.exists(b"ai:jobs:", b"ai:jobs:\xff\xfe") == 2  # never touched


ENGINES = [("valkey", "7.0"), ("redis-6.2", "7.0"), ("7.0", "redis-6.2")]


@pytest.fixture
def engines(request, tmp_path) -> Iterator[tuple[RedisServer, RedisServer]]:
    src, dst = request.param
    made = [server(tmp_path, f"{i}-{name}",
                   None if name == "7.0" else require_packaged(name))
            for i, name in enumerate((src, dst))]
    yield made[0], made[1]
    for s in made:
        s.stop()


@pytest.mark.parametrize("engines", ENGINES, indirect=True,
                         ids=[f"{a}-to-{b}" for a, b in ENGINES])
def test_an_archive_restores_into_another_engine(engines, tmp_path):
    source, target = engines
    sc = redis.Redis(port=source.port, decode_responses=True)
    sraw = redis.Redis(port=source.port)
    seed_pre_migration(sc, SCHEMA, WORKSPACES, jobs=300, recent_share=0.0, ttl_share=0.5,
                       invalid=0, seed=4)
    sraw.hset(SCHEMA.old_key("bytes-job"), mapping={
        b"job_id": b"bytes-job", b"workspace_id": b"ws-a", b"params": b"\xff\x00\xfe"})
    want = {k: (sraw.hgetall(k), sraw.pttl(k))
            for k in sraw.scan_iter(match=SCHEMA.old_pattern)}
    path = tmp_path / "a.gz"
    export(sc, SCHEMA, path)
    tc = redis.Redis(port=target.port, decode_responses=True)
    traw = redis.Redis(port=target.port)
    summary = restore(tc, SCHEMA, path, actor="a", reason="move engines")
    native = summary.counts["restored"]
    print(f"{summary.counts}")
    assert native + summary.counts["rewritten"] == len(want) == 301
    assert summary.counts["unrestorable"] == 0
    for key, (fields, pttl) in want.items():
        assert traw.hgetall(key) == fields, key
        got = traw.pttl(key)
        assert (got < 0) == (pttl < 0) and abs(got - pttl) < 5000, key
    names = (sc.info("server").get("valkey_version"), tc.info("server").get("redis_version"))
    print(f"from {names[0] or sc.info('server')['redis_version']} into {names[1]}: "
          f"{native} RESTOREd, {summary.counts['rewritten']} rewritten")
    for c in (sc, sraw, tc, traw):
        c.close()


def test_foreign_payload_restore_never_overwrites_and_keeps_the_expiry(tmp_path):
    valkey = server(tmp_path, "valkey", require_packaged("valkey"))
    target = server(tmp_path, "redis")
    try:
        vc = redis.Redis(port=valkey.port, decode_responses=True)
        vc.hset(SCHEMA.old_key("j1"), mapping={"job_id": "j1", "workspace_id": "ws-a"})
        vc.hset(SCHEMA.old_key("j2"), mapping={"job_id": "j2", "workspace_id": "ws-a"})
        vc.pexpire(SCHEMA.old_key("j2"), 600_000)
        path = tmp_path / "a.gz"
        export(vc, SCHEMA, path)
        tc = redis.Redis(port=target.port, decode_responses=True)
        tc.hset(SCHEMA.old_key("j1"), "status", "newer")
        summary = restore(tc, SCHEMA, path, actor="a", reason="x")
        assert summary.counts["rewritten"] == 1 and summary.counts["exists"] == 1
        assert tc.hgetall(SCHEMA.old_key("j1")) == {"status": "newer"}
        assert 590_000 < tc.pttl(SCHEMA.old_key("j2")) <= 600_000
        with gzip.open(path, "rt") as f:
            assert json.loads(f.readline())["version"] == 2
        vc.close()
        tc.close()
    finally:
        valkey.stop()
        target.stop()
