"""Phase 6: export legacy keys (DUMP + logical content + TTL), delete verified ones, restore.

File format (gzip, one JSON object per line): a header, one line per key
`{"k": key, "x": absolute expiry ms or -1, "t": type, "d": base64 DUMP,
  "f": base64 of the hash's fields (hashes only; see pack_fields), "h": sha256}`, and a manifest
`{"manifest": {"count": n, "sha256": digest of all record hashes, "complete": bool,
  "servers": [...], "excluded": {...}}}`. Every consumer checks the whole file before it
changes anything, and refuses an incomplete one.

Delete compares the live key's logical content (fields, expiry) with the file, never DUMP
bytes (a hashtable-encoded hash dumps in an order that changes across restarts), and
deletes only what `relayctl.core.verified.verified` accepts. Restore uses RESTORE when the
server accepts the payload and writes the logical record when its version is foreign.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from relayctl.core import audit
from relayctl.core.binary import binary_client
from relayctl.core.cluster import (
    Router,
    close_shards,
    is_cluster,
    refresh_topology,
    run_script,
    shards,
)
from relayctl.core.errors import RelayError, UsageError
from relayctl.core.exitcodes import ExitCode
from relayctl.core.flags import FALLBACK_OLD, stored_flags
from relayctl.core.keys import KeySchema
from relayctl.core.pinned import Pinned
from relayctl.core.roundtrip import Command, read_many
from relayctl.core.scan import RESTARTS, ServerChangedError, Walk, restarting
from relayctl.core.scripting import Script
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id
from relayctl.core.verified import (
    REASONS,
    Fields,
    Record,
    escape,
    text,
    verified,
)
from relayctl.core.verify import VERIFY_MAX_AGE_S, fresh_verify

FORMAT = "relayctl-archive"
VERSION = 2
READABLE = (1, 2)
SCAN_COUNT = 1000
MAX_EXAMPLES = 20
BATCH_BYTES = 32 << 20
WATCH_RETRIES = 4
HSET_CHUNK = 1000

# KEYS: key.  Returns false when absent, else {type, dump, pttl[, field, value, ...]}:
# one atomic read, so the logical content and the DUMP payload are the same version.
EXPORT_KEY = """
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t['ok'] end
if t == 'none' then return false end
local out = {t, redis.call('DUMP', KEYS[1]), redis.call('PTTL', KEYS[1])}
if t == 'hash' then
  local f = redis.call('HGETALL', KEYS[1])
  for i = 1, #f do out[#out + 1] = f[i] end
end
return out
"""

# KEYS: key.  ARGV: absolute expiry ms (-1: none), field, value, ...
# Writes the logical record when the key does not exist. Returns 1 written, 0 exists.
RESTORE_FIELDS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2000 do
  local last = math.min(i + 1999, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, last))
end
if tonumber(ARGV[1]) >= 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
return 1
"""

# Cluster: the legacy key is deleted on its node only if it still holds exactly the fields
# judged (the copy lives in another slot and was judged from a read just before).
# KEYS: old.  ARGV: field, value, ...  Returns 1 deleted, 0 changed.
DELETE_IF_SAME = """
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t['ok'] end
if t ~= 'hash' or redis.call('HLEN', KEYS[1]) * 2 ~= #ARGV then return 0 end
for j = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[j]) ~= ARGV[j + 1] then return 0 end
end
redis.call('UNLINK', KEYS[1])
return 1
"""

DELETE_COUNTS = ("deleted", "changed", "gone", "invalid", *REASONS, "raced")


class ArchiveError(RelayError):
    """The archive file is missing, truncated, incomplete, tampered with or of another
    version."""

    exit_code = ExitCode.USAGE


@dataclass
class ArchiveSummary:
    action: str
    path: str
    count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    sha256: str = ""
    complete: bool = True
    restarts: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    excluded_examples: list[str] = field(default_factory=list)
    servers: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "path": self.path, "count": self.count,
                "counts": self.counts, "duration_s": round(self.duration_s, 3),
                "sha256": self.sha256, "complete": self.complete, "restarts": self.restarts,
                "excluded": self.excluded, "excluded_examples": self.excluded_examples,
                "servers": self.servers}


