"""The job store the application links: dual-write, read-routing with fallback, isolation."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError

from relayctl.core import fleet
from relayctl.core.binary import binary_client
from relayctl.core.cluster import close_shards, is_cluster, key_slot, shards
from relayctl.core.cursor import CursorCodec, CursorState, shared_secret
from relayctl.core.errors import CursorError, JobNotFoundError, RelayError, ValidationError
from relayctl.core.flags import FLAG_NAMES, FlagState, effective, env_pins, stored_flags
from relayctl.core.keys import KeySchema
from relayctl.core.lua import (
    ENQUEUE,
    ENQUEUE_LEGACY,
    ENQUEUE_NEW,
    PRUNE_ORPHANS,
    RELEASE_IDEMPOTENCY,
    UPDATE,
    UPDATE_LEGACY,
    UPDATE_NEW,
)
from relayctl.core.metrics import Metrics
from relayctl.core.replies import as_str
from relayctl.core.replies import fields as hash_fields
from relayctl.core.roundtrip import read_many
from relayctl.core.timestamps import iso_to_ms as iso_to_ms  # re-exported: callers import it here
from relayctl.core.validate import (
    is_valid_job_id,
    validate_job_id,
    validate_request_id,
    validate_workspace_id,
)

log = logging.getLogger("relayctl.jobs")

STATUSES = ("pending", "running", "completed", "failed")
JOB_FIELDS = (
    "job_id", "workspace_id", "status", "action_provider", "action_name", "params",
    "actor_id", "result", "error", "enqueued_at", "started_at", "finished_at",
)
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
MAX_LIMIT = 1000
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600  # PEXPIRE must never fail after the first write
_LIST_ROUNDS = 32
_SCAN_COUNT = 1000
# index entries of vanished jobs removed by one list_jobs call at most (bounded work)
PRUNE_PER_CALL = 256
_FIELD_NAMES = tuple((name, name.encode()) for name in JOB_FIELDS)


class CorruptRecordError(RelayError):
    """A job's stored record cannot be decoded (not UTF-8); the message names the job and
    the field, never the payload."""

    def __init__(self, workspace_id: str, job_id: str, field_name: str, source: str) -> None:
        super().__init__(f"job {job_id} in workspace {workspace_id}: the {source} record's "
                         f"{field_name!r} field is not valid UTF-8")
        self.workspace_id = workspace_id
        self.job_id = job_id
        self.field_name = field_name
        self.source = source


def iso_now(now: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, the record's timestamp format."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Job:
    """One job record; every field is the string stored in Redis."""

    job_id: str
    workspace_id: str
    status: str
    action_provider: str = ""
    action_name: str = ""
    params: str = "{}"
    actor_id: str = ""
    result: str = ""
    error: str = ""
    enqueued_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    source: str = field(default="new", compare=False)

    @classmethod
    def from_record(cls, record: Mapping[str, str], source: str) -> Job | None:
        """Build from a hash; None when the record lacks a valid job_id or workspace_id."""
        job_id = record.get("job_id")
        ws = record.get("workspace_id")
        if not is_valid_job_id(job_id) or not ws:
            return None
        values = {name: record.get(name, "") for name in JOB_FIELDS}
        return cls(**values, source=source)

    def params_obj(self) -> Any:
        return json.loads(self.params) if self.params else {}

    def as_record(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in JOB_FIELDS}


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str
    created: bool


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    cursor: str | None
    path: str


class JobStore:
    """The Relay job store during the key-schema migration (SPEC §3).

    Flags are read from `relay:flags` by a background thread (and pinned by environment), so
    a toggle reaches this instance within `refresh_interval` and no request pays for it.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        schema: KeySchema | None = None,
        metrics: Metrics | None = None,
        pins: Mapping[str, bool] | None = None,
        refresh_interval: float = 0.5,
        heartbeat_interval: float = 2.0,
        background: bool = True,
        cursor_secret: bytes | None = None,
        instance: str | None = None,
    ) -> None:
        self.client = client
        # reads go through a bytes client: a record is decoded here, field by field, so one
        # undecodable value is one corrupt record, not a failed page
        self._raw, self._owns_raw = _bytes_client(client)
        self.schema = schema or KeySchema()
        self.metrics = metrics or Metrics()
        self.pins = dict(env_pins() if pins is None else pins)
        self.instance = instance or fleet.new_instance_id()
        self.started = time.time()
        self._refresh_interval = refresh_interval
        self._heartbeat_interval = heartbeat_interval
        self._codec = CursorCodec(cursor_secret or shared_secret(client))
        self._enqueue = client.register_script(ENQUEUE)
        self._update = client.register_script(UPDATE)
        self._prune = client.register_script(PRUNE_ORPHANS)
        self._prune_allowed = True
        self._logged_corrupt: set[str] = set()
        # on a cluster enqueue and update are ordered one-slot steps (see _enqueue_cluster)
        self._cluster = is_cluster(client)
        self._shard_cache: list[tuple[str, str]] = []
        if self._cluster:
            self._enqueue_legacy = client.register_script(ENQUEUE_LEGACY)
            self._enqueue_new = client.register_script(ENQUEUE_NEW)
            self._release_idempotency = client.register_script(RELEASE_IDEMPOTENCY)
            # its reply is the whole legacy record: bytes, copied as they are
            self._update_legacy = self._raw.register_script(UPDATE_LEGACY)
            self._update_new = client.register_script(UPDATE_NEW)
        self._flags = effective(stored_flags(client), self.pins)
        if self._owns_raw and not self._cluster:
            self._raw.ping()  # its pooled connection is ready before the first request
        self._publish_flag_gauges()
        self._stop = threading.Event()
        self._published = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._background, name=f"relayctl-store-{self.instance}", daemon=True
            )
            self._thread.start()

    @property
    def flags(self) -> FlagState:
        return self._flags

    def refresh_flags(self) -> FlagState:
        """Re-read relay:flags now (the background thread does this on its own)."""
        self._flags = effective(stored_flags(self.client), self.pins)
        self._publish_flag_gauges()
        return self._flags

    def _publish_flag_gauges(self) -> None:
        for name in FLAG_NAMES:
            self.metrics.safely(lambda n: self.metrics.flag_state.labels(n).set(
                1.0 if self._flags.value(n) else 0.0), name)

    def heartbeat(self) -> None:
        fleet.publish(self.client, self.instance, self._flags, self.started)
        self._published = True

    def _background(self) -> None:
        next_beat = 0.0
        failures = 0
        while not self._stop.is_set():
            try:
                self.refresh_flags()
                if time.monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = time.monotonic() + self._heartbeat_interval
                failures = 0
            except (redis.RedisError, OSError) as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("flag refresh failed (%d): %s", failures, type(exc).__name__)
            self._stop.wait(self._refresh_interval)

    def close(self) -> None:
        """Stop the background thread and withdraw this instance's heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._published:
            with contextlib.suppress(redis.RedisError, OSError):
                fleet.withdraw(self.client, self.instance)
        if self._owns_raw:
            with contextlib.suppress(redis.RedisError, OSError):
                self._raw.close()
                if not self._cluster:
                    self._raw.connection_pool.disconnect()  # its own pool, made in __init__

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mismatch(self, operation: str, ws: str, job_id: str) -> None:
        log.warning("Workspace mismatch during %s - rejecting (job_id=%s)", operation, job_id)
        self.metrics.inc(self.metrics.workspace_mismatch, operation, self.metrics.label(ws))

    def enqueue(
        self,
        workspace_id: str,
        *,
        action_provider: str,
        action_name: str,
        params: Mapping[str, Any] | None = None,
        actor_id: str = "",
        request_id: str | None = None,
        ttl_seconds: float | None = None,
        job_id: str | None = None,
        now: float | None = None,
    ) -> EnqueueResult:
        """Create a pending job in one atomic script: both schemas under dual-write.

        With a request_id the idempotency key is checked and set in the same script, so two
        concurrent identical requests create one job and both get its id. On a Redis Cluster
        the same guarantees come from ordered one-slot steps (see `_enqueue_cluster`).
        """
        ws = validate_workspace_id(workspace_id)
        job_id = validate_job_id(job_id) if job_id is not None else uuid.uuid4().hex
        if request_id is not None:
            validate_request_id(request_id)
        if ttl_seconds is not None and not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise ValidationError(f"ttl_seconds must be in (0, {MAX_TTL_SECONDS}]")
        moment = time.time() if now is None else now
        record = {
            "job_id": job_id,
            "workspace_id": ws,
            "status": "pending",
            "action_provider": action_provider,
            "action_name": action_name,
            "params": json.dumps(params or {}, separators=(",", ":"), sort_keys=True),
            "actor_id": actor_id,
            "result": "",
            "error": "",
            "enqueued_at": iso_now(moment),
            "started_at": "",
            "finished_at": "",
        }
        dual = self._flags.dual_write
        s = self.schema
        ttl_ms = max(1, int(ttl_seconds * 1000)) if ttl_seconds else 0
        score = int(iso_to_ms(record["enqueued_at"]))
        fields: list[str] = []
        for name in JOB_FIELDS:
            fields += [name, record[name]]
        started = time.perf_counter()
        try:
            if self._cluster:
                created, existing = self._enqueue_cluster(
                    ws, job_id, request_id, dual, ttl_ms, score, fields)
            else:
                keys = [
                    s.idempotency_key(ws, request_id or "-"),
                    s.old_key(job_id), s.new_key(ws, job_id), s.index_key(ws), s.queue,
                ]
                args: list[Any] = [
                    "1" if request_id else "0", "1" if dual else "0", ttl_ms, score, job_id,
                    IDEMPOTENCY_TTL_MS, *fields,
                ]
                created, existing = self._enqueue(keys=keys, args=args)
        except Exception:
            if dual:
                self.metrics.inc(self.metrics.dual_write, "failed", self.metrics.label(ws))
                log.warning('relay_dual_write_attempt{result="failed"} op=enqueue')
            self.metrics.inc(self.metrics.requests, "enqueue", "error")
            raise
        if dual:
            self.metrics.inc(self.metrics.dual_write, "succeeded", self.metrics.label(ws))
            self.metrics.observe(self.metrics.dual_write_seconds, time.perf_counter() - started)
        self.metrics.inc(self.metrics.requests, "enqueue", "ok")
        return EnqueueResult(job_id=existing, created=bool(created))

    def _enqueue_cluster(
        self, ws: str, job_id: str, request_id: str | None, dual: bool, ttl_ms: int,
        score: int, fields: list[str],
    ) -> tuple[int, str]:
        """Enqueue on a Redis Cluster: one pre-read, then ordered steps, each on one slot.

        0. one pipelined read: the idempotency key (a hit returns it, nothing written) and the
           type of every key the steps write, so a wrong-typed key fails as on a standalone
           server, before any write;
        1. the legacy record (collision and TTL checks, HSET, PEXPIRE);
        2. under dual-write the new record, with its index entry in the same script when they
           share a slot (hash-tagged templates), else ZADD right after;
        3. with a request id, SET NX of the idempotency key; a lost race undoes 1-2 and
           returns the winner's id;
        4. RPUSH on the queue.
        A crash after 1 leaves a legacy-only record (`verify`: missing, `--repair` copies it);
        after 2 a whole job that is not queued; after 3 the same, owned by its request id. A
        failed step undoes what this call wrote: idempotency key, then index entry and new
        record, then the legacy record, so a crash mid-undo leaves a legacy-only record too.
        """
        s = self.schema
        old, new, index = s.old_key(job_id), s.new_key(ws, job_id), s.index_key(ws)
        idem = s.idempotency_key(ws, request_id) if request_id else None
        written = [old, s.queue, *((new, index) if dual else ())]
        commands = [("TYPE", key) for key in written]
        if idem:
            commands += [("TYPE", idem), ("GET", idem)]
        replies = _raise_transport(read_many(self.client, commands))
        types = dict(zip(written, map(_text, replies), strict=False))
        if idem:
            if _text(replies[-2]) not in ("none", "string"):
                raise redis.ResponseError("WRONGTYPE idempotency key is not a string")
            if replies[-1] is not None:
                return 0, _text(replies[-1])
        if types[old] != "none" or (dual and types[new] != "none"):
            raise redis.ResponseError(f"job id collision: {job_id}")
        if types[s.queue] not in ("none", "list"):
            raise redis.ResponseError("WRONGTYPE pending queue is not a list")
        if dual and types[index] not in ("none", "zset"):
            raise redis.ResponseError("WRONGTYPE workspace index is not a sorted set")
        self._enqueue_legacy_step(old, job_id, ttl_ms, fields)
        wrote_new = claimed = False
        try:
            if dual:
                indexed = self._enqueue_new_step(new, index, job_id, ttl_ms, score, fields)
                wrote_new = True
                if not indexed:
                    self.client.zadd(index, {job_id: score})
            if idem:
                winner = self._claim_request(idem, job_id)
                if winner != job_id:
                    self._undo_enqueue(ws, job_id, wrote_new, None)
                    return 0, winner
                claimed = True
            self.client.rpush(s.queue, job_id)
        except Exception:
            with contextlib.suppress(redis.RedisError, OSError):
                self._undo_enqueue(ws, job_id, wrote_new, idem if claimed else None)
            raise
        return 1, job_id

    def _enqueue_legacy_step(self, old: str, job_id: str, ttl_ms: int,
                             fields: list[str]) -> None:
        """The legacy record: always the first write, so a crash leaves what verify repairs."""
        self._enqueue_legacy(keys=[old], args=[ttl_ms, job_id, *fields])

    def _enqueue_new_step(self, new: str, index: str, job_id: str, ttl_ms: int, score: int,
                          fields: list[str]) -> bool:
        """The new record, with its index entry when they share a slot (then True)."""
        together = key_slot(new) == key_slot(index)
        self._enqueue_new(keys=[new, index] if together else [new],
                          args=[ttl_ms, score, job_id, *fields])
        return together

    def _claim_request(self, idem: str, job_id: str) -> str:
        """SET NX the idempotency key; the job id that owns the request afterwards."""
        for _ in range(5):
            if self.client.set(idem, job_id, nx=True, px=IDEMPOTENCY_TTL_MS):
                return job_id
            winner = self.client.get(idem)
            if winner is not None:
                return as_str(winner)
            # the owner expired or undid its claim in between: try to take it again
        raise redis.ResponseError(f"idempotency key {idem} keeps changing; retry the request")

    def _undo_enqueue(self, ws: str, job_id: str, new_written: bool, idem: str | None) -> None:
        """Remove this call's own writes, legacy record last (a crash leaves legacy-only)."""
        s = self.schema
        if idem is not None:
            self._release_idempotency(keys=[idem], args=[job_id])
        if new_written:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(s.index_key(ws), job_id)  # fails harmlessly if the index is broken
            pipe.delete(s.new_key(ws, job_id))
            deleted = pipe.execute(raise_on_error=False)[1]
            if isinstance(deleted, Exception):
                raise deleted  # keep the legacy record: never leave a new-only job behind
        self.client.delete(s.old_key(job_id))

    def update_status(
        self,
        workspace_id: str,
        job_id: str,
        status: str,
        *,
        result: Any = None,
        error: str | None = None,
        now: float | None = None,
    ) -> str:
        """Update every existing copy; under dual-write a missing new copy is made whole from
        the updated legacy record in the same script (on a cluster, in the step right after
        it: see `_update_cluster`). Returns which copies were written."""
        ws = validate_workspace_id(workspace_id)
        job_id = validate_job_id(job_id)
        if status not in STATUSES:
            raise ValidationError(f"invalid status {status!r}: expected one of {STATUSES}")
        stamp = iso_now(now)
        fields: dict[str, str] = {"status": status}
        if status == "running":
            fields["started_at"] = stamp
        if status in ("completed", "failed"):
            fields["finished_at"] = stamp
        if result is not None:
            fields["result"] = json.dumps(result, separators=(",", ":"), sort_keys=True)
        if error is not None:
            fields["error"] = error
        dual = self._flags.dual_write
        s = self.schema
        pairs: list[str] = []
        for k, v in fields.items():
            pairs += [k, v]
        started = time.perf_counter()
        try:
            if self._cluster:
                ok, where = self._update_cluster(ws, job_id, dual, pairs)
            else:
                ok, where = self._update(
                    keys=[s.old_key(job_id), s.new_key(ws, job_id), s.index_key(ws)],
                    args=["1" if dual else "0", ws, job_id, *pairs],
                )
        except Exception:
            if dual:
                self.metrics.inc(self.metrics.dual_write, "failed", self.metrics.label(ws))
                log.warning('relay_dual_write_attempt{result="failed"} op=update')
            self.metrics.inc(self.metrics.requests, "update", "error")
            raise
        if not ok:
            if where.startswith("mismatch"):
                self._mismatch("update", ws, job_id)
            self.metrics.inc(self.metrics.requests, "update", "not_found")
            raise JobNotFoundError(f"job {job_id} not found in workspace {ws}")
        if dual:
            self.metrics.inc(self.metrics.dual_write, "succeeded", self.metrics.label(ws))
            self.metrics.observe(self.metrics.dual_write_seconds, time.perf_counter() - started)
        self.metrics.inc(self.metrics.requests, "update", "ok")
        return where

    def _update_cluster(self, ws: str, job_id: str, dual: bool,
                        pairs: list[str]) -> tuple[int, str]:
        """Update on a Redis Cluster: one pre-read, then the legacy step, then the new step.

        0. one pipelined read of both records' type and workspace_id and the index's type:
           the standalone refusals (missing, mismatch, wrong types) before any write;
        1. the legacy record: HSET, returning the whole record and its PTTL;
        2. the new record (with the index when they share a slot, else ZADD right after):
           HSET if it exists, else under dual-write made whole from the record of step 1.
        A crash between 1 and 2 leaves a new copy older than the legacy record (`verify`:
        field mismatch or missing, `--repair` re-copies the legacy record). Each step re-checks
        its record, so a record deleted or replaced meanwhile is never written half.
        """
        s = self.schema
        old, new, index = s.old_key(job_id), s.new_key(ws, job_id), s.index_key(ws)
        replies = _raise_transport(read_many(self._raw, [
            ("TYPE", old), ("TYPE", new), ("TYPE", index),
            ("HGET", old, "workspace_id"), ("HMGET", new, "workspace_id", "enqueued_at"),
        ]))
        wsb = ws.encode()
        old_t, new_t, index_t = (_text(v) for v in replies[:3])
        if old_t == "none" and new_t == "none":
            return 0, "missing"
        if old_t not in ("none", "hash") or new_t not in ("none", "hash"):
            return 0, "invalid"
        if index_t not in ("none", "zset"):
            raise redis.ResponseError("WRONGTYPE workspace index is not a sorted set")
        if old_t == "hash" and replies[3] != wsb:
            return 0, "mismatch-old"
        new_head = replies[4] if new_t == "hash" else [None, None]
        if new_t == "hash" and new_head[0] != wsb:
            return 0, "mismatch-new"
        record: list[Any] = []
        pttl = -1
        old_written = False
        if old_t == "hash":
            reply = self._update_legacy_step(old, ws, pairs)
            if reply[0]:
                old_written = True
                record, pttl = list(reply[1]), int(reply[2])
            elif _text(reply[1]) != "missing":
                return 0, _text(reply[1])
        new_score = str(iso_to_ms(new_head[1])) if new_t == "hash" else ""
        what = self._update_new_step(new, index, ws, job_id, dual, pairs, new_score,
                                     record if old_written else [], pttl)
        if what.startswith(("mismatch", "invalid")):
            return 0, what
        if old_written:
            return 1, {"updated": "both", "created": "old+created"}.get(what, "old")
        return (1, "new") if what == "updated" else (0, "missing")

    def _update_legacy_step(self, old: str, ws: str, pairs: list[str]) -> list[Any]:
        """{1, record, pttl} after the HSET, or {0, reason} without writing."""
        reply: list[Any] = self._update_legacy(keys=[old], args=[ws, *pairs])
        return reply

    def _update_new_step(
        self, new: str, index: str, ws: str, job_id: str, dual: bool, pairs: list[str],
        new_score: str, record: list[Any], pttl: int,
    ) -> str:
        """Update or create the new record; index it under dual-write. Returns what it did."""
        together = key_slot(new) == key_slot(index)
        it = iter(record)
        created_score = iso_to_ms(dict(zip(it, it, strict=True)).get(b"enqueued_at"))
        args: list[Any] = ["1" if dual else "0", ws, job_id, new_score, created_score, pttl,
                           len(pairs) // 2, *pairs, *record]
        what, score = self._update_new(keys=[new, index] if together else [new], args=args)
        what = as_str(what)
        if dual and not together and what in ("updated", "created"):
            self.client.zadd(index, {job_id: int(score)}, nx=what == "updated")
        return what

    def _accept(self, raw: object, ws: str, job_id: str, source: str,
                operation: str) -> Job | None:
        """A record is returned only if it is whole and belongs to the caller's workspace.

        `raw` is a HGETALL reply of the bytes client. A record of the caller's job whose
        fields are not UTF-8 raises CorruptRecordError (counted and logged, payload never).
        """
        if not isinstance(raw, dict) or not raw:
            return None
        if raw.get(b"workspace_id") != ws.encode():
            self._mismatch(operation, ws, job_id)
            return None
        if raw.get(b"job_id") != job_id.encode() or not is_valid_job_id(job_id):
            return None
        record: dict[str, str] = {}
        for name, key in _FIELD_NAMES:
            value = raw.get(key, b"")
            try:
                record[name] = value.decode() if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                self._corrupt(job_id, name)
                raise CorruptRecordError(ws, job_id, name, source) from None
        job = Job.from_record(record, source)
        if job is None:
            return None
        try:
            json.loads(job.params or "{}")
        except ValueError:
            # still served (the caller decides), but counted: the seeds alert on >100/hour
            log.warning("Failed to deserialize job params (job_id=%s)", job_id)
            self.metrics.inc(self.metrics.deserialize_errors)
        return job

    def _corrupt(self, job_id: str, name: str) -> None:
        """Count every encounter; log each corrupt job once (list pages meet them often)."""
        self.metrics.inc(self.metrics.deserialize_errors)
        if job_id in self._logged_corrupt:
            return
        if len(self._logged_corrupt) >= 10_000:
            self._logged_corrupt.clear()
        self._logged_corrupt.add(job_id)
        log.warning("Failed to deserialize job record (job_id=%s, field=%s)", job_id, name)

    def _accept_listed(self, raw: object, ws: str, job_id: str, source: str) -> Job | None:
        """As `_accept` for a list page: a corrupt record is skipped (already counted)."""
        try:
            return self._accept(raw, ws, job_id, source, "list")
        except CorruptRecordError:
            return None

    def get_job(self, workspace_id: str, job_id: str) -> Job | None:
        """One round trip whatever the flags; another workspace's record is a miss.

        Raises CorruptRecordError when the record read cannot be decoded (a corrupt new copy
        is not a missing one, so it is not masked by the legacy record).
        """
        ws = validate_workspace_id(workspace_id)
        job_id = validate_job_id(job_id)
        flags = self._flags
        s = self.schema
        if flags.read_prefers_new:
            commands = [("HGETALL", s.new_key(ws, job_id))]
            if flags.read_fallback_old:
                commands.append(("HGETALL", s.old_key(job_id)))
            replies = read_many(self._raw, commands)
            _raise_transport(replies)
            job = self._accept(replies[0], ws, job_id, "new", "get")
            if job is None and len(replies) == 2:
                job = self._accept(replies[1], ws, job_id, "old", "get")
        else:
            replies = read_many(self._raw, [("HGETALL", s.old_key(job_id))])
            _raise_transport(replies)
            job = self._accept(replies[0], ws, job_id, "old", "get")
        path = job.source if job else "miss"
        if path == "new":
            log.debug("get_job: Found job in new schema (job_id=%s, workspace=%s)", job_id, ws)
        self.metrics.inc(self.metrics.read_path, path, self.metrics.label(ws))
        return job

    def _plan(self, flags: FlagState) -> str:
        if not flags.read_prefers_new:
            return "old"
        return "new+old" if flags.read_fallback_old else "new"

    def list_jobs(
        self,
        workspace_id: str,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """Newest first from the workspace index, then legacy-only jobs (SPEC §3).

        A page may be shorter than `limit` (even empty) while `cursor` is not None: keep
        paging until it is None. Every job appears exactly once across a full pagination.
        A corrupt record is skipped and counted (relay_job_deserialize_errors_total); an
        index entry whose job exists in neither schema is removed when met (at most
        PRUNE_PER_CALL per call).
        """
        ws = validate_workspace_id(workspace_id)
        if status is not None and status not in STATUSES:
            raise ValidationError(f"invalid status {status!r}: expected one of {STATUSES}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"invalid limit {limit!r}: expected 1..{MAX_LIMIT}")
        flags = self._flags
        plan = self._plan(flags)
        status_key = status or ""
        if cursor is None:
            state: CursorState | None = CursorState(
                ws=ws, status=status_key, plan=plan,
                phase="legacy" if plan == "old" else "index",
            )
        else:
            state = self._codec.decode(cursor, ws=ws, status=status_key, plan=plan)
        jobs: list[Job] = []
        orphans: list[tuple[bytes, float]] = []
        rounds = idle = 0
        while state is not None and len(jobs) < limit and rounds < _LIST_ROUNDS:
            rounds += 1
            before = len(jobs)
            if state.phase == "index":
                state = self._index_round(state, jobs, limit, status, flags.read_fallback_old,
                                          orphans, idle)
            else:
                state = self._legacy_round(state, jobs, limit, status, plan)
            idle = idle + 1 if len(jobs) == before else 0
        if orphans:
            self._prune_orphans(ws, orphans)
        sources = {j.source for j in jobs}
        if len(sources) == 2:
            path = "mixed"
        elif sources:
            path = sources.pop()
        else:
            path = "old" if plan == "old" else "new"
        self.metrics.inc(self.metrics.list_read_path, path, self.metrics.label(ws))
        token = self._codec.encode(state) if state is not None else None
        return Page(jobs=jobs, cursor=token, path=path)

    def _index_round(
        self, state: CursorState, jobs: list[Job], limit: int, status: str | None,
        fallback: bool, orphans: list[tuple[bytes, float]], idle: int = 0,
    ) -> CursorState | None:
        """Consume index entries after (score, job_id) in newest-first order; entries whose
        job has neither record go to `orphans`. After `idle` rounds that listed nothing
        (a run of expired or filtered jobs) the batch grows, up to 32 times, so the page
        still fills within the round limit."""
        s = self.schema
        ws = state.ws
        want = limit - len(jobs)
        top = "+inf" if state.score is None else repr(state.score)
        offset = 0
        batch = max(want, 16) << min(idle, 5)
        while True:
            entries = [(_member(m), m, sc) for m, sc in self._raw.zrange(
                s.index_key(ws), top, "-inf", desc=True, byscore=True,
                offset=offset, num=batch, withscores=True,
            )]
            fresh = [
                (m, raw, sc) for m, raw, sc in entries
                if state.score is None or sc < state.score
                or (sc == state.score and state.job_id is not None and m < state.job_id)
            ]
            if fresh or len(entries) < batch:
                break
            offset += batch
        exhausted = len(entries) < batch
        if not fresh:
            return self._after_index(state, fallback) if exhausted else state
        valid = [m for m, _raw, _sc in fresh if is_valid_job_id(m)]
        new_recs = dict(zip(valid, _raise_transport(read_many(
            self._raw, [("HGETALL", s.new_key(ws, m)) for m in valid])), strict=True))
        # an expired or lost new copy is still listed once from its legacy record (fallback);
        # without either record the entry is an orphan
        lost = [m for m in valid if new_recs[m] == {}]
        old_recs = dict(zip(lost, _raise_transport(read_many(
            self._raw, [("HGETALL" if fallback else "EXISTS", s.old_key(m)) for m in lost])),
            strict=True))
        last = state
        for member, raw_member, score in fresh:
            if len(jobs) >= limit:
                return last
            last = replace(state, score=score, job_id=member)
            if member not in new_recs:
                continue
            if old_recs.get(member) in ({}, 0):
                if len(orphans) < PRUNE_PER_CALL:
                    orphans.append((raw_member, score))
                continue
            job = self._accept_listed(new_recs[member], ws, member, "new")
            if job is None and fallback and member in old_recs:
                job = self._accept_listed(old_recs[member], ws, member, "old")
            if job is not None and (status is None or job.status == status):
                jobs.append(job)
        if exhausted:
            return self._after_index(state, fallback)
        return last

    def _prune_orphans(self, ws: str, orphans: list[tuple[bytes, float]]) -> None:
        """Remove index entries whose job has neither record, re-checked in one script
        (on a cluster only the entry's score is re-checked: the records live elsewhere).
        Best effort: a refusal (e.g. an ACL without ZREM) only stops pruning here."""
        if not self._prune_allowed:
            return
        s = self.schema
        index = s.index_key(ws)
        keys = [index]
        args: list[Any] = []
        for member, score in orphans:
            job_id = member.decode()
            if not self._cluster:
                keys += [s.new_key(ws, job_id), s.old_key(job_id)]
            args += [member, repr(score)]
        try:
            removed = int(self._prune(keys=keys, args=args))
        except redis.ResponseError as exc:
            self._prune_allowed = False
            log.warning("index orphan pruning disabled: %s", str(exc).split(" ", 1)[0])
            return
        if removed:
            self.metrics.inc(self.metrics.index_orphans_removed, amount=removed)

    @staticmethod
    def _after_index(state: CursorState, fallback: bool) -> CursorState | None:
        return replace(state, phase="legacy", score=None, job_id=None) if fallback else None

    def _legacy_round(
        self, state: CursorState, jobs: list[Job], limit: int, status: str | None, plan: str,
    ) -> CursorState | None:
        """One SCAN step over legacy keys; in 'new+old' only jobs absent from the index.

        On a cluster the step SCANs the cursor's shard and moves on to the next shard (in
        slot order) when that one is done. Key names are bytes; the cursor keeps the last
        one consumed as text (surrogate escapes for non-UTF-8 bytes).
        """
        s = self.schema
        ws = state.ws
        wsb = ws.encode()
        want_status = status.encode() if status is not None else None
        position = state.scan
        scanner, next_shard = self._scan_target(state.shard)
        next_pos, keys = scanner.scan(
            position, match=s.old_pattern, count=_SCAN_COUNT, _type="hash")
        keys = sorted(set(keys))
        if state.last_key is not None:
            after = state.last_key.encode("utf-8", "surrogateescape")
            keys = [k for k in keys if k > after]
        if keys:
            heads = self._read_on(
                scanner, [("HMGET", k, "workspace_id", "job_id", "status") for k in keys])
            candidates = [
                (key, _member(head[1])) for key, head in zip(keys, heads, strict=True)
                if isinstance(head, list) and head[0] == wsb and head[1] is not None
                and is_valid_job_id(_member(head[1]))
                and (want_status is None or head[2] == want_status)
            ]
            if candidates:
                records = self._read_on(scanner, [("HGETALL", k) for k, _ in candidates])
                indexed: set[str] = set()
                if plan == "new+old":
                    ids = [job_id for _, job_id in candidates]
                    scores = self._raw.zmscore(s.index_key(ws), ids)
                    indexed = {i for i, sc in zip(ids, scores, strict=True) if sc is not None}
                consumed = state.last_key
                for (key, job_id), record in zip(candidates, records, strict=True):
                    if len(jobs) >= limit:
                        return replace(state, scan=position, last_key=consumed)
                    consumed = key.decode("utf-8", "surrogateescape")
                    if job_id in indexed:
                        continue
                    job = self._accept_listed(record, ws, job_id, "old")
                    if job is not None and (status is None or job.status == status):
                        jobs.append(job)
        next_pos = int(next_pos)
        if next_pos == 0:
            if next_shard is None:
                return None
            return replace(state, shard=next_shard, scan=0, last_key=None)
        return replace(state, scan=next_pos, last_key=None)

    def _scan_target(self, shard: str) -> tuple[Any, str | None]:
        """The client that SCANs `shard` (its primary's pooled connection) and the next
        shard's name, None after the last one."""
        client = self.client
        if not is_cluster(client):
            if shard != "0":
                raise CursorError("invalid cursor: malformed payload")
            return self._raw, None
        found = self._shards(client)
        names = [name for name, _ in found]
        if shard not in names:
            raise CursorError(
                "the cluster's shards changed since this cursor was issued; "
                "start again from the first page")
        at = names.index(shard)
        node = self._raw.get_node(node_name=found[at][1])
        following = names[at + 1] if at + 1 < len(names) else None
        return self._raw.get_redis_connection(node), following

    def _read_on(self, node: Any, commands: list[tuple[str, ...]]) -> list[Any]:
        """Reads of keys a SCAN found on `node`, packed on its own connection (a cluster
        pipeline costs ~0.1 ms of routing per command); through the cluster client if a
        slot moved away meanwhile."""
        replies = read_many(node, commands)
        if node is not self._raw and any(isinstance(v, AskError) for v in replies):
            replies = read_many(self._raw, commands)
        return _raise_transport(replies)

    def _shards(self, client: RedisCluster) -> list[tuple[str, str]]:
        """(name, primary address) of every shard in slot order. Computing it walks all
        16384 slots, so it is kept while the client's slot map still agrees with it."""
        known = self._shard_cache
        slots = client.nodes_manager.slots_cache
        if known and len(known) == len(client.get_primaries()) and all(
            slots.get(int(name)) and slots[int(name)][0].name == address
            for name, address in known
        ):
            return known
        found = shards(client)
        close_shards(found, client)  # only names and addresses are needed
        self._shard_cache = [(f.name, f.address) for f in found]
        return self._shard_cache


def _text(value: Any) -> Any:
    """A reply as str whatever the client's decode_responses (None stays None)."""
    return value.decode() if isinstance(value, bytes) else value


def _member(value: bytes | str) -> str:
    """An index member or job id from the bytes client as text; non-UTF-8 bytes become
    surrogate escapes, which no valid job id contains."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _bytes_client(client: Any) -> tuple[Any, bool]:
    """A client on the same server returning bytes, and whether this store owns it."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not is_cluster(client) and (kwargs is None or not kwargs.get("decode_responses")):
        return client, False
    return binary_client(client), True


def _raise_transport(replies: list[Any]) -> list[Any]:
    """Error replies other than WRONGTYPE are real failures and must not look like misses."""
    for reply in replies:
        if isinstance(reply, redis.ResponseError) and not str(reply).startswith("WRONGTYPE"):
            raise reply
    return replies


def seed_legacy(
    client: redis.Redis, schema: KeySchema, records: Iterable[Mapping[str, str]],
    ttl_ms: Mapping[str, int] | None = None,
) -> int:
    """Write records in the legacy schema only (pre-migration data for demos and benches)."""
    pipe = client.pipeline(transaction=False)
    n = 0
    for record in records:
        key = schema.old_key(record["job_id"])
        pipe.hset(key, mapping=hash_fields(record))
        if ttl_ms and record["job_id"] in ttl_ms:
            pipe.pexpire(key, ttl_ms[record["job_id"]])
        n += 1
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return n
