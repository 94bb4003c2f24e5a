"""SCAN walks that notice the server changed under them (failover behind a proxy, restart).

A SCAN cursor is only meaningful on the server process that issued it: a promoted replica or
a restarted server orders its keys differently, so a walk continued there skips and repeats
keys. Every batch is read together with the server identity (run_id, master_replid) on the
same connection; a change raises ServerChangedError and the caller starts over from 0
(`restarting`), never reporting a partial walk as complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from relayctl.core.errors import RelayError
from relayctl.core.exitcodes import ExitCode

RESTARTS = 3
T = TypeVar("T")


@dataclass(frozen=True)
class ServerIdentity:
    run_id: str
    replid: str

    def as_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "replid": self.replid}

    def __str__(self) -> str:
        return f"run_id {self.run_id[:12]} replid {self.replid[:12]}"


UNKNOWN = ServerIdentity("", "")


class ServerChangedError(RelayError):
    """The server answering changed during a walk; the walk's counts are not trustworthy."""

    exit_code = ExitCode.ERRORS


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _identity(server: object, replication: object) -> ServerIdentity:
    s = server if isinstance(server, dict) else {}
    r = replication if isinstance(replication, dict) else {}
    return ServerIdentity(_text(s.get("run_id")), _text(r.get("master_replid")))


def server_identity(client: redis.Redis) -> ServerIdentity:
    """run_id and master_replid of the server `client` talks to (UNKNOWN without INFO)."""
    pipe = client.pipeline(transaction=False)
    pipe.info("server")
    pipe.info("replication")
    try:
        server, replication = pipe.execute()
    except redis.ResponseError:
        return UNKNOWN
    return _identity(server, replication)


class Walk:
    """One SCAN (or ZSCAN of one key) to its end on one server, identity checked per batch.

    `identity` is the server the walk started on; every batch's SCAN travels in one
    pipeline with INFO server + INFO replication, and the end is confirmed by one more
    INFO, so any switch before the last reply raises ServerChangedError.
    """

    def __init__(self, client: redis.Redis, *, match: str | bytes | None = None,
                 count: int = 1000, zset: str | bytes | None = None,
                 expect: ServerIdentity | None = None) -> None:
        self.client = client
        self.match = match
        self.count = count
        self.zset = zset
        self.identity: ServerIdentity | None = expect
        self.batches = 0

    def _check(self, found: ServerIdentity) -> None:
        if self.identity is None:
            self.identity = found
        elif found != self.identity:
            raise ServerChangedError(
                f"the server changed during the walk ({self.identity} -> {found}): "
                "its cursor is not valid there")

    def _read(self, cursor: int) -> tuple[int, list[Any]]:
        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=False)
            if self.zset is not None:
                pipe.zscan(self.zset, cursor, match=self.match, count=self.count)
            else:
                pipe.scan(cursor, match=self.match, count=self.count)
            pipe.info("server")
            pipe.info("replication")
            try:
                reply, server, replication = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt:
                    raise
                continue  # a dropped connection; the identity of the next answer decides
            except redis.ResponseError as exc:
                if "info" not in str(exc).lower():
                    raise
                # no INFO here (an ACL without it): cannot tell, so one try, no check
                pipe = self.client.pipeline(transaction=False)
                if self.zset is not None:
                    pipe.zscan(self.zset, cursor, match=self.match, count=self.count)
                else:
                    pipe.scan(cursor, match=self.match, count=self.count)
                reply, server, replication = pipe.execute()[0], {}, {}
            self._check(_identity(server, replication))
            next_cursor, items = reply
            return int(next_cursor), list(items)
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[list[Any]]:
        cursor = 0
        while True:
            cursor, items = self._read(cursor)
            self.batches += 1
            if cursor == 0:
                if items:
                    yield items
                # the walk (and what the caller read for its last batch) is only complete
                # if the same server is still answering
                if self.identity is not None and self.identity != UNKNOWN:
                    self._check(server_identity(self.client))
                return
            if items:
                yield items


def restarting(attempt: Callable[[int], T], *, restarts: int = RESTARTS,
               on_restart: Callable[[ServerChangedError], None] | None = None) -> T:
    """Run `attempt(n)` (n = restarts so far) until one walk completes on one server.

    Gives up with ServerChangedError after `restarts` restarts: a partial walk is never
    returned as a result.
    """
    n = 0
    while True:
        try:
            return attempt(n)
        except ServerChangedError as exc:
            if n >= restarts:
                raise ServerChangedError(
                    f"{exc} (gave up after {n} restarts from cursor 0)") from None
            n += 1
            if on_restart is not None:
                on_restart(exc)