@dataclass(frozen=True)
class ArchivedKey:
    key: str
    expire_at_ms: int
    dump: bytes
    type: str = ""
    fields: Fields | None = None  # None: not a hash, or a version-1 archive

    @property
    def size(self) -> int:
        return len(self.dump) + sum(len(f) + len(v) for f, v in (self.fields or {}).items())


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: object) -> bytes:
    if not isinstance(s, str):
        raise TypeError
    return binascii.a2b_base64(s, strict_mode=True)


def pack_fields(fields: Fields) -> bytes:
    """A hash's fields as one blob: 4-byte big-endian length, name, length, value, ..."""
    out = bytearray()
    for name, value in fields.items():
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return bytes(out)


def unpack_fields(blob: bytes) -> Fields:
    fields: Fields = {}
    i, end = 0, len(blob)
    while i < end:
        if i + 4 > end:
            raise ValueError("truncated field blob")
        (n,), i = struct.unpack_from(">I", blob, i), i + 4
        name, i = blob[i:i + n], i + n
        if i + 4 > end:
            raise ValueError("truncated field blob")
        (m,), i = struct.unpack_from(">I", blob, i), i + 4
        if i + m > end or len(name) != n:
            raise ValueError("truncated field blob")
        fields[name], i = blob[i:i + m], i + m
    return fields


def _record_hash(key: str, expire_at_ms: int, dump: bytes,
                 content: tuple[str, bytes] | None = None) -> str:
    h = hashlib.sha256()
    h.update(key.encode())
    h.update(b"\0")
    h.update(str(expire_at_ms).encode())
    h.update(b"\0")
    h.update(dump)
    if content is not None:  # version 2: the type and the field blob are signed too
        h.update(b"\0" + content[0].encode() + b"\0" + content[1])
    return h.hexdigest()


EXPORT_SCRIPT = Script("archive.export_key", EXPORT_KEY)


