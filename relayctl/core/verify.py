"""Parity of legacy and new records (SPEC §5): what the gates and the archive trust.

Every judgement is `relayctl.core.verified.verified`, the predicate `archive delete` uses
too. Key names and field values are bytes; a key that is not UTF-8 or not a legacy job is
counted `invalid` by reason and shown escaped. Walks restart from cursor 0 when the server
answering changes (relayctl.core.scan), so a stored full verify covers one server.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis

from relayctl.core import audit
from relayctl.core.binary import binary_client
from relayctl.core.cluster import (
    Router,
    Shard,
    close_shards,
    is_cluster,
    key_slot,
    refresh_topology,
    run_script,
    shards,
)
from relayctl.core.errors import UsageError
from relayctl.core.flags import FALLBACK_OLD, stored_flags
from relayctl.core.formatting import duration, iso
from relayctl.core.keys import AUDIT_KEY, VERIFY_KEY, KeySchema
from relayctl.core.pinned import Pinned
from relayctl.core.roundtrip import Command, read_many
from relayctl.core.scan import RESTARTS, ServerIdentity, Walk, restarting
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id, validate_workspace_id
from relayctl.core.verified import (
    Fields,
    Record,
    escape,
    provably_newer,
    score_of,
    text,
    ttl_ok,
    verified,
)

KINDS = ("missing", "extra", "field_mismatch", "ttl_drift", "workspace_mismatch",
         "index_missing", "partial", "index_orphan")
INVALID_REASONS = ("encoding", "schema")
REPAIRS = ("copied", "overwritten", "completed", "ttl", "indexed", "orphans_removed")
MAX_EXAMPLES = 20
SCAN_COUNT = 1000
VERIFY_MAX_AGE_S = 3600.0
WATCH_RETRIES = 3
HSET_CHUNK = 1000

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
# index entry when the index shares the slot, only if the copy is still what was judged.
# KEYS: new [, index].  ARGV: dump, ttl_ms (0: none), score, job_id, expect, field, value...
# expect: '-' any copy; '0' no copy; 'n' the copy holds exactly the field/value pairs given.
# Returns 1 (replaced) or 0 (the copy changed or a key has the wrong type).
RESTORE_COPY = """
local function type_of(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then t = t['ok'] end
  return t
end
local t = type_of(KEYS[1])
if (t ~= 'none' and t ~= 'hash') or (KEYS[2] and type_of(KEYS[2]) ~= 'none'
    and type_of(KEYS[2]) ~= 'zset') then
  return 0
end
if ARGV[5] == '0' and t ~= 'none' then return 0 end
if ARGV[5] == 'n' then
  if redis.call('HLEN', KEYS[1]) * 2 ~= #ARGV - 5 then return 0 end
  for j = 6, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[j]) ~= ARGV[j + 1] then return 0 end
  end
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
class LegacyJob:
    """A legacy record under check, with where its copy must be (not `jobs.Job`)."""

    key: str
    ws: str
    job_id: str
    legacy: Record

    @property
    def wsb(self) -> bytes:
        return self.ws.encode()


