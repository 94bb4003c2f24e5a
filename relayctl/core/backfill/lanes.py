"""What varies between a standalone server and a cluster, behind two small strategies.

A *lane* is one SCAN walk (the whole server, or one shard's primary): it reads a batch and
applies it. A *topology* makes the lanes, renews the lease, and says whether the servers
behind them changed. The engine's one walk loop drives any number of lanes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from relayctl.core.backfill.guards import SAMPLE_EVERY_S, ServerSample, parse_info
from relayctl.core.backfill.options import BackfillOptions
from relayctl.core.backfill.state import BackfillKeys
from relayctl.core.keys import KeySchema
from relayctl.core.replies import as_str

# legacy key, job_id, workspace_id, index score: one record the batch will copy
CopyItem = tuple[str, str, str, int]


@dataclass
class Batch:
    """One SCAN step of one lane and what was read of its keys."""

    start: int
    cursor: int
    keys: list[str]
    scan_ms: float
    heads: list[tuple[str, str, str]]  # workspace_id, job_id, enqueued_at per key
    lane: str = "0"
    dumps: list[tuple[bytes | None, int]] = field(default_factory=list)
    sample: ServerSample | None = None  # the lane's server, read with this batch
    undecodable: list[bytes] = field(default_factory=list)  # key names that are not UTF-8

    @property
    def scanned(self) -> int:
        return len(self.keys) + len(self.undecodable)


@dataclass
class Skips:
    """Keys of a batch that are not copied, by reason and metrics label."""

    by_label: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, reason: str) -> int:
        return sum(n for (r, _lbl), n in self.by_label.items() if r == reason)


@dataclass
class EngineContext:
    """What every lane of one run shares."""

    client: redis.Redis
    schema: KeySchema
    options: BackfillOptions
    keys: BackfillKeys
    token: str


class Rescan(Exception):
    """The server behind a lane changed (failover, restart): its SCAN cursor is meaningless
    there, and copies it had not persisted or replicated may be gone, so walk again."""


class Lane(Protocol):
    name: str
    cursor: int
    done: bool
    server: str
    watch: ServerWatch

    def read(self, cursor: int) -> Batch:
        """SCAN from `cursor` and read what the copy needs; raises Rescan on a new server."""

    def apply(self, batch: Batch, items: list[CopyItem], skips: Skips) -> tuple[str, str]:
        """Copy (or, dry-run, look) and record the batch; returns one code per item
        (m migrated, e exists, g gone, x error) and the control key's value."""

    def probe(self) -> ServerSample | None:
        """A full sample of the lane's server now (while throttled, and at the end)."""

    def close(self) -> None: ...


class Topology(Protocol):
    cluster: bool
    transient: tuple[type[BaseException], ...]

    def lanes(self, saved: Mapping[str, str]) -> tuple[list[Lane], bool]:
        """Lanes resumed from a saved state ({} = from the start), and whether a server
        changed since that state was saved (then every lane starts over)."""

    def unchanged(self, lanes: list[Lane]) -> bool:
        """True while every lane's server is still the one it walked (the final check)."""

    def state_fields(self, lanes: list[Lane]) -> dict[str, str]:
        """The lanes' cursors and servers as the state hash stores them."""

    def renew(self, args: list[Any]) -> bool:
        """Renew the lease and write the heartbeat; False when the lease is lost."""

    def prepare(self) -> None:
        """Load what an executing run needs on the server (scripts)."""

    def forget(self) -> None:
        """After a transport error: re-resolve nodes before the retry."""

    def saved_note(self, cursor: int) -> str:
        """What a resume will continue from, for the lost-Redis message."""

    def close(self) -> None: ...


class SampleClock:
    """A full INFO at most every `interval` per lane (SAMPLE_EVERY_S, shorter while the
    guards need it: see Guards.sample_interval); `INFO server` in between."""

    def __init__(self) -> None:
        self._last = 0.0
        self.interval = SAMPLE_EVERY_S

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False


def split_keys(raw: list[Any]) -> tuple[list[str], list[bytes]]:
    """SCAN's key names as text, and apart the ones that are not UTF-8: those are counted
    invalid (reason encoding) and never read, copied or decoded."""
    keys: list[str] = []
    bad: list[bytes] = []
    for key in raw:
        if isinstance(key, str):
            keys.append(key)
            continue
        try:
            keys.append(key.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(key)
    return keys, bad


class ServerWatch:
    """Per lane: queues the server sample on the batch's own pipeline (a full INFO and the
    replicas' output buffers when due, `INFO server` otherwise) and parses the replies."""

    def __init__(self, enabled: bool = True) -> None:
        self.clock = SampleClock()
        self.enabled = enabled
        self.buffers = True  # CLIENT LIST may be denied by an ACL: then lag bytes only

    def queue(self, pipe: Any, full: bool | None = None) -> tuple[bool, bool]:
        full = (self.enabled and self.clock.due()) if full is None else full
        if full:
            pipe.info()
        else:
            pipe.info("server")
        buffers = full and self.buffers
        if buffers:
            pipe.client_list(_type="replica")
        return full, buffers

    def parse(self, replies: list[Any], full: bool, buffers: bool) -> ServerSample:
        info = replies[0]
        if isinstance(info, Exception):
            raise info
        sample = parse_info(decoded(info), full)
        if buffers:
            clients = replies[1]
            if isinstance(clients, Exception):
                self.buffers = False
            else:
                sample.buffers = [int(as_str(c.get("omem", 0)) or 0) for c in clients]
        return sample


def decoded(info: dict[Any, Any]) -> dict[str, Any]:
    """INFO from a raw (bytes) reader, with text keys and values."""
    return {as_str(k): (decoded(v) if isinstance(v, dict) else
                        v if isinstance(v, int | float) else as_str(v)) for k, v in info.items()}


def look_only(ctx: EngineContext, items: list[CopyItem]) -> tuple[str, str]:
    """The dry-run's apply: which copies exist (e) or would be made (m); writes nothing."""
    pipe = ctx.client.pipeline(transaction=False)
    for _key, job_id, ws, _score in items:
        pipe.exists(ctx.schema.new_key(ws, job_id))
    pipe.get(ctx.keys.control)
    *found, control = pipe.execute()
    return "".join("e" if n else "m" for n in found), as_str(control)
