"""Redis Cluster: which kind of client we hold, its shards, and SCAN over every primary.

A shard is the set of slots one primary serves. It is named by its first slot, so the name
(and a cursor saved under it) survives a failover, when a replica takes the same slots over.
On a standalone server there is one shard, named "0", served by the client itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot as _key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)

from relayctl.core.replies import as_str

SLOTS = 16384


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    """Whether `client` is a cluster client (core types every client as redis.Redis)."""
    return isinstance(client, RedisCluster)


def as_client(cluster: RedisCluster) -> redis.Redis:
    """A cluster client where core takes a client: it sends the same commands, and
    is_cluster tells the two apart where they differ."""
    return cast(redis.Redis, cluster)


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (hash tags honoured), as Redis computes it."""
    return _key_slot(key if isinstance(key, bytes) else key.encode())


@dataclass(frozen=True)
class Shard:
    name: str
    address: str
    slots: str
    client: redis.Redis

    @property
    def first_slot(self) -> int:
        return int(self.name)


def _ranges(slots: list[int]) -> str:
    out: list[str] = []
    start: int | None = None
    prev = 0
    for s in sorted(slots):
        if start is None:
            start = prev = s
        elif s == prev + 1:
            prev = s
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = s
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)


def node_client(cluster: RedisCluster, node: Any, *, decode_responses: bool | None = None
                ) -> redis.Redis:
    """A plain client for one node with the cluster client's settings (TLS, auth, timeouts).

    Commands sent through it are not redirected: use it only for keys that node serves.
    """
    base = cluster.get_redis_connection(node)
    kwargs = dict(base.connection_pool.connection_kwargs)
    kwargs.pop("redis_connect_func", None)
    for name in list(kwargs):
        if name.startswith(("maint_", "oss_cluster_", "orig_")):
            kwargs.pop(name)
    if decode_responses is not None:
        kwargs["decode_responses"] = decode_responses
    pool = redis.ConnectionPool(connection_class=base.connection_pool.connection_class,
                                **kwargs)
    return redis.Redis(connection_pool=pool)


def shards(client: Any, *, decode_responses: bool | None = None) -> list[Shard]:
    """Every shard, ordered by first slot, each with a plain client for its primary."""
    if not is_cluster(client):
        if decode_responses is None or decode_responses == _decodes(client):
            return [Shard(name="0", address="", slots=f"0-{SLOTS - 1}", client=client)]
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs["decode_responses"] = decode_responses
        pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class,
                                    **kwargs)
        return [Shard(name="0", address="", slots=f"0-{SLOTS - 1}",
                      client=redis.Redis(connection_pool=pool))]
    owned: dict[str, list[int]] = {}
    nodes: dict[str, Any] = {}
    for slot, holders in client.nodes_manager.slots_cache.items():
        if holders:
            owned.setdefault(holders[0].name, []).append(slot)
            nodes[holders[0].name] = holders[0]
    out = [Shard(name=str(min(slots)), address=name, slots=_ranges(slots),
                 client=node_client(client, nodes[name], decode_responses=decode_responses))
           for name, slots in owned.items()]
    return sorted(out, key=lambda s: s.first_slot)


def _decodes(client: Any) -> bool:
    return bool(client.connection_pool.connection_kwargs.get("decode_responses"))


def refresh_topology(client: Any) -> None:
    """Re-read which node serves which slots (after a failover); no-op when standalone."""
    if is_cluster(client):
        client.nodes_manager.initialize()


def close_shards(found: list[Shard], owner: Any) -> None:
    for shard in found:
        if shard.client is not owner:
            shard.client.close()


def scan_all(client: Any, match: str | None = None, count: int = 1000,
             _type: str | None = None) -> Iterator[list[str]]:
    """SCAN every primary to its end, one batch at a time (one shard after the other); keys
    as text, whatever the client's decode_responses."""
    found = shards(client)
    try:
        for shard in found:
            cursor = 0
            while True:
                cursor, keys = shard.client.scan(cursor, match=match, count=count, _type=_type)
                if keys:
                    yield [as_str(k) for k in keys]
                if int(cursor) == 0:
                    break
    finally:
        close_shards(found, client)


def dbsize(client: Any) -> int:
    """Keys in the whole keyspace: the sum of DBSIZE over every primary."""
    if not is_cluster(client):
        return int(client.dbsize())
    # a dict of per-node counts, whatever the stubs say
    replies: Any = client.dbsize(target_nodes=RedisCluster.PRIMARIES)
    if isinstance(replies, dict):
        return sum(int(v) for v in replies.values())
    return int(replies)


