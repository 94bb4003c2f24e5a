"""Archive export / delete / restore (SPEC §5, phase 6) against the private redis-server."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relayctl.core.archive import ArchiveError, check_archive, delete_verified, export, restore
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.demo import seed_pre_migration
from relayctl.core.errors import UsageError
from relayctl.core.flags import FALLBACK_OLD, set_flag
from relayctl.core.keys import AUDIT_KEY, KeySchema
from relayctl.core.verify import run_verify

pytestmark = pytest.mark.engines()

SCHEMA = KeySchema()
WORKSPACES = ["ws-a", "ws-b"]
LEGACY = 80
INVALID = 3


@pytest.fixture
def world(r: redis.Redis) -> list[tuple[str, str]]:
    """Legacy jobs (some with TTLs, a few invalid), backfilled, fallback off (phase 6)."""
    seeded = seed_pre_migration(r, SCHEMA, WORKSPACES, jobs=LEGACY, recent_share=0.2,
                                ttl_share=0.5, invalid=INVALID, seed=9)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    set_flag(r, FALLBACK_OLD, False, actor="test", reason="phase 5 done")
    assert run_verify(r, SCHEMA).clean  # the fresh verify archive delete requires
    return list(seeded.jobs)


def legacy_state(raw: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    return {k: (raw.dump(k), raw.pttl(k))
            for k in raw.scan_iter(match=SCHEMA.old_pattern.encode(), count=1000)}


def digest(raw: redis.Redis) -> str:
    """The whole keyspace: names, DUMP payloads and whether each key expires."""
    h = hashlib.sha256()
    for key in sorted(raw.scan_iter(count=1000)):
        if key == AUDIT_KEY.encode():
            continue  # audit entries of refused actions are allowed
        h.update(key + b"\0" + (raw.dump(key) or b"") + b"\0" + str(raw.pttl(key) > 0).encode())
    return h.hexdigest()


def read_lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_lines(path: Path, objs: list[dict], *, extra: str = "") -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for obj in objs:
            f.write(json.dumps(obj) + "\n")
        f.write(extra)


def record_hash(obj: dict) -> str:
    """Version 2: key, expiry, DUMP, then the type and the hash's field blob."""
    blob = base64.b64decode(obj["f"]) if obj["t"] == "hash" else b""
    return hashlib.sha256(obj["k"].encode() + b"\0" + str(obj["x"]).encode() + b"\0"
                          + base64.b64decode(obj["d"]) + b"\0" + obj["t"].encode() + b"\0"
                          + blob).hexdigest()


def reseal(objs: list[dict]) -> list[dict]:
    """Recompute every record checksum and the manifest (a well-formed, re-signed file)."""
    records = [o for o in objs if "k" in o]
    manifest = hashlib.sha256()
    for o in records:
        o["h"] = record_hash(o)
        manifest.update(o["h"].encode())
    return [objs[0], *records,
            {"manifest": {**objs[-1]["manifest"], "count": len(records),
                          "sha256": manifest.hexdigest()}}]


def test_export_delete_restore_gives_byte_identical_keys_and_ttls(r, raw, world, tmp_path):
    before = legacy_state(raw)
    assert len(before) == LEGACY + INVALID
    assert sum(1 for _, ttl in before.values() if ttl > 0) > 10
    path = tmp_path / "legacy.jsonl.gz"
    summary = export(r, SCHEMA, path)
    assert summary.count == LEGACY + INVALID
    assert check_archive(path, SCHEMA) == LEGACY + INVALID

    deleted = delete_verified(r, SCHEMA, path, actor="oncall", reason="phase 6", batch=17)
    assert {k: v for k, v in deleted.counts.items() if v} == {"deleted": LEGACY,
                                                              "invalid": INVALID}
    assert len(legacy_state(raw)) == INVALID  # the invalid records were never deleted

    restored = restore(r, SCHEMA, path, actor="oncall", reason="undo phase 6")
    assert restored.counts == {"restored": LEGACY, "rewritten": 0, "exists": INVALID,
                               "expired": 0, "unrestorable": 0}
    after = legacy_state(raw)
    assert set(after) == set(before)
    for key, (dump, ttl) in before.items():
        assert after[key][0] == dump, key
        if ttl < 0:
            assert after[key][1] == -1, key
        else:
            assert abs(after[key][1] - ttl) <= 1000, key

    actions = [f["action"] for _, f in r.xrange(AUDIT_KEY)]
    for action in ("archive.delete.start", "archive.delete.end", "archive.restore.start",
                   "archive.restore.end"):
        assert action in actions
    end = next(f for _, f in r.xrevrange(AUDIT_KEY) if f["action"] == "archive.delete.end")
    assert (end["actor"], end["reason"]) == ("oncall", "phase 6")