def _text_id(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _export_replies(client: redis.Redis, sha: str, names: list[str]) -> list[Any]:
    replies = EXPORT_SCRIPT.run_batch(client, lambda commands: read_many(client, commands),
                                      [((k,), ()) for k in names])
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def export(client: redis.Redis, schema: KeySchema, path: str | Path, *,
           progress: Callable[[int], None] | None = None,
           now_ms: Callable[[], int] | None = None,
           restarts: int = RESTARTS) -> ArchiveSummary:
    """Stream every legacy key into a new archive; written to a temp file, then renamed.

    Each shard (the server itself when standalone) is walked with its own bytes client and
    the server identity is checked with every batch; on a change the file is started over
    from cursor 0. When the server keeps changing, the file is sealed `complete: false`
    (delete and restore refuse it) and ServerChangedError is raised: never a silent partial.
    Keys that are not UTF-8 or outside the legacy schema are left out, counted and named.
    """
    target = Path(path)
    if target.exists():
        raise UsageError(f"archive {target} already exists; refusing to overwrite it")
    tmp = target.with_name(target.name + ".partial")
    summary = ArchiveSummary(action="export", path=str(target))
    t0 = time.perf_counter()
    bclient = binary_client(client)
    sha = hashlib.sha1(EXPORT_KEY.encode()).hexdigest()

    def attempt(n: int) -> None:
        summary.restarts, summary.count, summary.servers = n, 0, []
        summary.excluded, summary.excluded_examples = {"encoding": 0, "schema": 0}, []
        if n:
            refresh_topology(client)
        manifest = hashlib.sha256()
        found = shards(bclient)
        try:
            with gzip.open(tmp, "wt", encoding="utf-8") as out:
                out.write(json.dumps({"format": FORMAT, "version": VERSION,
                                      "pattern": schema.old_pattern,
                                      "created_ms": int(time.time() * 1000)}) + "\n")
                for shard in found:
                    walk = Walk(shard.client, match=schema.old_pattern, count=SCAN_COUNT)
                    for keys in walk:
                        _export_batch(shard.client, sha, schema, keys, out, manifest,
                                      summary, now_ms)
                        if progress is not None:
                            progress(summary.count)
                    if walk.identity is not None:
                        summary.servers.append(walk.identity.as_dict())
                summary.sha256 = manifest.hexdigest()
                out.write(json.dumps({"manifest": _manifest(summary, complete=True)}) + "\n")
        finally:
            close_shards(found, bclient)

    try:
        restarting(attempt, restarts=restarts)
        os.replace(tmp, target)
    except ServerChangedError as exc:
        # what was walked stays readable for forensics, but no consumer will act on it
        summary.complete = False
        with gzip.open(tmp, "at", encoding="utf-8") as out:
            out.write(json.dumps({"manifest": _manifest(summary, complete=False)}) + "\n")
        os.replace(tmp, target)
        raise ServerChangedError(f"archive {target} is INCOMPLETE: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bclient.close()
        summary.duration_s = time.perf_counter() - t0
    return summary


def export_audited(client: redis.Redis, schema: KeySchema, path: str | Path, *,
                   actor: str) -> ArchiveSummary:
    """`export`, then its audit entry (count and manifest checksum), as delete and restore do."""
    summary = export(client, schema, path)
    audit.record(client, actor, "archive.export", str(path), "", f"{summary.count} keys",
                 f"sha256 {summary.sha256}")
    return summary


def _manifest(summary: ArchiveSummary, *, complete: bool) -> dict[str, Any]:
    return {"count": summary.count, "sha256": summary.sha256, "complete": complete,
            "servers": summary.servers, "restarts": summary.restarts,
            "excluded": summary.excluded, "excluded_examples": summary.excluded_examples}


def server_ms(client: Any) -> int:
    """The server's clock in ms: expiries are absolute on the server's clock, whatever the
    operator's machine (or RELAYCTL_CLOCK_OFFSET_S) says."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _export_batch(shard: redis.Redis, sha: str, schema: KeySchema, keys: list[bytes],
                  out: Any, manifest: Any, summary: ArchiveSummary,
                  now_ms: Callable[[], int] | None) -> None:
    names: list[str] = []
    for raw in keys:
        name = text(raw)
        reason = "encoding" if name is None else None if schema.is_old_key(name) else "schema"
        if reason is not None:
            summary.excluded[reason] += 1
            if len(summary.excluded_examples) < MAX_EXAMPLES:
                summary.excluded_examples.append(escape(raw))
            continue
        assert name is not None
        names.append(name)
    replies = _export_replies(shard, sha, names)
    stamp = now_ms() if now_ms is not None else server_ms(shard)
    for name, reply in zip(names, replies, strict=True):
        if not isinstance(reply, list):
            continue  # expired or deleted since the SCAN
        kind, dump, pttl = _text_id(reply[0]), reply[1], int(reply[2])
        flat = reply[3:]
        fields: Fields | None = dict(zip(flat[0::2], flat[1::2], strict=True)) \
            if kind == "hash" else None
        expire_at = stamp + pttl if pttl > 0 else -1
        blob = pack_fields(fields) if fields is not None else b""
        digest = _record_hash(name, expire_at, dump, (kind, blob))
        manifest.update(digest.encode())
        line: dict[str, Any] = {"k": name, "x": expire_at, "t": kind, "d": _b64(dump),
                                "h": digest}
        if fields is not None:
            line["f"] = _b64(blob)
        out.write(json.dumps(line) + "\n")
        summary.count += 1


def _lines(path: Path) -> Iterator[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from f
    except FileNotFoundError:
        raise ArchiveError(f"archive {path} does not exist") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ArchiveError(f"archive {path} is not a readable gzip file "
                           f"({type(exc).__name__}): truncated or corrupt") from None


def archive_version(path: str | Path) -> int:
    """The header's version (ArchiveError if the file is not an archive)."""
    p = Path(path)
    try:
        header = json.loads(next(_lines(p)))
    except StopIteration:
        raise ArchiveError(f"archive {p} is empty") from None
    except json.JSONDecodeError:
        raise ArchiveError(f"archive {p} has a malformed header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveError(f"{p} is not a relayctl archive")
    if type(header.get("version")) is not int or header["version"] not in READABLE:
        raise ArchiveError(f"archive {p} has unsupported version {header.get('version')!r}")
    return int(header["version"])


def read_archive(path: str | Path, schema: KeySchema) -> Iterator[ArchivedKey]:
    """Yield verified records; raise ArchiveError on any defect (checked as it streams)."""
    p = Path(path)
    version = archive_version(p)
    lines = _lines(p)
    header = json.loads(next(lines))
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
                if isinstance(m, dict) and m.get("complete") is False:
                    raise ArchiveError(f"archive {p} is incomplete: the server changed during "
                                       "its export; export again")
                raise ArchiveError(f"archive {p} manifest does not match its records "
                                   "(tampered or truncated)")
            if version >= 2 and m.get("complete") is not True:
                raise ArchiveError(f"archive {p} is incomplete: the server changed during "
                                   "its export; export again")
            try:
                next(lines)
            except StopIteration:
                return
            raise ArchiveError(f"archive {p} has data after its manifest")
        item, blob = _parse_record(p, n, obj, version)
        if not schema.is_old_key(item.key):
            raise ArchiveError(f"archive {p} line {n} holds a key outside the legacy schema")
        content = (item.type, blob) if version >= 2 else None
        if _record_hash(item.key, item.expire_at_ms, item.dump, content) != obj["h"]:
            raise ArchiveError(f"archive {p} line {n}: checksum mismatch (tampered)")
        manifest.update(obj["h"].encode())
        yield item
    raise ArchiveError(f"archive {p} has no manifest (truncated)")


def _parse_record(p: Path, n: int, obj: dict[str, Any], version: int) -> tuple[ArchivedKey, bytes]:
    try:
        key, expire_at = obj["k"], int(obj["x"])
        dump = _unb64(obj["d"])
        if not isinstance(key, str) or not isinstance(obj["h"], str):
            raise TypeError
        kind, fields, blob = "", None, b""
        if version >= 2:
            kind = obj["t"]
            if not isinstance(kind, str):
                raise TypeError
            if kind == "hash":
                blob = _unb64(obj["f"])
                fields = unpack_fields(blob)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ArchiveError(f"archive {p} line {n} is malformed") from None
    return ArchivedKey(key=key, expire_at_ms=expire_at, dump=dump, type=kind,
                       fields=fields), blob


def check_archive(path: str | Path, schema: KeySchema) -> int:
    """Read the whole file once; the count of verified records, or ArchiveError."""
    return sum(1 for _ in read_archive(path, schema))


def _batches(items: Iterator[ArchivedKey], size: int,
             max_bytes: int = BATCH_BYTES) -> Iterator[list[ArchivedKey]]:
    batch: list[ArchivedKey] = []
    weight = 0
    for item in items:
        batch.append(item)
        weight += item.size
        if len(batch) >= size or weight >= max_bytes:
            yield batch
            batch, weight = [], 0
    if batch:
        yield batch


@dataclass
class _Pair:
    item: ArchivedKey
    state: str = "invalid"  # "gone", "invalid" or "job"
    ws: str = ""
    job_id: str = ""
    legacy: Record | None = None


def _same_content(item: ArchivedKey, live: Record, now: int, tolerance_ms: float) -> bool:
    """The live legacy key holds what was exported: the same fields and the same expiry."""
    if live.fields != item.fields:
        return False
    if item.expire_at_ms < 0 or live.pttl < 0:
        return item.expire_at_ms < 0 and live.pttl < 0
    return abs(now + live.pttl - item.expire_at_ms) <= tolerance_ms


def _judge(pairs: list[_Pair], copy_replies: list[Any], now: int,
           tolerance_s: float) -> list[str]:
    """One verdict per pair: 'deleted' (delete it) or the reason it stays."""
    out: list[str] = []
    k = 0
    for pair in pairs:
        if pair.legacy is None:
            out.append(pair.state)
            continue
        copy, copy_ttl, score = copy_replies[3 * k:3 * k + 3]
        k += 1
        if not _same_content(pair.item, pair.legacy, now, tolerance_s * 1000):
            out.append("changed")
            continue
        reason = verified(pair.legacy,
                          Record(copy if isinstance(copy, dict) and copy else None,
                                 copy_ttl if isinstance(copy_ttl, int) else -2),
                          float(score) if isinstance(score, bytes | int | float) else None,
                          workspace_id=pair.ws.encode(), tolerance_s=tolerance_s)
        out.append(reason or "deleted")
    return out


def _pairs(schema: KeySchema, group: list[ArchivedKey], replies: list[Any]) -> list[_Pair]:
    """Each archived key with its live legacy record, and which job it is (if valid)."""
    pairs: list[_Pair] = []
    for i, item in enumerate(group):
        record, pttl = replies[2 * i], replies[2 * i + 1]
        if isinstance(record, dict) and not record:
            pairs.append(_Pair(item, "gone"))
            continue
        if not isinstance(record, dict):
            pairs.append(_Pair(item))
            continue
        ws, job_id = text(record.get(b"workspace_id")), text(record.get(b"job_id"))
        if not is_valid_workspace_id(ws) or not is_valid_job_id(job_id) \
                or schema.old_key(job_id or "") != item.key:
            pairs.append(_Pair(item))
            continue
        pairs.append(_Pair(item, "job", ws or "", job_id or "",
                           Record(record, pttl if isinstance(pttl, int) else -2)))
    return pairs


def _copy_reads(schema: KeySchema, pairs: list[_Pair]) -> list[Command]:
    return [c for p in pairs if p.legacy is not None
            for c in (("HGETALL", schema.new_key(p.ws, p.job_id)),
                      ("PTTL", schema.new_key(p.ws, p.job_id)),
                      ("ZSCORE", schema.index_key(p.ws), p.job_id))]


def _delete_group(pinned: Pinned, schema: KeySchema, group: list[ArchivedKey],
                  counts: Counter[str], now_ms: Callable[[], int], tolerance_s: float) -> None:
    """WATCH the legacy keys, their copies and index keys; judge; UNLINK in MULTI/EXEC.

    A watched key that changes aborts the EXEC: the group is judged again from a fresh read
    (halved after repeated aborts, so one busy key cannot starve the rest).
    """
    for _attempt in range(WATCH_RETRIES):
        olds = [i.key for i in group]
        replies = pinned.watch_read(olds, [c for k in olds for c in (("HGETALL", k),
                                                                      ("PTTL", k))])
        pairs = _pairs(schema, group, replies)
        valid = [p for p in pairs if p.legacy is not None]
        watch = [x for p in valid for x in (schema.new_key(p.ws, p.job_id),
                                             schema.index_key(p.ws))]
        copies = pinned.exchange([("WATCH", *watch), *_copy_reads(schema, pairs)])[1:] \
            if watch else []
        verdicts = _judge(pairs, copies, now_ms(), tolerance_s)
        doomed = [p.item.key for p, v in zip(pairs, verdicts, strict=True) if v == "deleted"]
        if pinned.commit([("UNLINK", k) for k in doomed]) is not None:
            counts.update(verdicts)
            return
    if len(group) == 1:
        counts["raced"] += 1
        return
    half = len(group) // 2
    _delete_group(pinned, schema, group[:half], counts, now_ms, tolerance_s)
    _delete_group(pinned, schema, group[half:], counts, now_ms, tolerance_s)


def _delete_cluster(brouter: Router, schema: KeySchema, group: list[ArchivedKey],
                    counts: Counter[str], now_ms: Callable[[], int], tolerance_s: float) -> None:
    """Cluster: legacy key, copy and index entry live in different slots, so they are read,
    judged, and each legacy key is deleted by DELETE_IF_SAME only if it still holds the fields
    judged. A copy changed after its read held the legacy data when read, and the export
    keeps it, so nothing is lost that `restore` cannot put back."""
    olds = [i.key for i in group]
    replies = brouter.run([c for k in olds for c in (("HGETALL", k), ("PTTL", k))])
    pairs = _pairs(schema, group, replies)
    copies = brouter.run(_copy_reads(schema, pairs))
    verdicts = _judge(pairs, copies, now_ms(), tolerance_s)
    calls = [([p.item.key], [x for f, v in (p.legacy.fields or {}).items() for x in (f, v)])
             for p, v in zip(pairs, verdicts, strict=True)
             if v == "deleted" and p.legacy is not None]
    done = iter(run_script(brouter, DELETE_IF_SAME, calls))
    for verdict in verdicts:
        if verdict == "deleted" and next(done) != 1:
            verdict = "changed"
        counts[verdict] += 1


def delete_verified(client: redis.Redis, schema: KeySchema, path: str | Path, *,
                    actor: str, reason: str, batch: int = 500, rps: float = 0.0,
                    force: bool = False, overrides: Sequence[str] = (),
                    ttl_tolerance_s: float = 2.0, verify_max_age_s: float = VERIFY_MAX_AGE_S,
                    now: Callable[[], float] = time.time,
                    progress: Callable[[ArchiveSummary], None] | None = None) -> ArchiveSummary:
    """Delete legacy keys that are in the export, unchanged since, and `verified` in the new
    schema; every other key stays and is counted by reason.

    Refused (exit 2) without a fresh clean full verify (`verify_fresh`) unless overridden
    with a reason (audited).
    """
    if not reason.strip():
        raise UsageError("a reason is required for archive delete")
    unknown = set(overrides) - {"verify_fresh"}
    if unknown:
        raise UsageError(f"archive delete cannot override {', '.join(sorted(unknown))} "
                         "(only verify_fresh)")
    if archive_version(path) < 2:
        raise ArchiveError(f"archive {path} is version 1 (no logical content to compare): "
                           "export again with this relayctl before deleting")
    total = check_archive(path, schema)
    if not force and stored_flags(client).get(FALLBACK_OLD, True):
        raise UsageError("refusing archive delete while READ_FALLBACK_OLD is on: reads still "
                         "fall back to legacy keys (phase 5 first, or --force)")
    fresh, why = fresh_verify(client, max_age_s=verify_max_age_s, now=now)
    if not fresh:
        if "verify_fresh" not in overrides:
            raise UsageError(f"refusing archive delete: gate verify_fresh not met: {why} "
                             "(run a full `relayctl verify`, or --override verify_fresh "
                             "--reason TEXT)")
        audit.record(client, actor, "archive.delete.override", "verify_fresh", why,
                     "overridden", reason)
    bclient = binary_client(client)
    on_cluster = is_cluster(client)
    brouter = Router(bclient) if on_cluster else None
    pinned = None if on_cluster else Pinned(bclient)
    summary = ArchiveSummary(action="delete", path=str(path), count=total)
    counts: Counter[str] = Counter()
    audit.record(client, actor, "archive.delete.start", str(path), "", f"{total} keys", reason)
    t0 = time.perf_counter()
    now_ms = lambda: server_ms(bclient)  # noqa: E731
    try:
        for group in _batches(read_archive(path, schema), batch):
            if brouter is not None:
                _delete_cluster(brouter, schema, group, counts, now_ms, ttl_tolerance_s)
            else:
                assert pinned is not None
                _delete_group(pinned, schema, group, counts, now_ms, ttl_tolerance_s)
            summary.counts = {k: counts.get(k, 0) for k in DELETE_COUNTS}
            if progress is not None:
                progress(summary)
            if rps > 0:
                done = sum(counts.values())
                wait = done / rps - (time.perf_counter() - t0)
                if wait > 0:
                    time.sleep(wait)
    finally:
        if brouter is not None:
            brouter.close()
        if pinned is not None:
            pinned.close()
        bclient.close()
        summary.counts = {k: counts.get(k, 0) for k in DELETE_COUNTS}
        summary.duration_s = time.perf_counter() - t0
        audit.record(client, actor, "archive.delete.end", str(path), "",
                     json.dumps(summary.counts, sort_keys=True), reason)
    return summary


def _foreign_payload(reply: object) -> bool:
    """The server does not understand the DUMP payload (another engine or RDB version)."""
    return isinstance(reply, redis.ResponseError) and (
        "payload version" in str(reply) or "checksum" in str(reply)
        or "Bad data format" in str(reply))


def restore(client: redis.Redis, schema: KeySchema, path: str | Path, *, actor: str,
            reason: str, now_ms: Callable[[], int] | None = None,
            progress: Callable[[ArchiveSummary], None] | None = None) -> ArchiveSummary:
    """Put archived keys back with their absolute expiry; never overwrites a key.

    RESTORE when the server accepts the payload (`restored`, byte-identical); when its
    version is foreign (an archive from another engine), the logical record is written
    with HSET + PEXPIREAT (`rewritten`). On a cluster each batch goes to the primaries
    serving its keys (Router).
    """
    if not reason.strip():
        raise UsageError("a reason is required for archive restore")
    total = check_archive(path, schema)
    bclient = binary_client(client)
    brouter = Router(bclient) if is_cluster(client) else None
    summary = ArchiveSummary(action="restore", path=str(path), count=total,
                             counts={"restored": 0, "rewritten": 0, "exists": 0, "expired": 0,
                                     "unrestorable": 0})
    audit.record(client, actor, "archive.restore.start", str(path), "", f"{total} keys", reason)
    t0 = time.perf_counter()
    clock = now_ms or (lambda: server_ms(bclient))
    try:
        for group in _batches(read_archive(path, schema), SCAN_COUNT):
            items: list[ArchivedKey] = []
            commands: list[Command] = []
            stamp = clock()
            for item in group:
                if 0 <= item.expire_at_ms <= stamp:
                    summary.counts["expired"] += 1
                    continue
                ttl = max(item.expire_at_ms, 0)
                items.append(item)
                commands.append(("RESTORE", item.key, ttl, item.dump,
                                 *(("ABSTTL",) if item.expire_at_ms >= 0 else ())))
            replies = _send(bclient, brouter, commands)
            foreign: list[ArchivedKey] = []
            for item, reply in zip(items, replies, strict=True):
                if _foreign_payload(reply):
                    foreign.append(item)
                elif isinstance(reply, redis.ResponseError):
                    if "BUSYKEY" not in str(reply):
                        raise reply
                    summary.counts["exists"] += 1
                else:
                    summary.counts["restored"] += 1
            _rewrite(bclient, brouter, foreign, summary)
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


def _send(bclient: redis.Redis, brouter: Router | None, commands: list[Command]) -> list[Any]:
    if not commands:
        return []
    if brouter is not None:
        return brouter.run(commands)
    pipe = bclient.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)


def _rewrite(bclient: redis.Redis, brouter: Router | None, items: list[ArchivedKey],
             summary: ArchiveSummary) -> None:
    """Write foreign-payload records from their logical content (hashes only)."""
    calls: list[tuple[list[str], list[Any]]] = []
    for item in items:
        if item.fields is None:
            summary.counts["unrestorable"] += 1
            continue
        calls.append(([item.key], [item.expire_at_ms,
                                   *(x for f, v in item.fields.items() for x in (f, v))]))
    if not calls:
        return
    if brouter is not None:
        replies = run_script(brouter, RESTORE_FIELDS, calls)
    else:
        script = bclient.register_script(RESTORE_FIELDS)
        replies = [script(keys=k, args=a) for k, a in calls]
    for reply in replies:
        summary.counts["rewritten" if reply == 1 else "exists"] += 1
