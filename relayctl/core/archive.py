"""Phase 6: export legacy keys (DUMP + TTL + checksums), delete verified ones, restore.

File format (gzip, one JSON object per line): a header, one line per key
`{"k": key, "x": absolute expiry ms or -1, "d": base64 DUMP, "h": sha256}`, and a manifest
`{"manifest": {"count": n, "sha256": digest of all record hashes}}`. Every consumer checks
the whole file before it changes anything.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from relayctl.core import audit
from relayctl.core.binary import binary_client
from relayctl.core.cluster import Router, close_shards, is_cluster, run_script, shards
from relayctl.core.errors import RelayError, UsageError
from relayctl.core.flags import FALLBACK_OLD, stored_flags
from relayctl.core.keys import KeySchema
from relayctl.core.roundtrip import Command, read_many
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id

FORMAT = "relayctl-archive"
VERSION = 1
SCAN_COUNT = 1000

# KEYS: (old, new) per key.  ARGV: dump per key.
# Deletes a legacy key only if it is byte-identical to the export and its new copy holds
# exactly the same fields. Returns one code per key: d deleted, c changed, n new differs,
# g gone.
DELETE_VERIFIED = """
local codes = {}
for i = 1, #KEYS / 2 do
  local old, new = KEYS[2 * i - 1], KEYS[2 * i]
  local dump = redis.call('DUMP', old)
  if not dump then
    codes[i] = 'g'
  elseif dump ~= ARGV[i] then
    codes[i] = 'c'
  else
    local same = redis.call('TYPE', new)
    if type(same) == 'table' then same = same['ok'] end
    local fields = redis.call('HGETALL', old)
    if same ~= 'hash' or redis.call('HLEN', new) * 2 ~= #fields then
      codes[i] = 'n'
    else
      local ok = true
      for j = 1, #fields, 2 do
        if redis.call('HGET', new, fields[j]) ~= fields[j + 1] then ok = false break end
      end
      if ok then
        redis.call('UNLINK', old)
        codes[i] = 'd'
      else
        codes[i] = 'n'
      end
    end
  end
end
return table.concat(codes)
"""

# Cluster form of DELETE_VERIFIED: the legacy key and its new copy live in different slots,
# so the new record is read first and its fields are passed in.
# KEYS: old.  ARGV: dump, '1' if the new record is a non-empty hash, then its field, value...
# Same codes as DELETE_VERIFIED, for one key.
DELETE_LEGACY = """
local dump = redis.call('DUMP', KEYS[1])
if not dump then return 'g' end
if dump ~= ARGV[1] then return 'c' end
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t['ok'] end
if ARGV[2] ~= '1' or t ~= 'hash' then return 'n' end
local want = {}
for j = 3, #ARGV, 2 do want[ARGV[j]] = ARGV[j + 1] end
local fields = redis.call('HGETALL', KEYS[1])
if #fields ~= #ARGV - 2 then return 'n' end
for j = 1, #fields, 2 do
  if want[fields[j]] ~= fields[j + 1] then return 'n' end
