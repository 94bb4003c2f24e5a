"""Parity of legacy and new records (SPEC §5): what the gates and the archive trust."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis

from relayctl.core import audit
from relayctl.core.archive import binary_client
from relayctl.core.cluster import (
    Router,
    Shard,
    close_shards,
    is_cluster,
    key_slot,
    run_script,
    shards,
)
from relayctl.core.errors import UsageError
from relayctl.core.flags import FALLBACK_OLD, stored_flags
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import VERIFY_KEY, KeySchema
from relayctl.core.lua import ISO_MS, TYPE_OK
from relayctl.core.roundtrip import Command, read_many
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id, validate_workspace_id

KINDS = ("missing", "extra", "field_mismatch", "ttl_drift", "workspace_mismatch",
         "index_missing")
MAX_EXAMPLES = 20
SCAN_COUNT = 1000

# KEYS: (old, new, index) per job.  ARGV: (job_id, ws) per job.
# Re-copies a legacy record over its new copy, but only if the legacy record is still the
# same job of the same workspace; returns the number repaired.
REPAIR = ISO_MS + TYPE_OK + """
local repaired = 0
for i = 1, #KEYS / 3 do
  local old, new, idx = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local job_id, ws = ARGV[2 * i - 1], ARGV[2 * i]
  local t = redis.call('TYPE', old)
  if type(t) == 'table' then t = t['ok'] end
  if t == 'hash' and type_is(idx, 'zset') and type_is(new, 'hash')
      and redis.call('HGET', old, 'workspace_id') == ws
      and redis.call('HGET', old, 'job_id') == job_id then
    redis.call('DEL', new)
    redis.call('COPY', old, new)
    redis.call('ZADD', idx, iso_ms(redis.call('HGET', old, 'enqueued_at')), job_id)
    repaired = repaired + 1
  end
