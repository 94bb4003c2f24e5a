"""One dedicated connection for optimistic transactions, each step one round trip.

WATCH keys + read them, judge in Python, then MULTI/writes/EXEC: the writes land only if no
watched key changed since the read (compare-and-set without a second copy of the judgement
in Lua). redis-py's pipeline would send each command after WATCH as its own round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

Command = tuple[Any, ...]


def _as_dict(reply: Any) -> Any:
    if isinstance(reply, list):
        it = iter(reply)
        return dict(zip(it, it, strict=True))
    return reply


class Pinned:
    """A connection taken out of a (bytes) client's pool until close()."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.conn = self.pool.get_connection()

    def exchange(self, commands: Sequence[Command]) -> list[Any]:
        """Send commands in one write, read every reply; error replies come back as values."""
        if not commands:
            return []
        self.conn.send_packed_command(self.conn.pack_commands(commands))
        replies: list[Any] = []
        for cmd in commands:
            try:
                reply = self.conn.read_response()
            except redis.ResponseError as exc:
                reply = exc
            replies.append(_as_dict(reply) if str(cmd[0]).upper() == "HGETALL" else reply)
        return replies

    def watch_read(self, watch: Sequence[Any], reads: Sequence[Command]) -> list[Any]:
        """UNWATCH, WATCH `watch`, then `reads`: their replies."""
        replies = self.exchange([("UNWATCH",), ("WATCH", *watch), *reads] if watch
                                else [("UNWATCH",), *reads])
        return replies[2:] if watch else replies[1:]

    def snapshot(self, reads: Sequence[Command]) -> list[Any]:
        """`reads` as one MULTI/EXEC: an atomic view."""
        replies = self.exchange([("MULTI",), *reads, ("EXEC",)])
        result = replies[-1]
        if isinstance(result, Exception):
            raise result
        return [_as_dict(r) if str(c[0]).upper() == "HGETALL" else r
                for c, r in zip(reads, result, strict=True)]

    def commit(self, writes: Sequence[Command]) -> list[Any] | None:
        """MULTI, writes, EXEC after a watch_read: their replies, or None if a watched key
        changed (nothing was written)."""
        if not writes:
            self.exchange([("UNWATCH",)])
            return []
        replies = self.exchange([("MULTI",), *writes, ("EXEC",)])
        result = replies[-1]
        if isinstance(result, Exception):
            raise result
        return None if result is None else list(result)

    def close(self) -> None:
        try:
            self.exchange([("UNWATCH",)])
        except (redis.RedisError, OSError):
            self.conn.disconnect()
        self.pool.release(self.conn)