def test_delete_refuses_without_an_export_file(r, raw, world, tmp_path):
    before = digest(raw)
    with pytest.raises(ArchiveError, match="does not exist"):
        delete_verified(r, SCHEMA, tmp_path / "never-made.gz", actor="a", reason="x")
    assert digest(raw) == before


def test_delete_refuses_while_fallback_reads_old_keys_unless_forced(r, raw, world, tmp_path):
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    set_flag(r, FALLBACK_OLD, True, actor="test", reason="fallback back on")
    before = digest(raw)
    with pytest.raises(UsageError, match="READ_FALLBACK_OLD"):
        delete_verified(r, SCHEMA, path, actor="a", reason="x")
    assert digest(raw) == before
    run_verify(r, SCHEMA)  # the flag change made the earlier verify stale
    forced = delete_verified(r, SCHEMA, path, actor="a", reason="x", force=True)
    assert forced.counts["deleted"] == LEGACY


def test_delete_keeps_legacy_keys_changed_since_export_or_whose_copy_differs(r, world,
                                                                             tmp_path):
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    (_ws1, j1), (ws2, j2), (ws3, j3) = world[:3]
    r.hset(SCHEMA.old_key(j1), "status", "failed")  # legacy changed after the export
    r.hset(SCHEMA.new_key(ws2, j2), "status", "failed")  # new copy differs
    r.delete(SCHEMA.new_key(ws3, j3))  # new copy missing
    summary = delete_verified(r, SCHEMA, path, actor="a", reason="x")
    assert summary.counts["changed"] == 1
    assert summary.counts["field_mismatch"] == 1 and summary.counts["missing"] == 1
    assert summary.counts["deleted"] == LEGACY - 3
    assert r.exists(SCHEMA.old_key(j1), SCHEMA.old_key(j2), SCHEMA.old_key(j3)) == 3
    assert r.hget(SCHEMA.old_key(j1), "status") == "failed"


def test_delete_never_touches_a_legacy_key_that_is_not_in_the_file(r, world, tmp_path):
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    late = {"job_id": "late-job", "workspace_id": "ws-a", "status": "pending",
            "enqueued_at": "2024-01-01T00:00:00.000Z"}
    r.hset(SCHEMA.old_key("late-job"), mapping=late)
    r.hset(SCHEMA.new_key("ws-a", "late-job"), mapping=late)  # an equal copy exists
    summary = delete_verified(r, SCHEMA, path, actor="a", reason="x")
    assert summary.counts["deleted"] == LEGACY
    assert r.hgetall(SCHEMA.old_key("late-job")) == late


def test_restore_never_overwrites_an_existing_key(r, raw, world, tmp_path):
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    delete_verified(r, SCHEMA, path, actor="a", reason="x")
    _ws, job = world[0]
    occupant = {"job_id": job, "workspace_id": "ws-a", "status": "newer"}
    r.hset(SCHEMA.old_key(job), mapping=occupant)
    summary = restore(r, SCHEMA, path, actor="a", reason="x")
    assert summary.counts["exists"] == INVALID + 1
    assert summary.counts["restored"] == LEGACY - 1
    assert r.hgetall(SCHEMA.old_key(job)) == occupant


def test_restore_skips_records_whose_absolute_expiry_has_passed(r, world, tmp_path):
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    delete_verified(r, SCHEMA, path, actor="a", reason="x")
    expiring = sum(1 for o in read_lines(path) if "k" in o and o["x"] >= 0)
    far_future = lambda: 2**50  # noqa: E731
    summary = restore(r, SCHEMA, path, actor="a", reason="x", now_ms=far_future)
    assert summary.counts["expired"] == expiring > 0
    assert summary.counts["restored"] == LEGACY - expiring


def _truncate_bytes(path: Path, out: Path) -> None:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) * 2 // 3])


def _drop_manifest(path: Path, out: Path) -> None:
    write_lines(out, read_lines(path)[:-1])


