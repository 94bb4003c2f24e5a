"""The backfill engine: copy legacy records to the workspace-scoped schema (SPEC §4).

One batch is a constant number of round trips: SCAN, one pipelined read (HMGET of the two
identifying fields of each key plus the control key), and one Lua step that copies each
record if absent (COPY keeps the TTL), indexes it, and advances the saved cursor and counters
in the same atomic step, fenced by the lease token. A crash at any point therefore leaves
either the whole batch applied and recorded, or none of it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    NoScriptError,
    SlotNotCoveredError,
    TryAgainError,
)

from relayctl.core import audit
from relayctl.core import cluster as clusterlib
from relayctl.core.connection import TLS_ENV, TLSOptions
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.flags import stored_flags
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import BACKFILL_PREFIX, KeySchema
from relayctl.core.lua import TYPE_OK
from relayctl.core.metrics import Metrics
from relayctl.core.roundtrip import read_many
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id, validate_workspace_id

REASONS = ("exists", "invalid", "filtered", "error")
UNFINISHED = ("running", "paused", "stopped", "partial", "lost", "failed")
# The lease outlives a crashed owner by at most this long; tests shorten it via the env var.
LEASE_TTL_MS = int(os.environ.get("RELAYCTL_BACKFILL_LEASE_MS") or 15_000)
HEARTBEAT_S = min(2.0, LEASE_TTL_MS / 3000)
CHECKPOINT_EVERY = 5_000
RESCAN_MESSAGE = ("Redis restarted since the cursor was taken (its SCAN order changed): "
                  "rescanning from cursor 0; copied records count as exists")
RESCAN_CLUSTER_MESSAGE = ("a shard's primary changed (failover or restart): its cursor and any "
                          "copies it had not replicated are gone, so every shard is walked "
                          "again from cursor 0; copied records count as exists")

EXIT_DONE, EXIT_ERRORS, EXIT_USAGE, EXIT_STOPPED, EXIT_LOST = 0, 1, 2, 3, 4

# KEYS: state, lease, control, the batch's W workspace indexes, then (old, new) per job
# ARGV: token, cursor, now, scanned, invalid, filtered, start cursor, W, the W workspace
#       ids, then (job_id, workspace number 1..W, index score) per job
# Returns one code per job (m migrated, e exists, g gone/changed since read, x index error),
# then '|' and the control key's value, so a pause or stop acts right after this batch.
# A batch already applied (its reply was lost and the call retried) is not applied again:
# its recorded codes are returned, so no counter is incremented twice.
COPY_BATCH = TYPE_OK + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to another owner')
end
local last = redis.call('HMGET', KEYS[1], 'cursor', 'last_start', 'last_codes')
local control = redis.call('GET', KEYS[3]) or ''
if last[1] == ARGV[2] and last[2] == ARGV[7] then
  return (last[3] or '') .. '|' .. control
end
local w_count = tonumber(ARGV[8])
local index_ok = {}
for w = 1, w_count do index_ok[w] = type_is(KEYS[3 + w], 'zset') end
local n = (#KEYS - 3 - w_count) / 2
local codes = {}
local migrated, exists, gone, errors = 0, 0, 0, 0
for i = 1, n do
  local old, new = KEYS[2 + w_count + 2 * i], KEYS[3 + w_count + 2 * i]
  local base = 8 + w_count + 3 * (i - 1)
  local job_id, w, score = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
  local ws = ARGV[8 + w]
  -- pcall: a key that stopped being a hash is a value here, not an aborted script
  local head = redis.pcall('HMGET', old, 'workspace_id', 'job_id')
  if head['err'] or head[1] ~= ws or head[2] ~= job_id then
    gone = gone + 1
    codes[i] = 'g'
  elseif not index_ok[w] then
    errors = errors + 1
    codes[i] = 'x'
  elseif redis.call('COPY', old, new) == 0 then
    -- without REPLACE, COPY never overwrites: a newer dual-written record stays as it is
    exists = exists + 1
    codes[i] = 'e'
  else
    redis.call('ZADD', KEYS[3 + w], score, job_id)
    migrated = migrated + 1
    codes[i] = 'm'
  end
end
local result = table.concat(codes)
redis.call('HSET', KEYS[1], 'cursor', ARGV[2], 'updated', ARGV[3], 'last_start', ARGV[7],
  'last_codes', result)
redis.call('HINCRBY', KEYS[1], 'scanned', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'migrated', migrated)
redis.call('HINCRBY', KEYS[1], 'skipped_exists', exists)
redis.call('HINCRBY', KEYS[1], 'skipped_invalid', tonumber(ARGV[5]) + gone)
redis.call('HINCRBY', KEYS[1], 'skipped_filtered', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'errors', errors)
return result .. '|' .. control
"""

# KEYS: control, then the batch's legacy keys.  Read-only: returns the control value and,
# per key, workspace_id and job_id ('' when missing; '\0' when the key is not a hash).
READ_HEADS = TYPE_OK + """
local out = {redis.call('GET', KEYS[1]) or ''}
for i = 2, #KEYS do
  local head = redis.pcall('HMGET', KEYS[i], 'workspace_id', 'job_id', 'enqueued_at')
  if head['err'] then
    out[#out + 1] = '\0'
    out[#out + 1] = '\0'
    out[#out + 1] = ''
  else
    out[#out + 1] = head[1] or ''
    out[#out + 1] = head[2] or ''
    out[#out + 1] = head[3] or ''
  end
end
return out
"""

# KEYS: lease, state   ARGV: token, ttl_ms, now, rate, fraction, eta
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'heartbeat', ARGV[3], 'rate', ARGV[4], 'fraction', ARGV[5],
  'eta_s', ARGV[6])
return 1
"""

# Cluster steps. The legacy key, the new key, the index and the engine's own keys live in
# different slots there, so a batch is: reads on the shard's primary, copies routed to each
# new key's primary, then one commit on the state hash. The state hash carries the owner's
# token, which fences the commit as the lease key fences COPY_BATCH on a standalone server.

# KEYS: new, index   ARGV: expiry (absolute ms, 0 = none), dump, score, job_id
# Copy-if-absent of one record and its index entry, atomic when both share a slot.
RESTORE_INDEXED = TYPE_OK + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'e' end
if not type_is(KEYS[2], 'zset') then return 'x' end
redis.call('RESTORE', KEYS[1], ARGV[1], ARGV[2], 'ABSTTL')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 'm'
"""