# MOVED, ASK, TRYAGAIN, CLUSTERDOWN / MASTERDOWN: the cluster client knows how to go on.
_REDIRECTS = (AskError, TryAgainError, ClusterDownError)
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


class Router:
    """Sends commands straight to the primaries that serve their keys.

    One packed write per node, every node in flight before any reply is read: one round
    trip for a whole batch. redis-py's cluster pipeline spends ~100 µs of Python per command
    on routing, which made it the bottleneck of the backfill, verify and archive.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._clients: dict[str, redis.Redis] = {}
        self._lock = threading.Lock()

    def node_name(self, key: str | bytes) -> str:
        holders = self.cluster.nodes_manager.slots_cache.get(key_slot(key))
        if not holders:
            raise SlotNotCoveredError(f"slot of {key!r} is not covered by the cluster")
        return holders[0].name

    def _client(self, name: str) -> redis.Redis:
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                node = self.cluster.get_node(node_name=name)
                client = self._clients[name] = node_client(self.cluster, node)
            return client

    def _dispatch(self, items: Sequence[tuple[Any, tuple[Any, ...]]]
                  ) -> tuple[list[Any], list[int]]:
        """Replies in order (error replies as values) and the indexes that did not land:
        their node was unreachable or answered with a redirect."""
        by_node: dict[str, list[int]] = {}
        failed: list[int] = []
        for i, (key, _cmd) in enumerate(items):
            try:
                by_node.setdefault(self.node_name(key), []).append(i)
            except SlotNotCoveredError:
                failed.append(i)
        replies: list[Any] = [None] * len(items)
        taken: list[tuple[Any, Any, list[int]]] = []
        try:
            for name, idxs in by_node.items():
                pool = self._client(name).connection_pool
                try:
                    conn = pool.get_connection()
                except _UNREACHABLE:
                    failed += idxs
                    continue
                try:
                    conn.send_packed_command(conn.pack_commands([items[i][1] for i in idxs]))
                except _UNREACHABLE:
                    conn.disconnect()
                    pool.release(conn)
                    failed += idxs
                    continue
                taken.append((pool, conn, idxs))
            for _pool, conn, idxs in taken:
                try:
                    for i in idxs:
                        try:
                            replies[i] = conn.read_response()
                        except redis.ResponseError as exc:
                            replies[i] = exc
                except _UNREACHABLE:
                    conn.disconnect()
                    failed += idxs
        except BaseException:
            for _pool, conn, _idxs in taken:
                conn.disconnect()
            raise
        finally:
            for pool, conn, _idxs in taken:
                pool.release(conn)
        failed += [i for i, reply in enumerate(replies) if isinstance(reply, _REDIRECTS)]
        return replies, sorted(set(failed))

    def execute(self, items: Sequence[tuple[Any, tuple[Any, ...]]]) -> list[Any]:
        """(routing key, command) pairs; replies in order. Raises ClusterError if any share
        did not land, after re-reading the slot map, so the caller retries the batch."""
        replies, failed = self._dispatch(items)
        if failed:
            self.forget()
            raise ClusterError(f"{len(failed)} commands hit a moved slot or an unreachable node")
        return replies

    def run(self, commands: Sequence[tuple[Any, ...]], key_at: int = 1) -> list[Any]:
        """Replies in order, errors as values (like read_many); the key is `cmd[key_at]`.

        Shares that did not land (resharding, failover) are sent again through the cluster
        client, which follows redirects; so commands must be safe to repeat.
        """
        replies, failed = self._dispatch([(cmd[key_at], cmd) for cmd in commands])
        if failed:
            self.forget()
            pipe = self.cluster.pipeline(transaction=False)
            for i in failed:
                pipe.execute_command(*commands[i])
            for i, reply in zip(failed, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        return replies

    def forget(self) -> None:
        """Re-read the slot map and drop the per-node clients (a node may be gone)."""
        with self._lock:
            old, self._clients = self._clients, {}
        for client in old.values():
            client.close()
        with contextlib.suppress(redis.RedisError, OSError, SlotNotCoveredError):
            refresh_topology(self.cluster)

    def close(self) -> None:
        with self._lock:
            old, self._clients = self._clients, {}
        for client in old.values():
            client.close()


def run_script(router: Router, script: str,
               calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """Run `script` once per (keys, args) call, all keys of a call in one slot.

    Scripts are called by SHA and loaded on every primary when a node answers NOSCRIPT
    (first use, a promoted replica). Error replies other than NOSCRIPT are raised.
    """
    from relayctl.core.scripting import Script

    replies = Script("cluster.run_script", script).run_batch(
        router.cluster, lambda commands: router.run(commands, key_at=3), calls)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