def _tamper_checksum(path: Path, out: Path) -> None:
    objs = read_lines(path)
    objs[3]["h"] = hashlib.sha256(b"forged").hexdigest()
    write_lines(out, objs)


def _tamper_dump(path: Path, out: Path) -> None:
    objs = read_lines(path)
    dump = bytearray(base64.b64decode(objs[2]["d"]))
    dump[5] ^= 0xFF
    objs[2]["d"] = base64.b64encode(bytes(dump)).decode()
    write_lines(out, objs)


def _wrong_version(path: Path, out: Path) -> None:
    objs = read_lines(path)
    objs[0]["version"] = 99
    write_lines(out, objs)


def _manifest_mismatch(path: Path, out: Path) -> None:
    objs = read_lines(path)
    objs[-1]["manifest"]["count"] += 1
    write_lines(out, objs)


def _dropped_record(path: Path, out: Path) -> None:
    objs = read_lines(path)
    del objs[4]  # the manifest still counts and hashes it
    write_lines(out, objs)


def _data_after_manifest(path: Path, out: Path) -> None:
    write_lines(out, read_lines(path), extra=json.dumps({"k": "ai:jobs:zzz"}) + "\n")


def _foreign_key(path: Path, out: Path) -> None:
    objs = read_lines(path)
    objs[2]["k"] = SCHEMA.new_key("ws-a", "intruder")  # re-signed: only the pattern check stops it
    write_lines(out, reseal(objs))


def _truncated_field_blob(path: Path, out: Path) -> None:
    objs = read_lines(path)
    rec = next(o for o in objs if o.get("t") == "hash")
    rec["f"] = base64.b64encode(base64.b64decode(rec["f"])[:-3]).decode()
    write_lines(out, reseal(objs))  # re-signed: only the blob's own framing stops it


CORRUPTIONS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "truncated-field-blob": (_truncated_field_blob, "malformed"),
    "truncated-bytes": (_truncate_bytes, "truncated or corrupt"),
    "truncated-at-line": (_drop_manifest, "no manifest"),
    "tampered-checksum": (_tamper_checksum, "checksum mismatch"),
    "tampered-dump": (_tamper_dump, "checksum mismatch"),
    "wrong-version": (_wrong_version, "unsupported version"),
    "manifest-mismatch": (_manifest_mismatch, "manifest does not match"),
    "dropped-record": (_dropped_record, "manifest does not match"),
    "data-after-manifest": (_data_after_manifest, "data after its manifest"),
    "key-outside-legacy-pattern": (_foreign_key, "outside the legacy schema"),
}


def test_reseal_reproduces_the_exporters_checksums(r, world, tmp_path):
    """The test's re-signing matches the file format, so the foreign-key case is well-formed."""
    path = tmp_path / "a.gz"
    export(r, SCHEMA, path)
    objs = read_lines(path)
    assert reseal(json.loads(json.dumps(objs))) == objs


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_defective_archive_is_refused_and_changes_nothing(kind, r, raw, world, tmp_path):
    corrupt, message = CORRUPTIONS[kind]
    good, bad = tmp_path / "good.gz", tmp_path / "bad.gz"
    export(r, SCHEMA, good)
    corrupt(good, bad)

    with pytest.raises(ArchiveError, match=message):
        check_archive(bad, SCHEMA)
    before = digest(raw)
    with pytest.raises(ArchiveError, match=message):
        delete_verified(r, SCHEMA, bad, actor="a", reason="x")
    assert digest(raw) == before, "delete changed Redis"

    delete_verified(r, SCHEMA, good, actor="a", reason="x")  # restore now has work to do
    before = digest(raw)
    with pytest.raises(ArchiveError, match=message):
        restore(r, SCHEMA, bad, actor="a", reason="x")
    assert digest(raw) == before, "restore changed Redis"


def test_export_refuses_to_overwrite_an_existing_file(r, world, tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        export(r, SCHEMA, path)
    assert path.read_bytes() == b"precious"


def test_a_failed_export_leaves_neither_the_file_nor_a_partial(r, world, tmp_path):
    path = tmp_path / "a.gz"

    def boom(_count: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export(r, SCHEMA, path, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    dead = redis.Redis(port=1, decode_responses=True, socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        export(dead, SCHEMA, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