end
redis.call('UNLINK', KEYS[1])
return 'd'
"""


class ArchiveError(RelayError):
    """The archive file is missing, truncated, tampered with or of another version."""

    exit_code = 2


@dataclass
class ArchiveSummary:
    action: str
    path: str
    count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    sha256: str = ""

    def as_dict(self) -> dict:
        return {"action": self.action, "path": self.path, "count": self.count,
                "counts": self.counts, "duration_s": round(self.duration_s, 3),
                "sha256": self.sha256}


@dataclass(frozen=True)
class ArchivedKey:
    key: str
    expire_at_ms: int
    dump: bytes


def _record_hash(key: str, expire_at_ms: int, dump: bytes) -> str:
    h = hashlib.sha256()
    h.update(key.encode())
    h.update(b"\0")
    h.update(str(expire_at_ms).encode())
    h.update(b"\0")
    h.update(dump)
    return h.hexdigest()


def export(client: redis.Redis, schema: KeySchema, path: str | Path, *,
           progress: Callable[[int], None] | None = None,
           now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> ArchiveSummary:
    """Stream every legacy key into a new archive; written to a temp file, then renamed.

    Each shard (the server itself when standalone) is scanned with its own bytes client,
    so DUMP and PTTL of a batch are one round trip to the node that holds the keys.
    """
    target = Path(path)
    if target.exists():
        raise UsageError(f"archive {target} already exists; refusing to overwrite it")
    tmp = target.with_name(target.name + ".partial")
    summary = ArchiveSummary(action="export", path=str(target))
    manifest = hashlib.sha256()
    t0 = time.perf_counter()
    found = shards(client, decode_responses=False)
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as out:
            out.write(json.dumps({"format": FORMAT, "version": VERSION,
                                  "pattern": schema.old_pattern, "created_ms": now_ms()}) + "\n")
            for shard in found:
                bclient = shard.client
                cursor = 0
                while True:
                    cursor, keys = bclient.scan(cursor, match=schema.old_pattern,
                                                count=SCAN_COUNT)
                    if keys:
                        pipe = bclient.pipeline(transaction=False)
                        for key in keys:
                            pipe.dump(key)
                            pipe.pttl(key)
                        replies = pipe.execute()
                        stamp = now_ms()
                        for i, raw_key in enumerate(keys):
                            dump, pttl = replies[2 * i], replies[2 * i + 1]
                            if dump is None:
                                continue
                            key = raw_key.decode()
                            expire_at = stamp + pttl if pttl > 0 else -1
                            digest = _record_hash(key, expire_at, dump)
                            manifest.update(digest.encode())
                            out.write(json.dumps({"k": key, "x": expire_at,
                                                  "d": base64.b64encode(dump).decode(),
                                                  "h": digest}) + "\n")
                            summary.count += 1
                        if progress is not None:
                            progress(summary.count)
                    if int(cursor) == 0:
                        break
            summary.sha256 = manifest.hexdigest()
            out.write(json.dumps({"manifest": {"count": summary.count,
                                               "sha256": summary.sha256}}) + "\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        close_shards(found, client)
    summary.duration_s = time.perf_counter() - t0
    return summary


def _lines(path: Path) -> Iterator[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from f
    except FileNotFoundError:
        raise ArchiveError(f"archive {path} does not exist") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ArchiveError(f"archive {path} is not a readable gzip file "
                           f"({type(exc).__name__}): truncated or corrupt") from None


def read_archive(path: str | Path, schema: KeySchema) -> Iterator[ArchivedKey]:
    """Yield verified records; raise ArchiveError on any defect (checked as it streams)."""
    p = Path(path)
    lines = _lines(p)
    try:
        header = json.loads(next(lines))
    except StopIteration:
        raise ArchiveError(f"archive {p} is empty") from None
    except json.JSONDecodeError:
        raise ArchiveError(f"archive {p} has a malformed header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveError(f"{p} is not a relayctl archive")
    if header.get("version") != VERSION:
        raise ArchiveError(f"archive {p} has unsupported version {header.get('version')!r}")
    if header.get("pattern") != schema.old_pattern:
        raise ArchiveError(f"archive {p} was made for keys {header.get('pattern')!r}, "
                           f"not {schema.old_pattern!r}")
    manifest = hashlib.sha256()
    for n, line in enumerate(lines, start=2):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ArchiveError(f"archive {p} line {n} is malformed") from None
        if not isinstance(obj, dict):
            raise ArchiveError(f"archive {p} line {n} is malformed")
        if "manifest" in obj:
            m = obj["manifest"]
            if not isinstance(m, dict) or m.get("count") != n - 2 \
                    or m.get("sha256") != manifest.hexdigest():
                raise ArchiveError(f"archive {p} manifest does not match its records "
                                   "(tampered or truncated)")
            try:
                next(lines)
            except StopIteration:
                return
            raise ArchiveError(f"archive {p} has data after its manifest")
        try:
            key, expire_at, dump = obj["k"], int(obj["x"]), base64.b64decode(obj["d"],
                                                                              validate=True)
            digest = obj["h"]
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ArchiveError(f"archive {p} line {n} is malformed") from None
        if not isinstance(key, str) or not schema.is_old_key(key):
            raise ArchiveError(f"archive {p} line {n} holds a key outside the legacy schema")
        if _record_hash(key, expire_at, dump) != digest:
            raise ArchiveError(f"archive {p} line {n}: checksum mismatch (tampered)")
        manifest.update(digest.encode())
        yield ArchivedKey(key=key, expire_at_ms=expire_at, dump=dump)
    raise ArchiveError(f"archive {p} has no manifest (truncated)")


def check_archive(path: str | Path, schema: KeySchema) -> int:
    """Read the whole file once; the count of verified records, or ArchiveError."""
    return sum(1 for _ in read_archive(path, schema))


def _batches(items: Iterator[ArchivedKey], size: int) -> Iterator[list[ArchivedKey]]:
    batch: list[ArchivedKey] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def delete_verified(client: redis.Redis, schema: KeySchema, path: str | Path, *,
                    actor: str, reason: str, batch: int = 500, rps: float = 0.0,
                    force: bool = False,
                    progress: Callable[[ArchiveSummary], None] | None = None) -> ArchiveSummary:
    """Delete legacy keys that are in the export, unchanged since, and equal in the new schema.

    Standalone: one DELETE_VERIFIED script per batch checks and deletes each (old, new) pair
    atomically. Cluster: see _delete_on_cluster.
    """
    if not reason.strip():
        raise UsageError("a reason is required for archive delete")
    total = check_archive(path, schema)
    if not force and stored_flags(client).get(FALLBACK_OLD, True):
        raise UsageError("refusing archive delete while READ_FALLBACK_OLD is on: reads still "
                         "fall back to legacy keys (phase 5 first, or --force)")
    bclient = binary_client(client)
    on_cluster = is_cluster(client)
    script = None if on_cluster else bclient.register_script(DELETE_VERIFIED)
    router = Router(client) if on_cluster else None
    brouter = Router(bclient) if on_cluster else None
    summary = ArchiveSummary(action="delete", path=str(path), count=total,
                             counts={"deleted": 0, "changed": 0, "new_differs": 0, "gone": 0,
                                     "invalid": 0})
    audit.record(client, actor, "archive.delete.start", str(path), "", f"{total} keys", reason)
    names = {"d": "deleted", "c": "changed", "n": "new_differs", "g": "gone"}
    t0 = time.perf_counter()
    try:
        for group in _batches(read_archive(path, schema), batch):
            reads = [("HMGET", i.key, "workspace_id", "job_id") for i in group]
            heads = router.run(reads) if router is not None else read_many(client, reads)
            keys: list[str] = []
            dumps: list[bytes] = []
            for item, head in zip(group, heads, strict=True):
                ws, job_id = head if isinstance(head, list) else (None, None)
                if not is_valid_workspace_id(ws) or not is_valid_job_id(job_id) \
                        or schema.old_key(job_id) != item.key:
                    summary.counts["invalid"] += 1
                    continue
                keys += [item.key, schema.new_key(ws, job_id)]
                dumps.append(item.dump)
            if keys:
                if brouter is not None:
                    codes = _delete_on_cluster(brouter, keys, dumps)
                else:
                    codes = script(keys=keys, args=dumps).decode()
                for code in codes:
                    summary.counts[names[code]] += 1
            if progress is not None:
                progress(summary)
            if rps > 0:
                done = sum(summary.counts.values())
                wait = done / rps - (time.perf_counter() - t0)
                if wait > 0:
                    time.sleep(wait)
    finally:
        for r in (router, brouter):
            if r is not None:
                r.close()
        bclient.close()
        summary.duration_s = time.perf_counter() - t0
        audit.record(client, actor, "archive.delete.end", str(path), "",
                     json.dumps(summary.counts, sort_keys=True), reason)
    return summary


def _delete_on_cluster(brouter: Router, keys: list[str], dumps: list[bytes]) -> str:
    """DELETE_VERIFIED split in two, as a legacy key and its copy are in different slots.

    The copies are read first, then DELETE_LEGACY checks and deletes each legacy key on its
    node. A copy changed after its read held the legacy data when read, and the export keeps
    it, so nothing is lost that `restore` cannot put back.
    """
    olds, news = keys[0::2], keys[1::2]
    records = brouter.run([("HGETALL", new) for new in news])
    calls: list[tuple[list[str], list[Any]]] = []
    for old, dump, record in zip(olds, dumps, records, strict=True):
        args: list[Any] = [dump, b"0"]
        if isinstance(record, dict) and record:
            args[1] = b"1"
            for name, value in record.items():
                args += [name, value]
        calls.append(([old], args))
    return "".join(code.decode() for code in run_script(brouter, DELETE_LEGACY, calls))


def restore(client: redis.Redis, schema: KeySchema, path: str | Path, *, actor: str,
            reason: str, now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
            progress: Callable[[ArchiveSummary], None] | None = None) -> ArchiveSummary:
    """Put archived keys back byte-identical (absolute TTL); never overwrites a key.

    On a cluster each batch's RESTOREs go to the primaries serving their keys (Router).
    """
    if not reason.strip():
        raise UsageError("a reason is required for archive restore")
    total = check_archive(path, schema)
    bclient = binary_client(client)
    brouter = Router(bclient) if is_cluster(client) else None
    summary = ArchiveSummary(action="restore", path=str(path), count=total,
                             counts={"restored": 0, "exists": 0, "expired": 0})
    audit.record(client, actor, "archive.restore.start", str(path), "", f"{total} keys", reason)
    t0 = time.perf_counter()
    try:
        for group in _batches(read_archive(path, schema), SCAN_COUNT):
            commands: list[Command] = []
            for item in group:
                if 0 <= item.expire_at_ms <= now_ms():
                    summary.counts["expired"] += 1
                    continue
                ttl = max(item.expire_at_ms, 0)
                commands.append(("RESTORE", item.key, ttl, item.dump,
                                 *(("ABSTTL",) if item.expire_at_ms >= 0 else ())))
            if commands:
                if brouter is not None:
                    replies = brouter.run(commands)
                else:
                    pipe = bclient.pipeline(transaction=False)
                    for command in commands:
                        pipe.execute_command(*command)
                    replies = pipe.execute(raise_on_error=False)
                for reply in replies:
                    if isinstance(reply, redis.ResponseError):
                        if "BUSYKEY" not in str(reply):
                            raise reply
                        summary.counts["exists"] += 1
                    else:
                        summary.counts["restored"] += 1
            if progress is not None:
                progress(summary)
    finally:
        if brouter is not None:
            brouter.close()
        bclient.close()
        summary.duration_s = time.perf_counter() - t0
        audit.record(client, actor, "archive.restore.end", str(path), "",
                     json.dumps(summary.counts, sort_keys=True), reason)
    return summary
