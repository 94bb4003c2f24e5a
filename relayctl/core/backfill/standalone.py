"""A standalone server is one lane: SCAN + a read script, then COPY_BATCH, which copies,
indexes and records the batch in one atomic step fenced by the lease key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis

from relayctl.core.backfill import scripts
from relayctl.core.backfill.guards import ServerSample
from relayctl.core.backfill.lanes import (
    Batch,
    CopyItem,
    EngineContext,
    Lane,
    Rescan,
    ServerWatch,
    Skips,
    look_only,
    split_keys,
)
from relayctl.core.binary import binary_client
from relayctl.core.replies import as_str as text

TRANSIENT: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)


class ServerIdentity:
    """The run_id of the server process; SCAN cursors are only valid on the one that issued
    them (a restarted or failed-over server hashes keys with a new seed, in a new order)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.has_info = True

    def read(self) -> str:
        if not self.has_info:
            return ""
        try:
            return text(self.client.info("server").get("run_id", ""))
        except redis.ResponseError:  # no INFO (fakeredis, a strict ACL): cannot tell
            self.has_info = False
            return ""


class StandaloneLane:
    """The whole keyspace of one server."""

    def __init__(self, ctx: EngineContext, identity: ServerIdentity, cursor: int = 0,
                 done: bool = False, server: str = "") -> None:
        self.ctx = ctx
        self.identity = identity
        self.name = "0"
        self.cursor = cursor
        self.done = done
        self.server = server
        self.watch = ServerWatch(ctx.options.guards)
        self._raw: Any = None  # a bytes client: key names and values are data

    @property
    def raw(self) -> Any:
        if self._raw is None:
            self._raw = binary_client(self.ctx.client)
        return self._raw

    def read(self, cursor: int) -> Batch:
        ctx = self.ctx
        t0 = time.perf_counter()
        pipe = self.raw.pipeline(transaction=False)
        pipe.scan(cursor, match=ctx.schema.old_pattern, count=ctx.options.batch)
        with_info = self.identity.has_info
        full, buffers = self.watch.queue(pipe) if with_info else (False, False)
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        if with_info and isinstance(replies[1], redis.ResponseError):
            self.identity.has_info = False  # the embedded demo's fakeredis has no INFO
            return self.read(cursor)
        next_cursor, raw_keys = replies[0]
        keys, undecodable = split_keys(raw_keys)
        sample = self.watch.parse(replies[1:], full, buffers) if with_info else None
        server = sample.run_id if sample is not None else ""
        if server != self.server:
            if cursor != 0:
                raise Rescan(f"server {self.server or '?'} is now {server or '?'}")
            self.server = server
        scan_ms = (time.perf_counter() - t0) * 1000
        flat = [text(v) for v in scripts.HEADS(self.raw, keys=[ctx.keys.control, *keys])]
        heads = list(zip(flat[1::3], flat[2::3], flat[3::3], strict=True))
        return Batch(cursor, int(next_cursor), keys, scan_ms, heads, sample=sample,
                     undecodable=undecodable)

    def probe(self) -> ServerSample | None:
        if not self.identity.has_info:
            return None
        pipe = self.ctx.client.pipeline(transaction=False)
        full, buffers = self.watch.queue(pipe, full=True)
        return self.watch.parse(pipe.execute(raise_on_error=False), full, buffers)

    def apply(self, batch: Batch, items: list[CopyItem], skips: Skips) -> tuple[str, str]:
        ctx = self.ctx
        if not ctx.options.execute:
            return look_only(ctx, items)
        s = ctx.schema
        workspaces = sorted({ws for _k, _j, ws, _s in items})
        number = {ws: i for i, ws in enumerate(workspaces, start=1)}
        keys = [ctx.keys.state, ctx.keys.lease, ctx.keys.control,
                *(s.index_key(ws) for ws in workspaces)]
        args: list[object] = [ctx.token, batch.cursor, f"{time.time():.3f}",
                              batch.scanned, skips.count("invalid"), skips.count("filtered"),
                              batch.start, len(workspaces), *workspaces]
        for key, job_id, ws, score in items:
            keys += [key, s.new_key(ws, job_id)]
            args += [job_id, number[ws], score]
        codes, _, control = text(scripts.COPY(ctx.client, keys, args)).partition("|")
        return codes, control

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


class StandaloneTopology:
    cluster = False
    transient = TRANSIENT

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.identity = ServerIdentity(ctx.client)

    def lanes(self, saved: Mapping[str, str]) -> tuple[list[Lane], bool]:
        server = self.identity.read()
        cursor = int(saved.get("cursor", 0) or 0)
        # cursor 0 after a batch was applied: the scan ended before the status was saved
        done = cursor == 0 and ("last_start" in saved or int(saved.get("scanned", 0) or 0) > 0)
        changed = bool(saved.get("server")) and saved.get("server") != server and cursor != 0
        if changed:
            cursor, done = 0, False
        return [StandaloneLane(self.ctx, self.identity, cursor, done, server)], changed

    def unchanged(self, lanes: list[Lane]) -> bool:
        return not self.identity.has_info or self.identity.read() == lanes[0].server

    def state_fields(self, lanes: list[Lane]) -> dict[str, str]:
        return {"cursor": str(lanes[0].cursor), "server": lanes[0].server}

    def renew(self, args: list[Any]) -> bool:
        k = self.ctx.keys
        return bool(scripts.RENEW_STATE(self.ctx.client, [k.lease, k.state], args))

    def prepare(self) -> None:
        pass

    def forget(self) -> None:
        pass

    def saved_note(self, cursor: int) -> str:
        return f"cursor {cursor} is saved"

    def close(self) -> None:
        pass