@dataclass
class VerifyReport:
    mode: str = "full"
    workspaces: tuple[str, ...] = ()
    checked: int = 0
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVALID_REASONS, 0))
    invalid_examples: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    repairs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPAIRS, 0))
    repaired: int = 0
    conflicts: int = 0
    conflict_examples: list[str] = field(default_factory=list)
    raced: int = 0
    ttl_tolerance_s: float = 2.0
    duration_s: float = 0.0
    started: float = 0.0
    ts: float = 0.0
    complete: bool = False
    restarts: int = 0
    servers: list[dict[str, str]] = field(default_factory=list)
    # new keys already judged by the legacy pass whose record does not name its own key:
    # the extra pass must not count them a second time
    judged: set[str] = field(default_factory=set, repr=False)

    @property
    def invalid_legacy(self) -> int:
        return sum(self.invalid.values())

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def add(self, kind: str, key: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(key)

    def add_invalid(self, reason: str, key: bytes | str) -> None:
        self.invalid[reason] += 1
        if len(self.invalid_examples) < MAX_EXAMPLES:
            self.invalid_examples.append(escape(key))

    def add_conflict(self, key: str) -> None:
        self.conflicts += 1
        if len(self.conflict_examples) < MAX_EXAMPLES:
            self.conflict_examples.append(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "workspaces": list(self.workspaces), "checked": self.checked,
            "invalid_legacy": self.invalid_legacy, "invalid": dict(self.invalid),
            "invalid_examples": list(self.invalid_examples), "counts": dict(self.counts),
            "examples": {k: v for k, v in self.examples.items() if v},
            "repaired": self.repaired, "repairs": dict(self.repairs),
            "conflicts": self.conflicts, "conflict_examples": list(self.conflict_examples),
            "raced": self.raced, "clean": self.clean, "complete": self.complete,
            "restarts": self.restarts, "servers": list(self.servers),
            "ttl_tolerance_s": self.ttl_tolerance_s,
            "duration_s": round(self.duration_s, 3), "started": iso(self.started),
            "finished": iso(self.ts),
        }


def _reservoir(batches: Iterator[list[bytes]], n: int, rng: random.Random) -> list[bytes]:
    """A uniform sample of n key names from a SCAN stream, in constant memory."""
    sample: list[bytes] = []
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


def _score(reply: object) -> float | None:
    if isinstance(reply, bytes | str):
        return float(reply)
    if isinstance(reply, int | float):
        return float(reply)
    return None


def _pttl(reply: object) -> int:
    return reply if isinstance(reply, int) else -2


def _fields(reply: object) -> Fields | None:
    return reply if isinstance(reply, dict) and reply else None


class _Run:
    """One attempt at a verify: a walk over every shard, restarted whole on a server change."""

    def __init__(self, client: redis.Redis, bclient: Any, s: KeySchema, report: VerifyReport,
                 wanted: frozenset[str], tolerance_s: float, repair: bool,
                 prefer_legacy: bool, progress: Callable[[VerifyReport], None] | None) -> None:
        self.client, self.bclient, self.s, self.report = client, bclient, s, report
        self.wanted, self.tolerance_s = wanted, tolerance_s
        self.repair, self.prefer_legacy, self.progress = repair, prefer_legacy, progress
        self.cluster = is_cluster(client)
        self.router = Router(bclient) if self.cluster else None
        self.read: Reader = (self.router.run if self.router is not None
                             else partial(read_many, bclient))
        self.pinned = None if self.cluster else Pinned(bclient)

    def close(self) -> None:
        if self.router is not None:
            self.router.close()
        if self.pinned is not None:
            self.pinned.close()

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(self.report)

    # legacy pass --------------------------------------------------------------------------

    def legacy_jobs(self, keys: list[bytes]) -> list[LegacyJob]:
        """The valid legacy jobs among `keys`; every other name counted invalid by reason."""
        s, report = self.s, self.report
        names: list[str] = []
        for raw in keys:
            name = text(raw)
            if name is None:
                report.add_invalid("encoding", raw)
            elif not s.is_old_key(name):
                report.add_invalid("schema", raw)
            else:
                names.append(name)
        replies = self.read([c for k in names for c in (("HGETALL", k), ("PTTL", k))])
        jobs: list[LegacyJob] = []
        for i, name in enumerate(names):
            record, pttl = replies[2 * i], replies[2 * i + 1]
            if isinstance(record, dict) and not record:
                continue  # expired since the SCAN
            if not isinstance(record, dict):
                report.add_invalid("schema", name)
                continue
            raw_ws, raw_id = record.get(b"workspace_id"), record.get(b"job_id")
            ws, job_id = text(raw_ws), text(raw_id)
            if (raw_ws is not None and ws is None) or (raw_id is not None and job_id is None):
                report.add_invalid("encoding", name)
                continue
            if not is_valid_workspace_id(ws) or not is_valid_job_id(job_id) \
                    or s.old_key(job_id or "") != name:
                report.add_invalid("schema", name)
                continue
            assert ws is not None and job_id is not None
            if self.wanted and ws not in self.wanted:
                continue
            jobs.append(LegacyJob(name, ws, job_id, Record(record, _pttl(pttl))))
        return jobs

    def _copy_reads(self, jobs: list[LegacyJob]) -> list[Command]:
        s = self.s
        return [c for j in jobs for c in (("HGETALL", s.new_key(j.ws, j.job_id)),
                                          ("PTTL", s.new_key(j.ws, j.job_id)),
                                          ("ZSCORE", s.index_key(j.ws), j.job_id))]

    def _judge(self, job: LegacyJob, copy: object, copy_ttl: object, score: object) -> str | None:
        return verified(job.legacy, Record(_fields(copy), _pttl(copy_ttl)), _score(score),
                        workspace_id=job.wsb, tolerance_s=self.tolerance_s)

    def check_legacy(self, keys: list[bytes]) -> None:
        s, report = self.s, self.report
        jobs = self.legacy_jobs(keys)
        if not jobs:
            return
        replies = self.read(self._copy_reads(jobs))
        suspects = [i for i, j in enumerate(jobs)
                    if self._judge(j, *replies[3 * i:3 * i + 3]) is not None]
        gone: set[int] = set()
        # Live traffic can change a record between the two reads above, so suspects are read
        # again (see _reread) and only differences that persist are reported.
        for _round in range(CLUSTER_REREADS if self.cluster else 1):
            if not suspects:
                break
            snap = self._reread([jobs[i] for i in suspects])
            for n, i in enumerate(suspects):
                j = jobs[i]
                rec, ttl, new_rec, new_ttl, score = snap[5 * n:5 * n + 5]
                if not isinstance(rec, dict) or rec.get(b"workspace_id") != j.wsb \
                        or rec.get(b"job_id") != j.job_id.encode():
                    gone.add(i)  # the legacy record expired or changed hands meanwhile
                    continue
                jobs[i] = LegacyJob(j.key, j.ws, j.job_id, Record(rec, _pttl(ttl)))
                replies[3 * i:3 * i + 3] = [new_rec, new_ttl, score]
            suspects = [i for i in suspects if i not in gone
                        and self._judge(jobs[i], *replies[3 * i:3 * i + 3]) is not None]
        to_repair: list[LegacyJob] = []
        for i, j in enumerate(jobs):
            if i in gone:
                continue
            report.checked += 1
            kind = self._judge(j, *replies[3 * i:3 * i + 3])
            if kind is None:
                continue
            new_key = s.new_key(j.ws, j.job_id)
            report.add(kind, new_key)
            to_repair.append(j)
            new_rec = _fields(replies[3 * i])
            if new_rec is None or new_rec.get(b"workspace_id") != j.wsb \
                    or new_rec.get(b"job_id") != j.job_id.encode():
                report.judged.add(new_key)
        if self.repair and to_repair:
            if self.pinned is not None:
                _repair_standalone(self.pinned, s, to_repair, report, self.prefer_legacy,
                                   self.tolerance_s)
            else:
                assert self.router is not None
                _repair_cluster(self.router, self.read, s, to_repair, report,
                                self.prefer_legacy, self.tolerance_s)

    def _reread(self, jobs: list[LegacyJob]) -> list[Any]:
        """Legacy record, PTTL, new record, PTTL, index score per job, flat (5 per job).

        Standalone: one MULTI/EXEC, an atomic snapshot. Cluster: no transaction spans three
        slots, so legacy keys are read, then copies; a write landing in between can fake a
        difference, hence CLUSTER_REREADS: only differences seen on every read are reported.
        """
        s = self.s
        reads: list[Command] = []
        for j in jobs:
            new = s.new_key(j.ws, j.job_id)
            reads += [("HGETALL", j.key), ("PTTL", j.key), ("HGETALL", new), ("PTTL", new),
                      ("ZSCORE", s.index_key(j.ws), j.job_id)]
        if self.pinned is not None:
            return self.pinned.snapshot(reads)
        olds = self.read([c for n in range(len(jobs)) for c in reads[5 * n:5 * n + 2]])
        news = self.read([c for n in range(len(jobs)) for c in reads[5 * n + 2:5 * n + 5]])
        out: list[Any] = []
        for n in range(len(jobs)):
            out += [*olds[2 * n:2 * n + 2], *news[3 * n:3 * n + 3]]
        return out

    # extra pass ---------------------------------------------------------------------------

    def check_extra(self, keys: list[bytes]) -> None:
        """New records without a legacy record (job id read from the record, not the key)."""
        s, report = self.s, self.report
        names: list[str] = []
        for raw in keys:
            name = text(raw)
            if name is None:
                report.add_invalid("encoding", raw)
            elif name not in report.judged:
                names.append(name)
        heads = self.read([("HMGET", k, "job_id", "workspace_id") for k in names])
        candidates = []
        for key, head in zip(names, heads, strict=True):
            if not isinstance(head, list):
                report.add("workspace_mismatch", key)
                continue
            job_id, ws = text(head[0]), text(head[1])
            if not is_valid_job_id(job_id) or s.new_key(ws or "", job_id or "") != key:
                report.add("workspace_mismatch", key)
                continue
            if self.wanted and ws not in self.wanted:
                continue
            candidates.append((key, job_id or ""))
        if not candidates:
            return
        exists = self.read([("EXISTS", s.old_key(j)) for _k, j in candidates])
        for (key, _job), n in zip(candidates, exists, strict=True):
            if n == 0:
                report.add("extra", key)

    # index pass ---------------------------------------------------------------------------

    def check_index(self, shard_client: redis.Redis, index_key: bytes,
                    identity: ServerIdentity | None) -> None:
        """Entries of one workspace index whose job exists in neither schema (orphans)."""
        s, report = self.s, self.report
        name = text(index_key)
        head, _, tail = s.index.partition("<ws>")
        ws = name[len(head):len(name) - len(tail)] if name is not None else None
        if name is None or not is_valid_workspace_id(ws):
            report.add_invalid("encoding" if name is None else "schema", index_key)
            return
        assert ws is not None
        if self.wanted and ws not in self.wanted:
            return
        walk = Walk(shard_client, zset=index_key, count=SCAN_COUNT, expect=identity)
        for pairs in walk:
            members = [m for m, _score in pairs]
            alive = _exists_pairs(self.read, s, ws, members)
            orphans = [m for m, a in zip(members, alive, strict=True) if not a]
            for member in orphans:
                report.add("index_orphan", f"{name} {escape(member)}")
            if orphans and self.repair:
                report.repairs["orphans_removed"] += _remove_orphans(self, name, ws, orphans)
            self._tick()


def _exists_pairs(read: Reader, s: KeySchema, ws: str, members: list[bytes]) -> list[bool]:
    ids = [text(m) for m in members]
    reads: list[Command] = []
    for job_id in ids:
        if job_id is not None and is_valid_job_id(job_id):
            reads += [("EXISTS", s.new_key(ws, job_id)), ("EXISTS", s.old_key(job_id))]
    replies = read(reads)
    out: list[bool] = []
    n = 0
    for job_id in ids:
        if job_id is None or not is_valid_job_id(job_id):
            out.append(False)
            continue
        out.append(bool(replies[n]) or bool(replies[n + 1]))
        n += 2
    return out


def _remove_orphans(run: _Run, index_key: str, ws: str, members: list[bytes]) -> int:
    """ZREM entries whose job is still absent; standalone under WATCH of both job keys."""
    s = run.s
    if run.pinned is None:
        alive = _exists_pairs(run.read, s, ws, members)
        dead = [m for m, a in zip(members, alive, strict=True) if not a]
        replies = run.read([("ZREM", index_key, m) for m in dead])
        return sum(1 for r in replies if r == 1)
    pinned = run.pinned
    for _attempt in range(WATCH_RETRIES):
        watch: list[Any] = [index_key]
        for m in members:
            job_id = text(m)
            if job_id is not None and is_valid_job_id(job_id):
                watch += [s.new_key(ws, job_id), s.old_key(job_id)]
        pinned.watch_read(watch, [])
        alive = _exists_pairs(pinned.exchange, s, ws, members)
        dead = [m for m, a in zip(members, alive, strict=True) if not a]
        done = pinned.commit([("ZREM", index_key, m) for m in dead])
        if done is not None:
            return sum(1 for r in done if r == 1)
    run.report.raced += len(members)
    return 0


def _plan(s: KeySchema, job: LegacyJob, legacy: Record, copy: Record, score: float | None,
          prefer_legacy: bool, tolerance_s: float) -> tuple[list[Command], list[str], bool]:
    """Writes that bring the copy to the legacy record without reverting it.

    Returns (writes, repair kinds, conflict). Missing copies, missing fields, a too-short TTL
    and the index entry are filled freely; a field whose value differs is overwritten only
    when the legacy record is provably newer (or prefer_legacy): else a conflict, untouched.
    """
    assert legacy.fields is not None
    new, idx = s.new_key(job.ws, job.job_id), s.index_key(job.ws)
    want = score_of(legacy.fields)
    if verified(legacy, copy, score, workspace_id=job.wsb, tolerance_s=tolerance_s) is None:
        return [], [], False
    if not copy.exists:
        return ([("DEL", new), ("COPY", job.key, new), ("ZADD", idx, want, job.job_id)],
                ["copied"], False)
    c = copy.fields or {}
    lf = legacy.fields
    differing = [f for f in lf if f in c and c[f] != lf[f]] + [f for f in c if f not in lf]
    if differing:
        if prefer_legacy or provably_newer(lf, c):
            return ([("DEL", new), ("COPY", job.key, new), ("ZADD", idx, want, job.job_id)],
                    ["overwritten"], False)
        if c.get(b"workspace_id", job.wsb) != job.wsb:
            return [], [], True  # another workspace's record: nothing is filled into it
    writes: list[Command] = []
    kinds: list[str] = []
    missing = [f for f in lf if f not in c]
    if missing:
        for i in range(0, len(missing), HSET_CHUNK):
            chunk = missing[i:i + HSET_CHUNK]
            writes.append(("HSET", new, *(x for f in chunk for x in (f, lf[f]))))
        kinds.append("completed")
        if copy.pttl < 0 and legacy.pttl > 0:
            # a partial copy was created without a TTL: it expires with its source
            writes.append(("PEXPIRE", new, legacy.pttl))
    if not ttl_ok(legacy.pttl, copy.pttl, tolerance_s * 1000):
        writes.append(("PERSIST", new) if legacy.pttl < 0 else ("PEXPIRE", new, legacy.pttl))
        kinds.append("ttl")
    if score is None or score != want:
        writes.append(("ZADD", idx, want, job.job_id))
        kinds.append("indexed")
    return writes, kinds, bool(differing)


def _repair_standalone(pinned: Pinned, s: KeySchema, jobs: list[LegacyJob], report: VerifyReport,
                       prefer_legacy: bool, tolerance_s: float) -> None:
    """WATCH the three keys of each job, re-read, plan, MULTI/EXEC; redo if anything moved."""
    pending = jobs
    for _attempt in range(WATCH_RETRIES):
        watch: list[Any] = []
        reads: list[Command] = []
        for j in pending:
            new, idx = s.new_key(j.ws, j.job_id), s.index_key(j.ws)
            watch += [j.key, new, idx]
            reads += [("HGETALL", j.key), ("PTTL", j.key), ("HGETALL", new), ("PTTL", new),
                      ("ZSCORE", idx, j.job_id)]
        snap = pinned.watch_read(watch, reads)
        writes: list[Command] = []
        outcome: list[tuple[LegacyJob, list[str], bool]] = []
        for n, j in enumerate(pending):
            rec, ttl, new_rec, new_ttl, score = snap[5 * n:5 * n + 5]
            rec = _fields(rec)
            if rec is None or rec.get(b"workspace_id") != j.wsb \
                    or rec.get(b"job_id") != j.job_id.encode():
                continue  # the legacy record expired or changed hands
            if isinstance(new_rec, Exception) or isinstance(score, Exception):
                outcome.append((j, [], True))  # not a hash / not a zset: a human decides
                continue
            w, kinds, conflict = _plan(s, j, Record(rec, _pttl(ttl)),
                                       Record(_fields(new_rec), _pttl(new_ttl)),
                                       _score(score), prefer_legacy, tolerance_s)
            writes += w
            outcome.append((j, kinds, conflict))
        done = pinned.commit(writes)
        if done is None:
            continue  # a watched key changed: judge again from a fresh read
        for j, kinds, conflict in outcome:
            for kind in kinds:
                report.repairs[kind] += 1
            if kinds:
                report.repaired += 1
            if conflict:
                report.add_conflict(s.new_key(j.ws, j.job_id))
        return
    report.raced += len(pending)


def _repair_cluster(router: Router, read: Reader, s: KeySchema, jobs: list[LegacyJob],
                    report: VerifyReport, prefer_legacy: bool, tolerance_s: float) -> None:
    """Cluster: no transaction spans the three slots. Copies and overwrites are DUMP/RESTORE
    guarded by the copy as judged (RESTORE_COPY); fields are filled with HSETNX, which never
    overwrites; TTL and index entries are set directly."""
    reads: list[Command] = []
    for j in jobs:
        new = s.new_key(j.ws, j.job_id)
        reads += [("HGETALL", new), ("PTTL", new), ("ZSCORE", s.index_key(j.ws), j.job_id)]
    replies = read(reads)
    replace: list[tuple[str, str, str]] = []
    expect: list[Fields | None] = []
    kinds_of: dict[str, str] = {}
    direct: list[Command] = []
    for n, j in enumerate(jobs):
        if isinstance(replies[3 * n], Exception) or isinstance(replies[3 * n + 2], Exception):
            report.add_conflict(s.new_key(j.ws, j.job_id))  # not a hash / not a zset
            continue
        copy = Record(_fields(replies[3 * n]), _pttl(replies[3 * n + 1]))
        writes, kinds, conflict = _plan(s, j, j.legacy, copy, _score(replies[3 * n + 2]),
                                        prefer_legacy, tolerance_s)
        if conflict:
            report.add_conflict(s.new_key(j.ws, j.job_id))
        if kinds[:1] in (["copied"], ["overwritten"]):
            replace.append((j.key, j.ws, j.job_id))
            expect.append(copy.fields)
            kinds_of[j.job_id] = kinds[0]
            continue
        for w in writes:
            if w[0] == "HSET":
                direct += [("HSETNX", w[1], w[i], w[i + 1]) for i in range(2, len(w), 2)]
            else:
                direct.append(w)
        for kind in kinds:
            report.repairs[kind] += 1
        if kinds:
            report.repaired += 1
    if direct:
        for reply in router.run(direct):
            if isinstance(reply, Exception):
                raise reply
    if replace:
        done = _repair_on_cluster(router, s, replace, expect)
        report.repaired += done
        report.repairs["copied"] += done  # (overwrites included: both restore the record)


def _repair_on_cluster(brouter: Router, s: KeySchema, pairs: list[tuple[str, str, str]],
                       expect: list[Fields | None] | None = None) -> int:
    """DUMP each legacy record, then DEL + RESTORE its copy and ZADD its index entry.

    `expect` (per pair): the copy as judged (None: no copy); the restore happens only if the
    copy is still exactly that. Without it, any copy is replaced. One script when copy and
    index share a slot, else copy first then entry (an entry never points at a missing copy).
    """
    snaps = run_script(brouter, LEGACY_SNAPSHOT, [([key], []) for key, _w, _j in pairs])
    calls: list[tuple[list[str], list[Any]]] = []
    entries: list[tuple[str, float, str] | None] = []
    for n, ((_key, ws, job_id), snap) in enumerate(zip(pairs, snaps, strict=True)):
        if not isinstance(snap, list) or snap[2] != ws.encode() or snap[3] != job_id.encode():
            continue  # expired, rewritten as another type or another job meanwhile
        dump, pttl, enqueued_at = snap[0], int(snap[1]), snap[4]
        new, idx = s.new_key(ws, job_id), s.index_key(ws)
        score = score_of({b"enqueued_at": enqueued_at} if enqueued_at else {})
        together = key_slot(new) == key_slot(idx)
        guard: list[Any] = ["-"]
        if expect is not None:
            judged = expect[n]
            guard = ["0"] if judged is None else \
                ["n", *(x for f, v in judged.items() for x in (f, v))]
        calls.append(([new, idx] if together else [new],
                      [dump, max(pttl, 0), score, job_id, *guard]))
        entries.append(None if together else (idx, score, job_id))
    done = run_script(brouter, RESTORE_COPY, calls)
    repaired = sum(1 for ok, entry in zip(done, entries, strict=True) if ok and entry is None)
    later = [entry for ok, entry in zip(done, entries, strict=True) if ok and entry is not None]
    replies = brouter.run([("ZADD", idx, score, job_id) for idx, score, job_id in later])
    return repaired + sum(1 for r in replies if isinstance(r, int))


def run_verify(
    client: redis.Redis,
    schema: KeySchema | None = None,
    *,
    workspaces: tuple[str, ...] = (),
    sample: int | None = None,
    repair: bool = False,
    force: bool = False,
    prefer_legacy: bool = False,
    actor: str = "relayctl",
    reason: str = "verify --repair",
    ttl_tolerance_s: float = 2.0,
    progress: Callable[[VerifyReport], None] | None = None,
    store: bool = True,
    seed: int | None = None,
    restarts: int = RESTARTS,
    now: Callable[[], float] = time.time,
) -> VerifyReport:
    """Compare every (or a sample of) legacy record with its new copy; optionally repair.

    Repair never reverts a newer copy (see _plan); `prefer_legacy` overwrites anyway.
    """
    s = schema or KeySchema()
    wanted = frozenset(validate_workspace_id(w) for w in workspaces)
    _check_options(client, sample=sample, repair=repair, force=force,
                   prefer_legacy=prefer_legacy, reason=reason)
    started = now()
    t0 = time.perf_counter()
    bclient = binary_client(client)
    carried: dict[str, Any] = {"repairs": Counter(), "repaired": 0, "conflicts": 0}

    def attempt(n: int) -> VerifyReport:
        report = VerifyReport(mode="sample" if sample else "full",
                              workspaces=tuple(sorted(wanted)), ttl_tolerance_s=ttl_tolerance_s,
                              restarts=n, started=started)
        if n:
            refresh_topology(client)
        run = _Run(client, bclient, s, report, wanted, ttl_tolerance_s, repair, prefer_legacy,
                   progress)
        found = shards(bclient)
        try:
            _walk_all(run, found, sample, seed)
        finally:
            close_shards(found, bclient)
            run.close()
            carried["repairs"].update(report.repairs)
            carried["repaired"] += report.repaired
        return report

    if repair:
        audit.record(client, actor, "verify.repair.start", "new schema", "",
                     "prefer legacy" if prefer_legacy else "fill only", reason)
    report: VerifyReport | None = None
    try:
        report = restarting(attempt, restarts=restarts)
    finally:
        bclient.close()
        if repair:
            audit.record(client, actor, "verify.repair.end", "new schema", "",
                         json.dumps({**dict(carried["repairs"]),
                                     "conflicts": report.conflicts if report else None,
                                     "complete": report is not None}, sort_keys=True), reason)
    report.repairs = {k: int(carried["repairs"].get(k, 0)) for k in REPAIRS}
    report.repaired = int(carried["repaired"])
    report.complete = True
    report.duration_s = time.perf_counter() - t0
    report.ts = now()
    if store:
        _store_report(client, report)
    return report


def _check_options(client: redis.Redis, *, sample: int | None, repair: bool, force: bool,
                   prefer_legacy: bool, reason: str) -> None:
    """Refuse a bad combination before anything is read or written."""
    if sample is not None and sample < 1:
        raise UsageError("--sample must be >= 1")
    if prefer_legacy and not repair:
        raise UsageError("--prefer legacy only applies to --repair")
    if repair and not reason.strip():
        raise UsageError("verify --repair needs a --reason")
    if repair and not force and not stored_flags(client).get(FALLBACK_OLD, True):
        raise UsageError("refusing --repair: READ_FALLBACK_OLD is off, so the legacy schema is "
                         "no longer authoritative (pass --force to repair anyway)")


def _store_report(client: redis.Redis, report: VerifyReport) -> None:
    """The completed report under VERIFY_KEY, where the gates and `last_verify` read it."""
    d = report.as_dict()
    client.hset(VERIFY_KEY, mapping={
        "ts": f"{report.ts:.3f}", "started": f"{report.started:.3f}", "mode": report.mode,
        "checked": report.checked, "clean": "1" if report.clean else "0",
        "counts": json.dumps(d["counts"]), "examples": json.dumps(d["examples"]),
        "repaired": report.repaired, "workspaces": ",".join(report.workspaces),
        "invalid_legacy": report.invalid_legacy, "invalid": json.dumps(d["invalid"]),
        "conflicts": report.conflicts, "complete": "1", "restarts": report.restarts,
        "servers": json.dumps(report.servers),
    })


def _walk_all(run: _Run, found: list[Shard], sample: int | None, seed: int | None) -> None:
    s, report = run.s, run.report
    walks: list[Walk] = []

    def legacy_batches() -> Iterator[list[bytes]]:
        for shard in found:
            walk = Walk(shard.client, match=s.old_pattern, count=SCAN_COUNT)
            walks.append(walk)
            yield from walk

    if sample:
        keys = _reservoir(legacy_batches(), sample, random.Random(seed))
        batches: Iterator[list[bytes]] = iter([keys[i:i + SCAN_COUNT]
                                               for i in range(0, len(keys), SCAN_COUNT)])
    else:
        batches = legacy_batches()
    for keys in batches:
        run.check_legacy(keys)
        run._tick()
    if not sample:
        wanted = run.wanted
        patterns = ([s.new_job.replace("<ws>", w).replace("<job_id>", "*")
                     for w in sorted(wanted)] if wanted else [s.new_pattern])
        for shard, first in zip(found, walks, strict=True):
            for pattern in patterns:
                for keys in Walk(shard.client, match=pattern, count=SCAN_COUNT,
                                 expect=first.identity):
                    run.check_extra(keys)
                    run._tick()
            index_patterns = ([s.index_key(w) for w in sorted(wanted)] if wanted
                              else [s.index_pattern])
            for pattern in index_patterns:
                for keys in Walk(shard.client, match=pattern, count=SCAN_COUNT,
                                 expect=first.identity):
                    for key in keys:
                        run.check_index(shard.client, key, first.identity)
    report.servers = [w.identity.as_dict() for w in walks if w.identity is not None]


def fresh_verify(client: redis.Redis, *, max_age_s: float = VERIFY_MAX_AGE_S,
                 now: Callable[[], float] = time.time, audit_scan: int = 5000
                 ) -> tuple[bool, str]:
    """Whether a full, complete verify of every workspace, clean but for `extra` copies,
    started after the last flag change and finished within max_age_s; and why not
    (archive delete's precondition)."""
    v = last_verify(client)
    if v is None:
        return False, "no verify recorded: run `relayctl verify`"
    if v["mode"] != "full" or v.get("workspaces") or not v.get("complete"):
        return False, "the last verify was not a full, complete run over every workspace"
    # `extra` (a copy whose legacy key is gone, e.g. archived by an earlier delete) puts no
    # legacy key at risk; every other difference does
    bad = ", ".join(f"{k} {n}" for k, n in v["counts"].items() if n and k != "extra")
    if bad:
        return False, f"the last verify found differences ({bad})"
    age = now() - v["ts"]
    if age > max_age_s:
        return False, f"the last clean verify is {duration(age)} old (max " \
                      f"{duration(max_age_s)})"
    changed = last_flag_change(client, audit_scan)
    # audit times carry milliseconds: a change within the verify's first one is ambiguous
    # only to rounding, since the verify reads after set_flag has returned
    if changed is not None and changed > v.get("started", v["ts"]) + 0.001:
        return False, "a flag changed after the last clean verify started"
    return True, f"clean full verify {duration(age)} ago over {v['checked']} records"


def last_flag_change(client: redis.Redis, scan: int = 5000) -> float | None:
    """When any flag last changed (the audit stream, newest first, bounded)."""
    entries: Any = client.xrevrange(AUDIT_KEY, count=scan)
    for _id, fields in entries or []:
        action = fields.get("action") if isinstance(fields, dict) else None
        if isinstance(action, bytes):
            action = action.decode()
        if action == "flag.set":
            ts = fields.get("ts", 0)
            return float(ts.decode() if isinstance(ts, bytes) else ts)
    return None


def last_verify(client: redis.Redis) -> dict[str, Any] | None:
    raw: Any = client.hgetall(VERIFY_KEY)
    return parse_verify(raw)


def parse_verify(raw: dict[str, str]) -> dict[str, Any] | None:
    """The stored relay:verify:last hash, or None when absent or malformed."""
    if not raw:
        return None
    try:
        out = {
            "ts": float(raw["ts"]), "mode": raw.get("mode", ""), "clean": raw.get("clean") == "1",
            "checked": int(raw.get("checked", 0)), "counts": json.loads(raw.get("counts", "{}")),
            "repaired": int(raw.get("repaired", 0)),
        }
        if "started" in raw:
            out.update(started=float(raw["started"]), complete=raw.get("complete") == "1",
                       workspaces=raw.get("workspaces", ""),
                       conflicts=int(raw.get("conflicts", 0)))
        return out
    except (KeyError, ValueError):
        return None