# KEYS: state   ARGV: token, shard, cursor, start, now, scanned, migrated, exists, invalid,
#                     filtered, errors, done
# Records one shard's batch; a batch already recorded (a retried commit) is not counted twice.
COMMIT_SHARD = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return redis.error_reply('LEASE backfill lease lost to another owner')
end
local cf, sf = 'cursor:' .. ARGV[2], 'start:' .. ARGV[2]
local last = redis.call('HMGET', KEYS[1], cf, sf)
if last[1] == ARGV[3] and last[2] == ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], cf, ARGV[3], sf, ARGV[4], 'updated', ARGV[5],
  'done:' .. ARGV[2], ARGV[12])
redis.call('HINCRBY', KEYS[1], 'scanned', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'migrated', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'skipped_exists', ARGV[8])
redis.call('HINCRBY', KEYS[1], 'skipped_invalid', ARGV[9])
redis.call('HINCRBY', KEYS[1], 'skipped_filtered', ARGV[10])
redis.call('HINCRBY', KEYS[1], 'errors', ARGV[11])
return 1
"""

# KEYS: lease   ARGV: token, ttl_ms  (the cluster half of RENEW; the state hash is separate)
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease   ARGV: token
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class BackfillKeys:
    """Where the engine keeps its state, lease and control (relay:backfill:* by default)."""

    prefix: str = BACKFILL_PREFIX

    @property
    def state(self) -> str:
        return self.prefix + "state"

    @property
    def lease(self) -> str:
        return self.prefix + "lease"

    @property
    def control(self) -> str:
        return self.prefix + "control"


@dataclass
class BackfillOptions:
    execute: bool = False
    workspaces: tuple[str, ...] = ()
    rps: float = 0.0
    batch: int = 500
    max_keys: int | None = None
    fresh: bool = False
    resume: bool = False
    max_latency_ms: float | None = None
    force: bool = False
    retry_for_s: float = 30.0
    actor: str = ""
    workers: int = 1


@dataclass
class Progress:
    """Counters of one run (cumulative across resumes when executing)."""

    run_id: str = ""
    status: str = "running"
    mode: str = "dry-run"
    cursor: int = 0
    scanned: int = 0
    migrated: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    started: float = 0.0
    elapsed_s: float = 0.0
    rate: float = 0.0
    fraction: float = 0.0
    eta_s: float | None = None
    throttle_s: float = 0.0
    latency_ms: float = 0.0
    message: str = ""
    cursors: dict[str, int] = field(default_factory=dict)  # per shard, on a cluster
    shards_done: int = 0

    @property
    def errors(self) -> int:
        return self.skipped["error"]

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "status": self.status, "mode": self.mode,
            "cursor": self.cursor, "scanned": self.scanned, "migrated": self.migrated,
            "skipped": dict(self.skipped), "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3), "rate": round(self.rate, 1),
            "fraction": round(self.fraction, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "throttle_s": round(self.throttle_s, 4), "latency_ms": round(self.latency_ms, 3),
            "message": self.message,
            **({"cursors": dict(self.cursors), "shards_done": self.shards_done}
               if self.cursors else {}),
        }


def scan_fraction(cursor: int) -> float:
    """How much of the keyspace a SCAN cursor has covered: SCAN walks reversed bits."""
    if cursor == 0:
        return 0.0
    return int(f"{cursor:064b}"[::-1], 2) / 2**64


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def read_state(client: redis.Redis, keys: BackfillKeys | None = None) -> dict[str, str]:
    return client.hgetall((keys or BackfillKeys()).state)


def lease_owner(client: redis.Redis, keys: BackfillKeys | None = None) -> str | None:
    return client.get((keys or BackfillKeys()).lease)


CONTROL_ACTIONS = {"pause": "pause", "resume": "run", "stop": "stop"}


def send_control(client: redis.Redis, action: str, *, actor: str, reason: str,
                 keys: BackfillKeys | None = None) -> dict[str, str]:
    """pause / resume / stop a running engine from any process; audited."""
    keys = keys or BackfillKeys()
    if action not in CONTROL_ACTIONS:
        raise UsageError(f"unknown backfill action {action!r}")
    state = client.hgetall(keys.state)
    alive = client.exists(keys.lease) == 1
    if not alive:
        raise UsageError(
            "no backfill engine is running"
            + (f" (last run {state.get('run_id')} is {state.get('status')}; start one with "
               "`relayctl backfill --execute --resume`)" if state else "")
        )
    before = client.get(keys.control) or "run"
    entry = audit.audit_fields(actor, f"backfill.{action}", "backfill", before,
                               CONTROL_ACTIONS[action], reason)
    audit.write_audited(client, [entry],
                        lambda pipe: pipe.set(keys.control, CONTROL_ACTIONS[action]))
    return state


@dataclass
class _Batch:
    start: int
    cursor: int
    keys: list[str]
    scan_ms: float
    heads: list
    control: str | None
    lane: str = "0"
    dumps: list[tuple[bytes | None, int]] = field(default_factory=list)


@dataclass
class _Lane:
    """One shard's walk on a cluster: its cursor, its primary's identity and a reader."""

    name: str
    cursor: int = 0
    done: bool = False
    server: str = ""
    reader: redis.Redis | None = None
    gen: int = 0


class _Rescan(Exception):
    """A shard's primary changed (failover, restart): cursors and unreplicated copies are
    gone with it, so every shard is walked again."""


_MOVED = (AskError, ClusterDownError, TryAgainError)  # MovedError is an AskError
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError, ClusterError, TryAgainError,
              SlotNotCoveredError)


Job = tuple[str, str, str, int]  # legacy key, job_id, workspace_id, index score


class _Prefetcher:
    """Reads batch N+1 (SCAN + heads) on its own connection while batch N is copied."""

    def __init__(self, read: Callable[[int], _Batch], cursor: int) -> None:
        self._read = read
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cursor,),
                                        name="relayctl-backfill-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, cursor: int) -> None:
        first = True
        while not self._stop.is_set() and (first or cursor != 0):
            first = False
            try:
                batch = self._read(cursor)
            except BaseException as exc:
                self._put(exc)
                return
            if not self._put(batch):
                return
            cursor = batch.cursor

    def next(self) -> _Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class LeaseLostError(RedisUnavailableError):
    exit_code = 4


class Backfill:
    """One backfill run. `run()` returns the exit code of SPEC §4."""

    def __init__(
        self,
        client: redis.Redis,
        options: BackfillOptions,
        *,
        schema: KeySchema | None = None,
        metrics: Metrics | None = None,
        keys: BackfillKeys | None = None,
        on_event: Callable[[str, Progress], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.opt = options
        self.schema = schema or KeySchema()
        self.metrics = metrics or Metrics()
        self.keys = keys or BackfillKeys()
        self.on_event = on_event or (lambda _e, _p: None)
        self.sleep = sleep
        self.token = f"{owner_id()}:{uuid.uuid4().hex[:8]}"
        self.progress = Progress(mode="execute" if options.execute else "dry-run")
        self.cluster = clusterlib.is_cluster(client)
        self._lock = threading.RLock()
        self._halt = threading.Event()
        self._lanes: dict[str, _Lane] = {}
        self._router = clusterlib.Router(client) if self.cluster else None
        self._topology_lock = threading.Lock()
        self._topology_gen = 0
        self._scanned_this_run = 0
        self._copy = client.register_script(COPY_BATCH)
        self._heads = client.register_script(READ_HEADS)
        self._renew = client.register_script(RENEW)
        self._renew_lease = client.register_script(RENEW_LEASE)
        self._release = client.register_script(RELEASE)
        self._stop_signal = threading.Event()
        self._lease_lost = threading.Event()
        self._hb_stop = threading.Event()
        self._scan_complete = False
        self._server: str | None = None
        self._has_info = True
        self._workspaces = frozenset(validate_workspace_id(w) for w in options.workspaces)
        if options.batch < 1 or options.batch > 100_000:
            raise UsageError("--batch must be between 1 and 100000")
        if options.rps < 0:
            raise UsageError("--rps must be >= 0 (0 = unlimited)")
        if options.max_keys is not None and options.max_keys < 1:
            raise UsageError("--max-keys must be >= 1")
        if not 1 <= options.workers <= 64:
            raise UsageError("--workers must be between 1 and 64")
        if options.fresh and options.resume:
            raise UsageError("--fresh and --resume are mutually exclusive")

    def request_stop(self) -> None:
        """Finish the current batch, save, and exit 3 (SIGINT/SIGTERM)."""
        self._stop_signal.set()

    def _retrying(self, fn: Callable[[], object], what: str) -> object:
        """Retry transport failures with backoff for up to retry_for_s, then exit 4."""
        deadline = time.monotonic() + self.opt.retry_for_s
        delay = 0.1
        while True:
            try:
                return fn()
            except _TRANSIENT as exc:
                if self.cluster:
                    self._forget_topology()
                if time.monotonic() + delay > deadline:
                    saved = ("every shard's cursor is saved" if self.cluster
                             else f"cursor {self.progress.cursor} is saved")
                    raise RedisUnavailableError(
                        f"lost Redis during {what} for {self.opt.retry_for_s:g}s "
                        f"({type(exc).__name__}); {saved}, rerun with --resume"
                    ) from None
                self.progress.message = f"Redis unavailable, retrying ({type(exc).__name__})"
                self.on_event("retry", self.progress)
                self.sleep(delay)
                delay = min(delay * 2, 2.0)
            except redis.ResponseError as exc:
                if str(exc).startswith("LEASE"):
                    raise LeaseLostError(
                        "backfill lease was taken over by another owner; stopping"
                    ) from None
                if isinstance(exc, NoScriptError):
                    continue
                raise

    def _acquire(self) -> dict[str, str]:
        """Take the lease or refuse naming the owner; decide fresh vs resume."""
        c, k = self.client, self.keys
        if not c.set(k.lease, self.token, nx=True, px=LEASE_TTL_MS):
            holder = c.get(k.lease) or "unknown"
            state = c.hgetall(k.state)
            since = state.get("started", "")
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(since))) if since else "?"
            raise UsageError(
                f"a backfill is already running: owner {holder.rsplit(':', 1)[0]} since {when} "
                f"(run {state.get('run_id', '?')}); use `relayctl backfill status`"
            )
        return c.hgetall(k.state)

    def _start_state(self, saved: dict[str, str]) -> None:
        c, k, p = self.client, self.keys, self.progress
        scope = ",".join(sorted(self._workspaces))
        resumable = saved.get("status") in UNFINISHED
        if self.opt.resume and not resumable:
            raise UsageError("--resume: there is no unfinished backfill to resume")
        if resumable and not self.opt.fresh:
            if saved.get("workspaces", "") != scope:
                raise UsageError(
                    f"the unfinished run {saved.get('run_id')} covers workspaces "
                    f"[{saved.get('workspaces') or 'all'}], not [{scope or 'all'}]: "
                    "pass the same --workspace options, or --fresh to start over"
                )
            p.run_id = saved["run_id"]
            p.cursor = int(saved.get("cursor", 0))
            p.scanned = int(saved.get("scanned", 0))
            p.migrated = int(saved.get("migrated", 0))
            for reason in REASONS:
                field_name = "errors" if reason == "error" else f"skipped_{reason}"
                p.skipped[reason] = int(saved.get(field_name, 0))
            p.started = float(saved.get("started", time.time()))
            p.message = f"resumed at cursor {p.cursor}"
            if self.cluster:
                self._resume_lanes(saved)
            # cursor 0 after a batch was applied: the scan ended before the status was saved
            self._scan_complete = p.cursor == 0 and ("last_start" in saved or p.scanned > 0)
            if (p.cursor != 0 and saved.get("server")
                    and saved["server"] != self._server_id()):
                p.cursor = 0
                p.message = RESCAN_MESSAGE
        else:
            p.run_id = uuid.uuid4().hex[:12]
            p.started = time.time()
            if self.cluster:
                self._resume_lanes({})
        now = f"{time.time():.3f}"
        pipe = c.pipeline(transaction=not self.cluster)
        if p.run_id != saved.get("run_id"):
            pipe.delete(k.state)
        pipe.hset(k.state, mapping={
            "run_id": p.run_id, "status": "running", "mode": "execute", "owner": owner_id(),
            "token": self.token, "started": f"{p.started:.3f}", "heartbeat": now,
            "updated": now, "workspaces": scope, "rps": str(self.opt.rps),
            "batch": str(self.opt.batch), "max_keys": str(self.opt.max_keys or ""),
            "workers": str(self.opt.workers),
            "cursor": str(p.cursor), "message": p.message, "finished": "",
            "server": self._server_id(),
            **self._lane_fields(),
        })
        pipe.persist(k.state)
        pipe.delete(k.control)
        pipe.execute()

    def _heartbeat(self) -> None:
        while not self._hb_stop.wait(HEARTBEAT_S):
            try:
                p = self.progress
                args = [self.token, LEASE_TTL_MS, f"{time.time():.3f}", f"{p.rate:.1f}",
                        f"{p.fraction:.4f}", "" if p.eta_s is None else f"{p.eta_s:.0f}"]
                if self.cluster:
                    if not self._renew_lease(keys=[self.keys.lease], args=args[:2]):
                        self._lease_lost.set()
                        return
                    self.client.hset(self.keys.state, mapping={
                        "heartbeat": args[2], "rate": args[3], "fraction": args[4],
                        "eta_s": args[5]})
                elif not self._renew(keys=[self.keys.lease, self.keys.state], args=args):
                    self._lease_lost.set()
                    return
            except (redis.RedisError, OSError):
                continue

    def _server_id(self) -> str:
        """The Redis server process; SCAN cursors are only valid on the one that issued them
        (a restarted or failed-over server hashes keys with a new seed, in a new order)."""
        if self.cluster:
            return "cluster"
        if self._server is None:
            try:
                self._server = self.client.info("server").get("run_id", "")
            except redis.ResponseError:  # no INFO (fakeredis, a strict ACL): cannot tell
                self._server = ""
        return self._server

    def _read_batch(self, cursor: int) -> _Batch:
        t0 = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        pipe.scan(cursor, match=self.schema.old_pattern, count=self.opt.batch)
        if self._has_info:
            pipe.info("server")
        try:
            replies = pipe.execute()
        except redis.ResponseError as exc:
            if self._has_info and "info" in str(exc).lower():
                self._has_info = False  # a server without INFO (the embedded demo's fakeredis)
                return self._read_batch(cursor)
            raise
        next_cursor, keys = replies[0]
        server = replies[1].get("run_id", "") if self._has_info else ""
        if server != self._server:
            known, self._server = self._server, server
            if cursor != 0 and known is not None:
                # keys already copied are skipped as `exists` on the rescan
                self.progress.message = RESCAN_MESSAGE
                return self._read_batch(0)
        scan_ms = (time.perf_counter() - t0) * 1000
        flat = self._heads(keys=[self.keys.control, *keys])
        control = flat[0] or None
        heads = list(zip(flat[1::3], flat[2::3], flat[3::3], strict=True))
        return _Batch(cursor, int(next_cursor), keys, scan_ms, heads, control)

    def _classify(self, batch: _Batch) -> tuple[list[Job], Counter, Counter]:
        """(key, job_id, ws, index score) to copy; skips by reason; scanned by label."""
        jobs: list[Job] = []
        skipped: Counter = Counter()
        scanned: Counter = Counter()
        label = self.metrics.label
        for key, (ws, job_id, enqueued_at) in zip(batch.keys, batch.heads, strict=True):
            lbl = label(ws) if is_valid_workspace_id(ws) else label(None)
            scanned[lbl] += 1
            if (not is_valid_workspace_id(ws) or not is_valid_job_id(job_id)
                    or self.schema.old_key(job_id) != key):
                skipped[("invalid", lbl)] += 1
            elif self._workspaces and ws not in self._workspaces:
                skipped[("filtered", lbl)] += 1
            else:
                # enqueued_at never changes, so the score computed here (off the Redis
                # core) is the one the copy step would compute
                jobs.append((key, job_id, ws, iso_to_ms(enqueued_at)))
        return jobs, skipped, scanned

    def _apply(self, batch: _Batch, jobs: list[Job],
               skipped: Counter) -> tuple[str, str]:
        """Copy (or, dry-run, only look); returns the codes and the current control value."""
        invalid = sum(v for (r, _), v in skipped.items() if r == "invalid")
        filtered = sum(v for (r, _), v in skipped.items() if r == "filtered")
        if not self.opt.execute:
            pipe = self.client.pipeline(transaction=False)
            for _key, job_id, ws, _score in jobs:
                pipe.exists(self.schema.new_key(ws, job_id))
            pipe.get(self.keys.control)
            *found, control = pipe.execute()
            return "".join("e" if n else "m" for n in found), control or ""
        s = self.schema
        workspaces = sorted({ws for _k, _j, ws, _s in jobs})
        number = {ws: i for i, ws in enumerate(workspaces, start=1)}
        keys = [self.keys.state, self.keys.lease, self.keys.control,
                *(s.index_key(ws) for ws in workspaces)]
        args: list[object] = [self.token, batch.cursor, f"{time.time():.3f}",
                              len(batch.keys), invalid, filtered, batch.start,
                              len(workspaces), *workspaces]
        for key, job_id, ws, score in jobs:
            keys += [key, s.new_key(ws, job_id)]
            args += [job_id, number[ws], score]
        codes, _, control = str(self._copy(keys=keys, args=args)).partition("|")
        return codes, control

    def _account(self, batch: _Batch, jobs: list[tuple[str, str, str]], codes: str,
                 skipped: Counter, scanned: Counter) -> None:
        p, m = self.progress, self.metrics
        label = m.label
        p.cursor = batch.cursor
        p.scanned += len(batch.keys)
        for lbl, n in scanned.items():
            m.inc(m.backfill_scanned, lbl, amount=n)
        for (reason, lbl), n in skipped.items():
            p.skipped[reason] += n
            m.inc(m.backfill_skipped, lbl, reason, amount=n)
        outcomes = Counter((code, label(ws)) for (_k, _j, ws, _s), code in
                           zip(jobs, codes, strict=True))
        for (code, lbl), n in outcomes.items():
            if code == "m":
                p.migrated += n
                m.inc(m.backfill_migrated, lbl, amount=n)
            elif code == "e":
                p.skipped["exists"] += n
                m.inc(m.backfill_skipped, lbl, "exists", amount=n)
            elif code == "g":
                p.skipped["invalid"] += n
                m.inc(m.backfill_skipped, lbl, "invalid", amount=n)
            else:
                p.skipped["error"] += n
                m.inc(m.backfill_errors, lbl, amount=n)

    def _set_status(self, status: str, message: str = "", finished: bool = False) -> None:
        self.progress.status = status
        self.progress.message = message
        if not self.opt.execute:
            return
        fields = {"status": status, "message": message, "updated": f"{time.time():.3f}"}
        if finished:
            fields["finished"] = fields["updated"]
        self._retrying(lambda: self.client.hset(self.keys.state, mapping=fields), "status")

    def _wait_while_paused(self) -> str:
        """Hold the lease and wait for resume or stop; returns the new control value."""
        live = self._retrying(lambda: self.client.get(self.keys.control), "pause")
        if live != "pause":
            return live or "run"
        self._set_status("paused", "paused by operator")
        self.on_event("paused", self.progress)
        while True:
            if self._stop_signal.is_set():
                return "stop"
            if self._lease_lost.is_set():
                raise LeaseLostError("backfill lease lost while paused")
            control = self._retrying(lambda: self.client.get(self.keys.control), "pause")
            if control != "pause":
                if control != "stop":
                    self._set_status("running", "resumed by operator")
                    self.on_event("resumed", self.progress)
                return control or "run"
            self.sleep(0.2)

    def _preflight(self) -> None:
        if self.opt.execute and not self.opt.force:
            flags = stored_flags(self.client)
            if not flags.get("AI_JOBS_NEW_SCHEMA", False):
                raise UsageError(
                    "refusing --execute while dual-write (AI_JOBS_NEW_SCHEMA) is off: records "
                    "updated after their copy would go stale; turn it on first or pass --force"
                )

    def run(self) -> int:
        """Run to completion, a stop, --max-keys, or lost Redis; return the exit code."""
        p = self.progress
        try:
            self._retrying(self._preflight, "preflight")
        except RedisUnavailableError:
            raise
        hb: threading.Thread | None = None
        if self.opt.execute:
            saved = self._retrying(self._acquire, "lease")
            try:
                self._retrying(lambda: self._start_state(saved), "start")
            except BaseException:
                self._release(keys=[self.keys.lease], args=[self.token])
                raise
            hb = threading.Thread(target=self._heartbeat, name="relayctl-backfill-lease",
                                  daemon=True)
            hb.start()
        else:
            p.run_id = "dry-run"
            p.started = time.time()
        self.on_event("start", p)
        try:
            return self._loop()
        except RedisUnavailableError as exc:
            p.status, p.message = "lost", str(exc)
            self.on_event("lost", p)
            raise
        finally:
            self._hb_stop.set()
            if hb is not None:
                hb.join(timeout=5)
            if self._router is not None:
                self._router.close()
            if self.opt.execute:
                try:
                    if p.status == "lost":
                        self.client.hset(self.keys.state, mapping={
                            "status": "lost", "message": p.message})
                    self._release(keys=[self.keys.lease], args=[self.token])
                except (redis.RedisError, OSError):
                    pass

    def _loop(self) -> int:
        if self.cluster:
            return self._cluster_loop()
        if self._scan_complete:
            self.progress.fraction = 1.0
            return self._finish()
        prefetch = _Prefetcher(
            lambda cursor: self._retrying(lambda: self._read_batch(cursor), "scan"),
            self.progress.cursor)
        try:
            return self._batches(prefetch)
        finally:
            prefetch.close()

    def _batches(self, prefetch: _Prefetcher) -> int:
        p, opt = self.progress, self.opt
        t_start = time.monotonic()
        scanned_this_run = 0
        paced_from, paced_keys = t_start, 0  # --rps schedule origin
        next_checkpoint = (p.scanned // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
        last_event = 0.0
        throttle = 0.0
        first = True
        latest_control: str | None = None  # read by the last copy step: the freshest value
        while True:
            if self._signalled():
                return EXIT_STOPPED
            if not first and p.cursor == 0:
                break
            first = False
            batch_t0 = time.perf_counter()
            batch = prefetch.next()
            control = batch.control if latest_control is None else latest_control
            if control == "pause":
                control = self._wait_while_paused()
                latest_control = None
            if control == "stop":
                return self._stopped_by_operator()
            jobs, skipped, scanned = self._classify(batch)
            codes, latest_control = self._retrying(
                lambda b=batch, j=jobs, s=skipped: self._apply(b, j, s), "copy")
            self._account(batch, jobs, codes, skipped, scanned)
            duration = time.perf_counter() - batch_t0
            self.metrics.observe(self.metrics.backfill_duration, duration)
            scanned_this_run += len(batch.keys)
            p.latency_ms = batch.scan_ms
            elapsed = time.monotonic() - t_start
            p.elapsed_s = elapsed
            p.rate = scanned_this_run / elapsed if elapsed > 0 else 0.0
            p.fraction = 1.0 if p.cursor == 0 else scan_fraction(p.cursor)
            p.eta_s = (elapsed * (1 - p.fraction) / p.fraction) if p.fraction > 0 else None
            if p.scanned >= next_checkpoint:
                next_checkpoint = (p.scanned // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
                self.on_event("checkpoint", p)
            now = time.monotonic()
            if now - last_event >= 0.5:
                last_event = now
                self.on_event("progress", p)
            if p.cursor == 0:
                break
            if opt.max_keys is not None and scanned_this_run >= opt.max_keys:
                self._set_status("partial", f"--max-keys {opt.max_keys} reached; resumable")
                self.on_event("partial", p)
                return EXIT_DONE
            throttle = self._throttle(throttle, batch.scan_ms)
            wait = throttle
            if opt.rps > 0:
                now = time.monotonic()
                ahead = (scanned_this_run - paced_keys) / opt.rps - (now - paced_from)
                if ahead < 0:
                    # behind schedule (paused, retrying, slow Redis): restart the schedule
                    # here instead of bursting to catch up, so --rps stays a ceiling
                    paced_from, paced_keys = now, scanned_this_run
                wait = max(wait, ahead)
            if wait > 0:
                self.sleep(wait)
        return self._finish()

    def _shard_servers(self) -> dict[str, str]:
        """run_id of the primary now serving each shard."""
        found = clusterlib.shards(self.client)
        try:
            return {sh.name: str(sh.client.info("server").get("run_id", "")) for sh in found}
        finally:
            clusterlib.close_shards(found, self.client)

    def _resume_lanes(self, saved: dict[str, str]) -> None:
        """Lanes from the saved per-shard cursors; all from 0 if any primary changed since."""
        servers = self._shard_servers()
        changed = any(saved.get(f"server:{name}", server) != server
                      for name, server in servers.items())
        self._lanes = {}
        for name, server in servers.items():
            lane = _Lane(name=name, server=server)
            if saved and not changed:
                lane.cursor = int(saved.get(f"cursor:{name}", 0) or 0)
                lane.done = saved.get(f"done:{name}") == "1"
            self._lanes[name] = lane
        if changed:
            self.progress.message = RESCAN_CLUSTER_MESSAGE
        self._sync_progress()

    def _lane_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, lane in self._lanes.items():
            out[f"cursor:{name}"] = str(lane.cursor)
            out[f"done:{name}"] = "1" if lane.done else "0"
            out[f"server:{name}"] = lane.server
            out[f"start:{name}"] = ""
        return out

    def _sync_progress(self) -> None:
        lanes = self._lanes.values()
        p = self.progress
        p.cursors = {lane.name: lane.cursor for lane in lanes}
        p.shards_done = sum(lane.done for lane in lanes)
        if lanes:
            p.fraction = sum(1.0 if lane.done else scan_fraction(lane.cursor)
                             for lane in lanes) / len(self._lanes)

    def _forget_topology(self) -> None:
        """After a node failure: re-read the slot map; each lane re-resolves its reader."""
        with self._topology_lock:
            self._topology_gen += 1
            with contextlib.suppress(redis.RedisError, OSError, SlotNotCoveredError):
                clusterlib.refresh_topology(self.client)  # may still be failing over

    def _reader(self, lane: _Lane) -> redis.Redis:
        if lane.reader is not None and lane.gen != self._topology_gen:
            lane.reader.close()
            lane.reader = None
        if lane.reader is None:
            lane.gen = self._topology_gen
            found = clusterlib.shards(self.client, decode_responses=False)
            for shard in found:
                if shard.name == lane.name:
                    lane.reader = shard.client
                else:
                    shard.client.close()
            if lane.reader is None:
                raise ClusterError(f"shard {lane.name} is not served by any primary")
        return lane.reader

    def _read_lane(self, lane: _Lane, cursor: int) -> _Batch:
        """SCAN one shard's primary, then read heads (and dumps) there: two round trips."""
        t0 = time.perf_counter()
        reader = self._reader(lane)
        pipe = reader.pipeline(transaction=False)
        pipe.scan(cursor, match=self.schema.old_pattern, count=self.opt.batch)
        pipe.info("server")
        (next_cursor, raw_keys), info = pipe.execute()
        server = info.get("run_id", "")
        server = server.decode() if isinstance(server, bytes) else str(server)
        if server != lane.server:
            raise _Rescan(lane.name)
        scan_ms = (time.perf_counter() - t0) * 1000
        keys = [k.decode() if isinstance(k, bytes) else k for k in raw_keys]
        per_key = 3 if self.opt.execute else 1
        commands: list[tuple] = []
        for key in keys:
            commands.append(("HMGET", key, "workspace_id", "job_id", "enqueued_at"))
            if self.opt.execute:
                # the absolute expiry, so a copy made later expires exactly with its source
                commands += [("DUMP", key), ("PEXPIRETIME", key)]
        replies = read_many(reader, commands)
        if any(isinstance(r, _MOVED) for r in replies):
            # the slot map changed under this shard (resharding): re-read it and redo the batch
            raise ClusterError(f"shard {lane.name} no longer serves some of its keys")
        for reply in replies:
            # WRONGTYPE marks a non-hash legacy key (invalid); any other refusal (NOPERM, an
            # unknown PEXPIRETIME) must stop the run, not count every key as gone
            if isinstance(reply, redis.ResponseError) and not str(reply).startswith("WRONG"):
                raise reply
        heads, dumps = [], []
        for i in range(len(keys)):
            head = replies[per_key * i]
            if isinstance(head, list):
                heads.append(tuple(v.decode(errors="replace") if isinstance(v, bytes) else
                                   (v or "") for v in head))
            else:
                heads.append(("\0", "\0", ""))
            if self.opt.execute:
                dump, pttl = replies[per_key * i + 1], replies[per_key * i + 2]
                dumps.append((dump if isinstance(dump, bytes) else None,
                              pttl if isinstance(pttl, int) else -2))
        return _Batch(cursor, int(next_cursor), keys, scan_ms, heads, None, lane.name, dumps)

    def _copy_cluster(self, batch: _Batch, jobs: list[Job]) -> str:
        """Copy-if-absent through the cluster client; one code per job as COPY_BATCH."""
        s = self.schema
        dumps = dict(zip(batch.keys, batch.dumps, strict=True))
        items: list[tuple[str, tuple]] = []
        plan: list[str] = []  # per job: 'g' (no command), 's' (script), 'r' (restore + zadd)
        for key, job_id, ws, score in jobs:
            dump, pttl = dumps[key]
            if dump is None or pttl == -2:
                plan.append("g")
                continue
            ttl = pttl if pttl > 0 else 0  # PEXPIRETIME: -1 none, -2 gone
            new, idx = s.new_key(ws, job_id), s.index_key(ws)
            if clusterlib.key_slot(new) == clusterlib.key_slot(idx):
                items.append((new, ("EVALSHA", self._restore_sha, 2, new, idx, ttl, dump,
                                    score, job_id)))
                plan.append("s")
            else:
                items.append((new, ("RESTORE", new, ttl, dump, "ABSTTL")))
                items.append((idx, ("ZADD", idx, "NX", score, job_id)))
                plan.append("r")
        replies = iter(self._router.execute(items) if items else ())
        codes = []
        for step in plan:
            if step == "g":
                codes.append("g")
                continue
            first = next(replies)
            self._raise_transient(first)
            if step == "s":
                codes.append(first if isinstance(first, str) and first in "mex" else "x")
                continue
            indexed = next(replies)
            self._raise_transient(indexed)
            if isinstance(first, Exception):
                codes.append("e" if "BUSYKEY" in str(first) else "x")
            else:
                codes.append("x" if isinstance(indexed, Exception) else "m")
        return "".join(codes)

    def _raise_transient(self, reply: object) -> None:
        if isinstance(reply, Exception):
            if isinstance(reply, NoScriptError):
                # a promoted replica does not have the scripts: load them and redo the batch
                self._restore_sha = self.client.script_load(RESTORE_INDEXED)
                raise TryAgainError("scripts reloaded after a failover")
            if isinstance(reply, _TRANSIENT) or not isinstance(reply, redis.ResponseError):
                raise reply

    def _commit_lane(self, batch: _Batch, skipped: Counter, codes: str,
                     done: bool) -> str:
        """Record the batch in the state hash (fenced by the token); returns the control."""
        invalid = sum(v for (r, _), v in skipped.items() if r == "invalid")
        filtered = sum(v for (r, _), v in skipped.items() if r == "filtered")
        args = [self.token, batch.lane, batch.cursor, batch.start, f"{time.time():.3f}",
                len(batch.keys), codes.count("m"), codes.count("e"),
                invalid + codes.count("g"), filtered, codes.count("x"), "1" if done else "0"]
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", self._commit_sha, 1, self.keys.state, *args)
        pipe.get(self.keys.control)
        committed, control = pipe.execute(raise_on_error=False)
        if isinstance(committed, Exception):
            if isinstance(committed, NoScriptError):
                self._commit_sha = self.client.script_load(COMMIT_SHARD)
                return self._commit_lane(batch, skipped, codes, done)
            raise committed
        self._raise_transient(control)
        return control or ""

    def _cluster_loop(self) -> int:
        """Walk every shard (up to --workers at a time); a failover anywhere walks them all
        again, since the copies a lost primary had not replicated are gone with it."""
        if self.opt.execute:
            self._restore_sha = self._retrying(
                lambda: self.client.script_load(RESTORE_INDEXED), "script load")
            self._commit_sha = self._retrying(
                lambda: self.client.script_load(COMMIT_SHARD), "script load")
        if not self._lanes:
            self._retrying(lambda: self._resume_lanes({}), "topology")
        self._t_start = time.monotonic()
        self._paced = (self._t_start, 0)  # --rps schedule origin: (time, keys scanned)
        while True:
            try:
                outcome = self._run_lanes()
                if outcome is not None:
                    return outcome
                if self._retrying(self._shard_servers, "final check") == {
                        n: lane.server for n, lane in self._lanes.items()}:
                    return self._finish()
                raise _Rescan("final check")
            except _Rescan:
                self._retrying(self._rescan_all, "rescan")

    def _rescan_all(self) -> None:
        self._forget_topology()
        self._resume_lanes({})
        self.progress.message = RESCAN_CLUSTER_MESSAGE
        self.on_event("retry", self.progress)
        fields = self._lane_fields()
        fields.update({"message": RESCAN_CLUSTER_MESSAGE, "updated": f"{time.time():.3f}"})
        self.client.hset(self.keys.state, mapping=fields)

    def _run_lanes(self) -> int | None:
        """Run the unfinished lanes on worker threads; None when every shard is done."""
        pending: queue.Queue[_Lane] = queue.Queue()
        for lane in self._lanes.values():
            if not lane.done:
                pending.put(lane)
        results: list[int] = []
        errors: list[BaseException] = []
        self._halt.clear()

        def work() -> None:
            while not self._halt.is_set():
                try:
                    lane = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    code = self._lane_batches(lane)
                except BaseException as exc:
                    errors.append(exc)
                    self._halt.set()
                    return
                if code is not None:
                    results.append(code)
                    self._halt.set()
                    return

        threads = [threading.Thread(target=work, name=f"relayctl-backfill-w{i}", daemon=True)
                   for i in range(min(self.opt.workers, max(1, pending.qsize())))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rescans = [e for e in errors if isinstance(e, _Rescan)]
        others = [e for e in errors if not isinstance(e, _Rescan)]
        if others:
            raise others[0]
        if rescans:
            raise rescans[0]
        if results:
            return min(results, key=lambda c: (c != EXIT_STOPPED, c))
        return None

    def _lane_batches(self, lane: _Lane) -> int | None:
        """One shard to its end; an exit code if the run must stop early, else None."""
        p, opt = self.progress, self.opt
        prefetch = _Prefetcher(
            lambda cursor: self._retrying(lambda: self._read_lane(lane, cursor), "scan"),
            lane.cursor)
        control = self._retrying(lambda: self.client.get(self.keys.control), "control") or ""
        throttle = 0.0
        try:
            first = True
            while True:
                if self._halt.is_set():
                    return None
                if self._signalled():
                    return EXIT_STOPPED
                if not first and lane.cursor == 0:
                    break
                first = False
                batch_t0 = time.perf_counter()
                batch = prefetch.next()
                if control == "pause":
                    with self._lock:
                        control = self._wait_while_paused()
                if control == "stop":
                    return self._stopped_by_operator()
                jobs, skipped, scanned = self._classify(batch)
                if opt.execute:
                    codes = self._retrying(lambda b=batch, j=jobs: self._copy_cluster(b, j),
                                           "copy")
                    control = self._retrying(
                        lambda b=batch, s=skipped, c=codes: self._commit_lane(
                            b, s, c, b.cursor == 0), "commit")
                else:
                    codes, control = self._retrying(
                        lambda b=batch, j=jobs, s=skipped: self._apply(b, j, s), "copy")
                with self._lock:
                    self._account(batch, jobs, codes, skipped, scanned)
                    lane.cursor = batch.cursor
                    lane.done = batch.cursor == 0
                    self._scanned_this_run += len(batch.keys)
                    self._sync_progress()
                    self.metrics.observe(self.metrics.backfill_duration,
                                         time.perf_counter() - batch_t0)
                    elapsed = time.monotonic() - self._t_start
                    p.elapsed_s = elapsed
                    p.rate = self._scanned_this_run / elapsed if elapsed > 0 else 0.0
                    p.latency_ms = batch.scan_ms
                    p.eta_s = (elapsed * (1 - p.fraction) / p.fraction) if p.fraction > 0 \
                        else None
                    self._progress_events()
                    over = (opt.max_keys is not None
                            and self._scanned_this_run >= opt.max_keys and not lane.done)
                if lane.done:
                    break
                if over:
                    self._set_status("partial", f"--max-keys {opt.max_keys} reached; resumable")
                    self.on_event("partial", p)
                    return EXIT_DONE
                throttle = self._throttle(throttle, batch.scan_ms)
                wait = max(throttle, self._pace())
                if wait > 0:
                    self.sleep(wait)
        finally:
            prefetch.close()
        return None

    def _pace(self) -> float:
        """Seconds to wait so all lanes together stay under --rps (a shared schedule)."""
        if self.opt.rps <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            origin, done = self._paced
            ahead = (self._scanned_this_run - done) / self.opt.rps - (now - origin)
            if ahead < 0:
                self._paced = (now, self._scanned_this_run)
            return max(ahead, 0.0)

    def _progress_events(self) -> None:
        p = self.progress
        if p.scanned >= getattr(self, "_next_checkpoint", 0):
            self._next_checkpoint = (p.scanned // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
            if p.scanned >= CHECKPOINT_EVERY:
                self.on_event("checkpoint", p)
        now = time.monotonic()
        if now - getattr(self, "_last_event", 0.0) >= 0.5:
            self._last_event = now
            self.on_event("progress", p)

    def _signalled(self) -> bool:
        """Between batches: a lost lease raises; SIGINT/SIGTERM saves a stopped status."""
        if self._lease_lost.is_set():
            raise LeaseLostError("backfill lease lost (another owner took over)")
        if self._stop_signal.is_set():
            self._set_status("stopped", "stopped by signal; resumable")
            self.on_event("stopped", self.progress)
            return True
        return False

    def _stopped_by_operator(self) -> int:
        self._set_status("stopped", "stopped by operator; resumable")
        self.on_event("stopped", self.progress)
        return EXIT_STOPPED

    def _throttle(self, throttle: float, scan_ms: float) -> float:
        """--max-latency-ms: back off exponentially while SCAN is slow, recover by halves."""
        if self.opt.max_latency_ms is None:
            return throttle
        if scan_ms > self.opt.max_latency_ms:
            throttle = min(max(throttle * 2, 0.01), 5.0)
        else:
            throttle = throttle / 2 if throttle > 0.001 else 0.0
        self.progress.throttle_s = throttle
        return throttle

    def _finish(self) -> int:
        p = self.progress
        errors = p.errors
        self._set_status("completed" if not errors else "completed_with_errors",
                         f"{errors} errors" if errors else "done", finished=True)
        self.on_event("done", p)
        return EXIT_ERRORS if errors else EXIT_DONE


def iter_status_fields(state: dict[str, str]) -> Iterable[tuple[str, str]]:
    order = ("run_id", "status", "mode", "owner", "workspaces", "cursor", "scanned",
             "migrated", "skipped_exists", "skipped_invalid", "skipped_filtered", "errors",
             "started", "heartbeat", "updated", "finished", "message")
    for name in order:
        if name in state:
            yield name, state[name]
    for name in sorted((f for f in state if f.startswith("cursor:")),
                       key=lambda f: int(f.partition(":")[2] or 0)):
        shard = name.partition(":")[2]
        done = state.get(f"done:{shard}") == "1"
        yield f"shard {shard}", "done" if done else f"cursor {state[name]}"


def spawn_engine(redis_url: str, options: BackfillOptions, *, actor: str, reason: str,
                 client: redis.Redis, allow_plaintext: bool = False,
                 tls: TLSOptions | None = None, config_path: str | None = None) -> int:
    """Start `relayctl backfill` as its own process (it outlives the console); audited.

    Every option is forwarded, and the console's --config (key templates). The URL and the
    TLS files travel in the environment, never on the command line, so `ps` shows no
    credentials.
    """
    import subprocess
    import sys

    if not reason.strip():
        raise UsageError("a reason is required to start a backfill")
    args = [sys.executable, "-m", "relayctl"]
    if allow_plaintext:
        args.append("--allow-plaintext")
    if config_path:
        args += ["--config", config_path]
    args += ["--actor", actor, "backfill", "--execute" if options.execute else "--dry-run",
             "--batch", str(options.batch), "--rps", str(options.rps),
             "--workers", str(options.workers), "--retry-for", str(options.retry_for_s),
             "--json"]
    for ws in options.workspaces:
        args += ["--workspace", validate_workspace_id(ws)]
    if options.max_keys:
        args += ["--max-keys", str(options.max_keys)]
    if options.resume:
        args.append("--resume")
    if options.fresh:
        args.append("--fresh")
    if options.max_latency_ms is not None:
        args += ["--max-latency-ms", str(options.max_latency_ms)]
    if options.force:
        args.append("--force")
    env = {k: v for k, v in os.environ.items() if k not in TLS_ENV.values()}
    env.update((tls if tls is not None else TLSOptions.from_env()).env())
    env["REDIS_URL"] = redis_url
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    audit.record(client, actor, "backfill.start", "backfill", "",
                 f"pid {proc.pid} {'execute' if options.execute else 'dry-run'}", reason)
    return proc.pid
