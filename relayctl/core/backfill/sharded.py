"""A Redis Cluster is one lane per shard. The legacy key, its copy, the index and the
engine's state live in different slots, so a batch is: reads on the shard's primary
(SCAN, heads, DUMP + PEXPIRETIME), copies routed to each new key's primary, then one commit
on the state hash fenced by the owner's token."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)

from relayctl.core import cluster as clusterlib
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
from relayctl.core.replies import as_str as text
from relayctl.core.roundtrip import read_many
from relayctl.core.scripting import Script, ScriptReloaded

_MOVED = (AskError, ClusterDownError, TryAgainError)  # MovedError is an AskError
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, OSError, ClusterError, TryAgainError,
    SlotNotCoveredError)


class ClusterTopology:
    cluster = True
    transient = TRANSIENT

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.router = clusterlib.Router(ctx.client)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self.generation = 0

    def servers(self) -> dict[str, str]:
        """run_id of the primary now serving each shard."""
        found = clusterlib.shards(self.ctx.client)
        try:
            return {sh.name: text(sh.client.info("server").get("run_id", "")) for sh in found}
        finally:
            clusterlib.close_shards(found, self.ctx.client)

    def lanes(self, saved: Mapping[str, str]) -> tuple[list[Lane], bool]:
        servers = self.servers()
        changed = any(saved.get(f"server:{name}", server) != server
                      for name, server in servers.items())
        lanes: list[Lane] = []
        for name, server in servers.items():
            lane = ShardLane(self.ctx, self, name, server)
            if saved and not changed:
                lane.cursor = int(saved.get(f"cursor:{name}", 0) or 0)
                lane.done = saved.get(f"done:{name}") == "1"
            lanes.append(lane)
        return lanes, changed

    def unchanged(self, lanes: list[Lane]) -> bool:
        return self.servers() == {lane.name: lane.server for lane in lanes}

    def state_fields(self, lanes: list[Lane]) -> dict[str, str]:
        out: dict[str, str] = {"server": "cluster"}
        for lane in lanes:
            out[f"cursor:{lane.name}"] = str(lane.cursor)
            out[f"done:{lane.name}"] = "1" if lane.done else "0"
            out[f"server:{lane.name}"] = lane.server
            out[f"start:{lane.name}"] = ""
        return out

    def renew(self, args: list[Any]) -> bool:
        k = self.ctx.keys
        if not scripts.RENEW_ONLY_LEASE(self.ctx.client, [k.lease], args[:2]):
            return False
        try:
            scripts.STATE(self.ctx.client, [k.state],
                          [args[0], "heartbeat", args[2], "rate", args[3], "fraction", args[4],
                           "eta_s", args[5]])
        except redis.ResponseError as exc:
            if str(exc).startswith(("LEASE ", "FINAL ")):
                return False
            raise
        return True

    def prepare(self) -> None:
        scripts.RESTORE.load(self.ctx.client)
        scripts.COMMIT.load(self.ctx.client)

    def forget(self) -> None:
        """After a node failure: re-read the slot map; each lane re-resolves its reader."""
        with self._lock:
            self.generation += 1
            with contextlib.suppress(redis.RedisError, OSError, SlotNotCoveredError):
                clusterlib.refresh_topology(self.ctx.client)  # may still be failing over

    def saved_note(self, cursor: int) -> str:
        return "every shard's cursor is saved"

    def close(self) -> None:
        self.router.close()


class ShardLane:
    """One shard's walk: its cursor, its primary's identity and a raw reader on it."""

    def __init__(self, ctx: EngineContext, topology: ClusterTopology, name: str,
                 server: str) -> None:
        self.ctx = ctx
        self.topology = topology
        self.name = name
        self.server = server
        self.cursor = 0
        self.done = False
        self._reader: redis.Redis | None = None
        self._gen = 0
        self.watch = ServerWatch(ctx.options.guards)

    def reader(self) -> redis.Redis:
        gen = self.topology.generation
        if self._reader is not None and self._gen != gen:
            self._reader.close()
            self._reader = None
        if self._reader is None:
            self._gen = gen
            for shard in clusterlib.shards(self.ctx.client, decode_responses=False):
                if shard.name == self.name:
                    self._reader = shard.client
                else:
                    shard.client.close()
            if self._reader is None:
                raise ClusterError(f"shard {self.name} is not served by any primary")
        return self._reader

    def read(self, cursor: int) -> Batch:
        """SCAN the shard's primary, then read heads (and dumps) there: two round trips."""
        ctx, execute = self.ctx, self.ctx.options.execute
        t0 = time.perf_counter()
        reader = self.reader()
        pipe = reader.pipeline(transaction=False)
        pipe.scan(cursor, match=ctx.schema.old_pattern, count=ctx.options.batch)
        full, buffers = self.watch.queue(pipe)
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        next_cursor, raw_keys = replies[0]
        sample = self.watch.parse(replies[1:], full, buffers)
        if sample.run_id != self.server:
            raise Rescan(self.name)
        scan_ms = (time.perf_counter() - t0) * 1000
        keys, undecodable = split_keys(raw_keys)
        per_key = 3 if execute else 1
        commands: list[tuple[Any, ...]] = []
        for key in keys:
            commands.append(("HMGET", key, "workspace_id", "job_id", "enqueued_at"))
            if execute:
                # the absolute expiry, so a copy made later expires exactly with its source
                commands += [("DUMP", key), ("PEXPIRETIME", key)]
        replies = read_many(reader, commands)
        if any(isinstance(r, _MOVED) for r in replies):
            # the slot map changed under this shard (resharding): re-read it and redo the batch
            raise ClusterError(f"shard {self.name} no longer serves some of its keys")
        for reply in replies:
            # WRONGTYPE marks a non-hash legacy key (invalid); any other refusal (NOPERM, an
            # unknown PEXPIRETIME) must stop the run, not count every key as gone
            if isinstance(reply, redis.ResponseError) and not str(reply).startswith("WRONG"):
                raise reply
        heads: list[tuple[str, str, str]] = []
        dumps: list[tuple[bytes | None, int]] = []
        for i in range(len(keys)):
            head = replies[per_key * i]
            if isinstance(head, list):
                heads.append((text(head[0]), text(head[1]), text(head[2])))
            else:
                heads.append(("\0", "\0", ""))
            if execute:
                dump, pttl = replies[per_key * i + 1], replies[per_key * i + 2]
                dumps.append((dump if isinstance(dump, bytes) else None,
                              pttl if isinstance(pttl, int) else -2))
        return Batch(cursor, int(next_cursor), keys, scan_ms, heads, self.name, dumps, sample,
                     undecodable)

    def probe(self) -> ServerSample | None:
        pipe = self.reader().pipeline(transaction=False)
        full, buffers = self.watch.queue(pipe, full=True)
        return self.watch.parse(pipe.execute(raise_on_error=False), full, buffers)

    def apply(self, batch: Batch, items: list[CopyItem], skips: Skips) -> tuple[str, str]:
        if not self.ctx.options.execute:
            return look_only(self.ctx, items)
        codes = self._copy(batch, items)
        return codes, self._commit(batch, skips, codes)

    def _copy(self, batch: Batch, items: list[CopyItem]) -> str:
        """Copy-if-absent routed to each copy's primary; one code per item as COPY_BATCH."""
        s = self.ctx.schema
        dumps = dict(zip(batch.keys, batch.dumps, strict=True))
        routed: list[tuple[str, tuple[Any, ...]]] = []
        plan: list[str] = []  # per item: 'g' (no command), 's' (script), 'r' (restore + zadd)
        for key, job_id, ws, score in items:
            dump, pttl = dumps[key]
            if dump is None or pttl == -2:
                plan.append("g")
                continue
            ttl = pttl if pttl > 0 else 0  # PEXPIRETIME: -1 none, -2 gone
            new, idx = s.new_key(ws, job_id), s.index_key(ws)
            if clusterlib.key_slot(new) == clusterlib.key_slot(idx):
                routed.append((new, scripts.RESTORE.command([new, idx],
                                                            [ttl, dump, score, job_id])))
                plan.append("s")
            else:
                routed.append((new, ("RESTORE", new, ttl, dump, "ABSTTL")))
                routed.append((idx, ("ZADD", idx, "NX", score, job_id)))
                plan.append("r")
        replies = iter(self.topology.router.execute(routed) if routed else ())
        codes = []
        for step in plan:
            if step == "g":
                codes.append("g")
                continue
            first = self._checked(next(replies), scripts.RESTORE)
            if step == "s":
                code = text(first)
                codes.append(code if code in ("m", "e", "i", "x") else "x")
                continue
            indexed = self._checked(next(replies), None)
            if isinstance(first, Exception):
                if "BUSYKEY" not in str(first):
                    codes.append("x")
                else:  # the copy exists; ZADD NX put back its index entry if it had none
                    codes.append("i" if indexed == 1 else "e")
            else:
                codes.append("x" if isinstance(indexed, Exception) else "m")
        return "".join(codes)

    def _checked(self, reply: Any, script: Script | None) -> Any:
        """Transport errors and NOSCRIPT redo the batch; other error replies are codes."""
        if script is not None:
            script.check(self.ctx.client, reply)
        if isinstance(reply, Exception) and (
                isinstance(reply, TRANSIENT) or not isinstance(reply, redis.ResponseError)):
            raise reply
        return reply

    def _commit(self, batch: Batch, skips: Skips, codes: str) -> str:
        """Record the batch in the state hash (fenced by the token); returns the control."""
        ctx = self.ctx
        args = [ctx.token, batch.lane, batch.cursor, batch.start, f"{time.time():.3f}",
                batch.scanned, codes.count("m"), codes.count("e") + codes.count("i"),
                skips.count("invalid") + codes.count("g"), skips.count("filtered"),
                codes.count("x"), "1" if batch.cursor == 0 else "0", codes.count("i")]
        for attempt in (0, 1):
            pipe = ctx.client.pipeline(transaction=False)
            pipe.execute_command(*scripts.COMMIT.command([ctx.keys.state], args))
            pipe.get(ctx.keys.control)
            committed, control = pipe.execute(raise_on_error=False)
            try:
                scripts.COMMIT.check(ctx.client, committed)
            except ScriptReloaded:
                if attempt:
                    raise
                continue  # only the commit is redone: the copies already landed
            if isinstance(committed, Exception):
                raise committed
            self._checked(control, None)
            return text(control)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