end
return repaired
"""

# Cluster repair, step 1 on the legacy key's node: a consistent snapshot of the record.
# KEYS: old.  Returns {dump, pttl, workspace_id, job_id, enqueued_at}, or nil if not a hash.
LEGACY_SNAPSHOT = """
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t['ok'] end
if t ~= 'hash' then return false end
local h = redis.call('HMGET', KEYS[1], 'workspace_id', 'job_id', 'enqueued_at')
return {redis.call('DUMP', KEYS[1]), redis.call('PTTL', KEYS[1]), h[1], h[2], h[3]}
"""

# Cluster repair, step 2 on the new key's node: the copy replaced by the snapshot, and its
# index entry when the index shares the slot (hash-tagged templates).
# KEYS: new [, index].  ARGV: dump, ttl_ms (0: none), score, job_id.  Returns 1 or 0.
RESTORE_COPY = TYPE_OK + """
if not type_is(KEYS[1], 'hash') or (KEYS[2] and not type_is(KEYS[2], 'zset')) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('RESTORE', KEYS[1], ARGV[2], ARGV[1])
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
return 1
"""

# Re-reads of a suspect pair on a cluster, where they cannot be one MULTI/EXEC.
CLUSTER_REREADS = 2

Reader = Callable[[Sequence[Command]], list[Any]]


@dataclass
class VerifyReport:
    mode: str = "full"
    workspaces: tuple[str, ...] = ()
    checked: int = 0
    invalid_legacy: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    repaired: int = 0
    ttl_tolerance_s: float = 2.0
    duration_s: float = 0.0
    ts: float = 0.0
    # new keys already judged by the legacy pass whose record does not name its own key:
    # the extra pass must not count them a second time
    judged: set[str] = field(default_factory=set, repr=False)

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def add(self, kind: str, key: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(key)

    def as_dict(self) -> dict:
        return {
            "mode": self.mode, "workspaces": list(self.workspaces), "checked": self.checked,
            "invalid_legacy": self.invalid_legacy, "counts": dict(self.counts),
            "examples": {k: v for k, v in self.examples.items() if v},
            "repaired": self.repaired, "clean": self.clean,
            "ttl_tolerance_s": self.ttl_tolerance_s,
            "duration_s": round(self.duration_s, 3), "ts": self.ts,
        }


def _scan(client: redis.Redis, pattern: str, count: int = SCAN_COUNT) -> Iterator[list[str]]:
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=pattern, count=count)
        if keys:
            yield keys
        if int(cursor) == 0:
            return


def _scan_shards(found: list[Shard], pattern: str) -> Iterator[list[str]]:
    """SCAN every primary (the server itself when standalone), one after the other."""
    for shard in found:
        yield from _scan(shard.client, pattern)


def _reservoir(batches: Iterator[list[str]], n: int, rng: random.Random) -> list[str]:
    """A uniform sample of n key names from a SCAN stream, in constant memory."""
    sample: list[str] = []
    seen = 0
    for keys in batches:
        for key in keys:
            seen += 1
            if len(sample) < n:
                sample.append(key)
            else:
                j = rng.randrange(seen)
                if j < n:
                    sample[j] = key
    return sample


def _ttl_close(a: int, b: int, tolerance_ms: float) -> bool:
    if a < 0 or b < 0:
        return a < 0 and b < 0
    return abs(a - b) <= tolerance_ms


def run_verify(
    client: redis.Redis,
    schema: KeySchema | None = None,
    *,
    workspaces: tuple[str, ...] = (),
    sample: int | None = None,
    repair: bool = False,
    force: bool = False,
    ttl_tolerance_s: float = 2.0,
    progress: Callable[[VerifyReport], None] | None = None,
    store: bool = True,
    seed: int | None = None,
    now: Callable[[], float] = time.time,
) -> VerifyReport:
    """Compare every (or a sample of) legacy record with its new copy; optionally repair."""
    s = schema or KeySchema()
    wanted = frozenset(validate_workspace_id(w) for w in workspaces)
    if sample is not None and sample < 1:
        raise UsageError("--sample must be >= 1")
    if repair and not force and not stored_flags(client).get(FALLBACK_OLD, True):
        raise UsageError("refusing --repair: READ_FALLBACK_OLD is off, so the legacy schema is "
                         "no longer authoritative (pass --force to repair anyway)")
    report = VerifyReport(mode="sample" if sample else "full", workspaces=tuple(sorted(wanted)),
                          ttl_tolerance_s=ttl_tolerance_s)
    t0 = time.perf_counter()
    repairer = _Repairer(client, s) if repair else None
    router = Router(client) if is_cluster(client) else None
    read: Reader = router.run if router is not None else partial(read_many, client)
    found = shards(client)
    try:
        if sample:
            keys = _reservoir(_scan_shards(found, s.old_pattern), sample, random.Random(seed))
            batches: Iterator[list[str]] = (keys[i:i + SCAN_COUNT]
                                            for i in range(0, len(keys), SCAN_COUNT))
        else:
            batches = _scan_shards(found, s.old_pattern)
        for keys in batches:
            _check_legacy(client, read, s, keys, wanted, report, repairer, ttl_tolerance_s)
            if progress is not None:
                progress(report)
        if not sample:
            patterns = ([s.new_job.replace("<ws>", w).replace("<job_id>", "*")
                         for w in sorted(wanted)] if wanted else [s.new_pattern])
            for pattern in patterns:
                for keys in _scan_shards(found, pattern):
                    _check_extra(read, s, keys, wanted, report)
                    if progress is not None:
                        progress(report)
    finally:
        close_shards(found, client)
        for owned in (router, repairer):
            if owned is not None:
                owned.close()
    report.duration_s = time.perf_counter() - t0
    report.ts = now()
    if store:
        d = report.as_dict()
        client.hset(VERIFY_KEY, mapping={
            "ts": f"{report.ts:.3f}", "mode": report.mode, "checked": report.checked,
            "clean": "1" if report.clean else "0", "counts": json.dumps(d["counts"]),
            "examples": json.dumps(d["examples"]), "repaired": report.repaired,
            "workspaces": ",".join(report.workspaces), "invalid_legacy": report.invalid_legacy,
        })
    return report


def verify_audited(client: redis.Redis, schema: KeySchema | None = None, *, actor: str,
                   **options: Any) -> VerifyReport:
    """`run_verify`; records a `verify.repair` audit entry when --repair rewrote records."""
    report = run_verify(client, schema, **options)
    if report.repaired:
        audit.record(client, actor, "verify.repair", "new schema", "",
                     f"{report.repaired} records", "verify --repair")
    return report


def _check_legacy(client: redis.Redis, read: Reader, s: KeySchema, keys: list[str],
                  wanted: frozenset[str], report: VerifyReport, repairer: _Repairer | None,
                  tolerance_s: float) -> None:
    replies = read([c for k in keys for c in (("HGETALL", k), ("PTTL", k))])
    jobs: list[tuple[str, str, str, dict, int]] = []
    for i, key in enumerate(keys):
        record, pttl = replies[2 * i], replies[2 * i + 1]
        if not isinstance(record, dict) or not record:
            report.invalid_legacy += 1
            continue
        ws, job_id = record.get("workspace_id"), record.get("job_id")
        if not is_valid_workspace_id(ws) or not is_valid_job_id(job_id) \
                or s.old_key(job_id) != key:
            report.invalid_legacy += 1
            continue
        if wanted and ws not in wanted:
            continue
        jobs.append((key, ws, job_id, record, pttl if isinstance(pttl, int) else -2))
    if not jobs:
        return
    commands = []
    for _key, ws, job_id, _rec, _ttl in jobs:
        new = s.new_key(ws, job_id)
        commands += [("HGETALL", new), ("PTTL", new), ("ZSCORE", s.index_key(ws), job_id)]
    new_replies = read(commands)
    suspects = [i for i, job in enumerate(jobs)
                if _difference(job[3], job[4], *new_replies[3 * i:3 * i + 3], job[1],
                               tolerance_s) is not None]
    gone: set[int] = set()
    # Live traffic can change a record between the two reads above, so suspects are read
    # again (see _reread) and only differences that persist are reported.
    for _round in range(CLUSTER_REREADS if is_cluster(client) else 1):
        if not suspects:
            break
        snap = _reread(client, read, s, [jobs[i] for i in suspects])
        for n, i in enumerate(suspects):
            key, ws, job_id, _r, _t = jobs[i]
            rec, ttl, new_rec, new_ttl, score = snap[5 * n:5 * n + 5]
            if not isinstance(rec, dict) or rec.get("workspace_id") != ws \
                    or rec.get("job_id") != job_id:
                gone.add(i)  # the legacy record expired or changed hands meanwhile
                continue
            jobs[i] = (key, ws, job_id, rec, ttl)
            new_replies[3 * i:3 * i + 3] = [new_rec, new_ttl, score]
        suspects = [i for i in suspects if i not in gone
                    and _difference(jobs[i][3], jobs[i][4], *new_replies[3 * i:3 * i + 3],
                                    jobs[i][1], tolerance_s) is not None]
    to_repair: list[tuple[str, str, str]] = []
    for i, (key, ws, job_id, record, pttl) in enumerate(jobs):
        if i in gone:
            continue
        report.checked += 1
        kind = _difference(record, pttl, *new_replies[3 * i:3 * i + 3], ws, tolerance_s)
        if kind is not None:
            report.add(kind, s.new_key(ws, job_id))
            to_repair.append((key, ws, job_id))
            new_rec = new_replies[3 * i]
            if not isinstance(new_rec, dict) or (new_rec and (
                    new_rec.get("workspace_id") != ws or new_rec.get("job_id") != job_id)):
                report.judged.add(s.new_key(ws, job_id))
    if repairer is not None and to_repair:
        report.repaired += repairer(to_repair)


def _reread(client: redis.Redis, read: Reader, s: KeySchema,
            jobs: list[tuple[str, str, str, dict, int]]) -> list[Any]:
    """Legacy record, PTTL, new record, PTTL, index score per job, flat (5 per job).

    Standalone: one MULTI/EXEC, an atomic snapshot. Cluster: no transaction spans three slots,
    so legacy keys are read, then copies; a write landing in between can fake a difference,
    hence CLUSTER_REREADS: only differences seen on every read are reported (and a repair of
    a faked one re-copies the authoritative legacy record, what the dual-write wrote anyway).
    """
    if not is_cluster(client):
        pipe = client.pipeline(transaction=True)
        for key, ws, job_id, _r, _t in jobs:
            new = s.new_key(ws, job_id)
            pipe.hgetall(key).pttl(key).hgetall(new).pttl(new).zscore(s.index_key(ws), job_id)
        return pipe.execute(raise_on_error=False)  # a non-hash copy is a difference
    old = read([c for key, *_ in jobs for c in (("HGETALL", key), ("PTTL", key))])
    new = read([c for _k, ws, job_id, _r, _t in jobs
                             for c in (("HGETALL", s.new_key(ws, job_id)),
                                       ("PTTL", s.new_key(ws, job_id)),
                                       ("ZSCORE", s.index_key(ws), job_id))])
    out: list[Any] = []
    for n in range(len(jobs)):
        out += [*old[2 * n:2 * n + 2], *new[3 * n:3 * n + 3]]
    return out


class _Repairer:
    """Re-copies legacy records over their new copies and re-indexes them.

    Standalone: the REPAIR script (COPY inside one server). Cluster: COPY cannot cross
    slots, so DUMP on the legacy key's node and RESTORE on the new key's node.
    """

    def __init__(self, client: redis.Redis, schema: KeySchema) -> None:
        self.schema = schema
        self.cluster = is_cluster(client)
        self.script = None if self.cluster else client.register_script(REPAIR)
        self.bclient: Any = None
        self.brouter: Router | None = None
        self.client = client

    def __call__(self, pairs: list[tuple[str, str, str]]) -> int:
        if self.script is not None:
            keys: list[str] = []
            args: list[str] = []
            for key, ws, job_id in pairs:
                keys += [key, self.schema.new_key(ws, job_id), self.schema.index_key(ws)]
                args += [job_id, ws]
            return int(self.script(keys=keys, args=args))
        if self.brouter is None:
            self.bclient = binary_client(self.client)
            self.brouter = Router(self.bclient)
        return _repair_on_cluster(self.brouter, self.schema, pairs)

    def close(self) -> None:
        if self.brouter is not None:
            self.brouter.close()
        if self.bclient is not None:
            self.bclient.close()


def _repair_on_cluster(brouter: Router, s: KeySchema, pairs: list[tuple[str, str, str]]
                       ) -> int:
    """DUMP each legacy record, then DEL + RESTORE its copy and ZADD its index entry.

    One script when copy and index share a slot, else copy first then entry (an entry never
    points at a missing copy). A write racing the repair can leave a stale copy: the next
    verify reports it.
    """
    snaps = run_script(brouter, LEGACY_SNAPSHOT, [([key], []) for key, _w, _j in pairs])
    calls: list[tuple[list[str], list[Any]]] = []
    entries: list[tuple[str, int, str] | None] = []
    for (_key, ws, job_id), snap in zip(pairs, snaps, strict=True):
        if not isinstance(snap, list) or snap[2] != ws.encode() or snap[3] != job_id.encode():
            continue  # expired, rewritten as another type or another job meanwhile
        dump, pttl, enqueued_at = snap[0], int(snap[1]), snap[4]
        new, idx = s.new_key(ws, job_id), s.index_key(ws)
        score = iso_to_ms(enqueued_at.decode(errors="replace") if enqueued_at else None)
        together = key_slot(new) == key_slot(idx)
        calls.append(([new, idx] if together else [new],
                      [dump, max(pttl, 0), score, job_id]))
        entries.append(None if together else (idx, score, job_id))
    done = run_script(brouter, RESTORE_COPY, calls)
    repaired = sum(1 for ok, entry in zip(done, entries, strict=True) if ok and entry is None)
    later = [entry for ok, entry in zip(done, entries, strict=True) if ok and entry is not None]
    replies = brouter.run([("ZADD", idx, score, job_id) for idx, score, job_id in later])
    return repaired + sum(1 for r in replies if isinstance(r, int))


def _difference(record: dict, pttl: int, new_rec: object, new_ttl: object, score: object,
                ws: str, tolerance_s: float) -> str | None:
    """The first kind of difference between a legacy record and its new copy, or None."""
    if not isinstance(new_rec, dict) or not new_rec:
        return "missing"
    if new_rec.get("workspace_id") != ws:
        return "workspace_mismatch"
    if new_rec != record:
        return "field_mismatch"
    if not _ttl_close(pttl, new_ttl if isinstance(new_ttl, int) else -2, tolerance_s * 1000):
        return "ttl_drift"
    if not isinstance(score, int | float) or float(score) != iso_to_ms(record.get("enqueued_at")):
        return "index_missing"
    return None


def _check_extra(read: Reader, s: KeySchema, keys: list[str],
                 wanted: frozenset[str], report: VerifyReport) -> None:
    """New records without a legacy record (job id read from the record, not the key)."""
    heads = read([("HMGET", k, "job_id", "workspace_id") for k in keys])
    candidates = []
    for key, head in zip(keys, heads, strict=True):
        if key in report.judged:
            continue
        if not isinstance(head, list):
            report.add("workspace_mismatch", key)
            continue
        job_id, ws = head
        if not is_valid_job_id(job_id) or s.new_key(ws or "", job_id) != key:
            report.add("workspace_mismatch", key)
            continue
        if wanted and ws not in wanted:
            continue
        candidates.append((key, job_id))
    if not candidates:
        return
    exists = read([("EXISTS", s.old_key(j)) for _k, j in candidates])
    for (key, _job), n in zip(candidates, exists, strict=True):
        if n == 0:
            report.add("extra", key)


def last_verify(client: redis.Redis) -> dict | None:
    return parse_verify(client.hgetall(VERIFY_KEY))


def parse_verify(raw: dict[str, str]) -> dict | None:
    """The stored relay:verify:last hash, or None when absent or malformed."""
    if not raw:
        return None
    try:
        return {
            "ts": float(raw["ts"]), "mode": raw.get("mode", ""), "clean": raw.get("clean") == "1",
            "checked": int(raw.get("checked", 0)), "counts": json.loads(raw.get("counts", "{}")),
            "repaired": int(raw.get("repaired", 0)),
        }
    except (KeyError, ValueError):
        return None
