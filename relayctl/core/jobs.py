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
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from relayctl.core import fleet
from relayctl.core.cursor import CursorCodec, CursorState, shared_secret
from relayctl.core.errors import JobNotFoundError, ValidationError
from relayctl.core.flags import FLAG_NAMES, FlagState, effective, env_pins, stored_flags
from relayctl.core.keys import KeySchema
from relayctl.core.lua import ENQUEUE, UPDATE
from relayctl.core.metrics import Metrics
from relayctl.core.roundtrip import read_many
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LIST_ROUNDS = 32
_SCAN_COUNT = 1000


def iso_now(now: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, the record's timestamp format."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_to_ms(value: str | None) -> int:
    """Epoch milliseconds of an ISO-8601 timestamp (naive means UTC); 0 if unparsable."""
    if not value:
        return 0
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # exact integer arithmetic, truncating sub-millisecond digits like the Lua iso_ms does
    return (moment - _EPOCH) // timedelta(milliseconds=1)


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
        self._flags = effective(stored_flags(client), self.pins)
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
        concurrent identical requests create one job and both get its id.
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
        keys = [
            s.idempotency_key(ws, request_id) if request_id else s.idempotency_key(ws, "-"),
            s.old_key(job_id), s.new_key(ws, job_id), s.index_key(ws), s.queue,
        ]
        args: list[Any] = [
            "1" if request_id else "0", "1" if dual else "0",
            max(1, int(ttl_seconds * 1000)) if ttl_seconds else 0,
            int(iso_to_ms(record["enqueued_at"])), job_id, IDEMPOTENCY_TTL_MS,
        ]
        for name in JOB_FIELDS:
            args += [name, record[name]]
        started = time.perf_counter()
        try:
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
        the updated legacy record in the same script. Returns which copies were written."""
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
        args: list[Any] = ["1" if dual else "0", ws, job_id]
        for k, v in fields.items():
            args += [k, v]
        started = time.perf_counter()
        try:
            ok, where = self._update(
                keys=[s.old_key(job_id), s.new_key(ws, job_id), s.index_key(ws)], args=args
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

    def _accept(self, record: Mapping[str, str], ws: str, job_id: str, source: str,
                operation: str) -> Job | None:
        """A record is returned only if it is whole and belongs to the caller's workspace."""
        if not record:
            return None
        if record.get("workspace_id") != ws:
            self._mismatch(operation, ws, job_id)
            return None
        job = Job.from_record(record, source)
        if job is None or job.job_id != job_id:
            return None
        try:
            json.loads(job.params or "{}")
        except ValueError:
            # still served (the caller decides), but counted: the seeds alert on >100/hour
            log.warning("Failed to deserialize job params (job_id=%s)", job_id)
            self.metrics.inc(self.metrics.deserialize_errors)
        return job

    def get_job(self, workspace_id: str, job_id: str) -> Job | None:
        """One round trip whatever the flags; another workspace's record is a miss."""
        ws = validate_workspace_id(workspace_id)
        job_id = validate_job_id(job_id)
        flags = self._flags
        s = self.schema
        if flags.read_prefers_new:
            commands = [("HGETALL", s.new_key(ws, job_id))]
            if flags.read_fallback_old:
                commands.append(("HGETALL", s.old_key(job_id)))
            replies = read_many(self.client, commands)
            _raise_transport(replies)
            job = self._accept(_hash(replies[0]), ws, job_id, "new", "get")
            if job is None and len(replies) == 2:
                job = self._accept(_hash(replies[1]), ws, job_id, "old", "get")
        else:
            replies = read_many(self.client, [("HGETALL", s.old_key(job_id))])
            _raise_transport(replies)
            job = self._accept(_hash(replies[0]), ws, job_id, "old", "get")
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
        rounds = 0
        while state is not None and len(jobs) < limit and rounds < _LIST_ROUNDS:
            rounds += 1
            if state.phase == "index":
                state = self._index_round(state, jobs, limit, status, flags.read_fallback_old)
            else:
                state = self._legacy_round(state, jobs, limit, status, plan)
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
        fallback: bool,
    ) -> CursorState | None:
        """Consume index entries after (score, job_id) in newest-first order."""
        s = self.schema
        ws = state.ws
        want = limit - len(jobs)
        top = "+inf" if state.score is None else repr(state.score)
        offset = 0
        batch = max(want, 16)
        while True:
            entries = self.client.zrange(
                s.index_key(ws), top, "-inf", desc=True, byscore=True,
                offset=offset, num=batch, withscores=True,
            )
            fresh = [
                (m, sc) for m, sc in entries
                if state.score is None or sc < state.score
                or (sc == state.score and state.job_id is not None and m < state.job_id)
            ]
            if fresh or len(entries) < batch:
                break
            offset += batch
        exhausted = len(entries) < batch
        if not fresh:
            return self._after_index(state, fallback) if exhausted else state
        valid = [m for m, _ in fresh if is_valid_job_id(m)]
        new_recs = dict(zip(valid, map(_hash, _raise_transport(read_many(
            self.client, [("HGETALL", s.new_key(ws, m)) for m in valid]))), strict=True))
        old_recs: dict[str, dict[str, str]] = {}
        if fallback:
            # an expired or lost new copy is still listed once, from its legacy record
            lost = [m for m in valid if not new_recs[m]]
            old_recs = dict(zip(lost, map(_hash, _raise_transport(read_many(
                self.client, [("HGETALL", s.old_key(m)) for m in lost]))), strict=True))
        last = state
        for member, score in fresh:
            if len(jobs) >= limit:
                return last
            last = replace(state, score=score, job_id=member)
            if member not in new_recs:
                continue
            job = self._accept(new_recs[member], ws, member, "new", "list")
            if job is None and old_recs.get(member):
                job = self._accept(old_recs[member], ws, member, "old", "list")
            if job is not None and (status is None or job.status == status):
                jobs.append(job)
        if exhausted:
            return self._after_index(state, fallback)
        return last

    @staticmethod
    def _after_index(state: CursorState, fallback: bool) -> CursorState | None:
        return replace(state, phase="legacy", score=None, job_id=None) if fallback else None

    def _legacy_round(
        self, state: CursorState, jobs: list[Job], limit: int, status: str | None, plan: str,
    ) -> CursorState | None:
        """One SCAN step over legacy keys; in 'new+old' only jobs absent from the index."""
        s = self.schema
        ws = state.ws
        position = state.scan
        next_pos, keys = self.client.scan(
            position, match=s.old_pattern, count=_SCAN_COUNT, _type="hash")
        keys = sorted(set(keys))
        if state.last_key is not None:
            keys = [k for k in keys if k > state.last_key]
        if keys:
            heads = _raise_transport(read_many(
                self.client, [("HMGET", k, "workspace_id", "job_id", "status") for k in keys]))
            candidates = [
                key for key, head in zip(keys, heads, strict=True)
                if isinstance(head, list) and head[0] == ws and is_valid_job_id(head[1])
                and (status is None or head[2] == status)
            ]
            if candidates:
                records = _raise_transport(
                    read_many(self.client, [("HGETALL", k) for k in candidates]))
                by_key = dict(zip(candidates, map(_hash, records), strict=True))
                indexed: set[str] = set()
                if plan == "new+old":
                    ids = [by_key[k].get("job_id", "") for k in candidates]
                    scores = self.client.zmscore(s.index_key(ws), ids)
                    indexed = {i for i, sc in zip(ids, scores, strict=True) if sc is not None}
                consumed = state.last_key
                for key in candidates:
                    if len(jobs) >= limit:
                        return replace(state, scan=position, last_key=consumed)
                    consumed = key
                    record = by_key[key]
                    job_id = record.get("job_id", "")
                    if job_id in indexed:
                        continue
                    job = self._accept(record, ws, job_id, "old", "list")
                    if job is not None and (status is None or job.status == status):
                        jobs.append(job)
        next_pos = int(next_pos)
        if next_pos == 0:
            return None
        return replace(state, scan=next_pos, last_key=None)


def _hash(reply: object) -> dict[str, str]:
    """A HGETALL reply, or {} for an error reply such as WRONGTYPE (a non-hash key)."""
    return reply if isinstance(reply, dict) else {}


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
        pipe.hset(key, mapping=dict(record))
        if ttl_ms and record["job_id"] in ttl_ms:
            pipe.pexpire(key, ttl_ms[record["job_id"]])
        n += 1
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return n
