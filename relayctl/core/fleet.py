"""Fleet heartbeats: each JobStore instance reports its effective flags and pins."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from relayctl import __version__
from relayctl.core.flags import FLAG_NAMES, FlagState, word
from relayctl.core.keys import FLEET_INDEX_KEY, FLEET_PREFIX
from relayctl.core.replies import as_str
from relayctl.core.replies import fields as hash_fields

HEARTBEAT_TTL_S = 10.0
MAX_FLEET = 1000


def new_instance_id() -> str:
    host = socket.gethostname().split(".")[0][:32] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Instance:
    instance: str
    host: str
    pid: int
    version: str
    flags: dict[str, str]
    pinned: tuple[str, ...]
    started: float
    ts: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance, "host": self.host, "pid": self.pid,
            "version": self.version, "flags": self.flags, "pinned": list(self.pinned),
            "started": self.started, "ts": self.ts,
        }


def publish(
    client: redis.Redis, instance: str, flags: FlagState, started: float,
    ttl_s: float = HEARTBEAT_TTL_S, now: float | None = None,
) -> None:
    """Write the heartbeat hash (with TTL) and its entry in the fleet index, one round trip."""
    now = time.time() if now is None else now
    key = FLEET_PREFIX + instance
    fields = {
        "instance": instance,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "version": __version__,
        "pinned": ",".join(sorted(flags.pinned)),
        "started": f"{started:.3f}",
        "ts": f"{now:.3f}",
    }
    fields.update({name: word(flags.value(name)) for name in FLAG_NAMES})
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=hash_fields(fields))
    pipe.pexpire(key, int(ttl_s * 1000))
    pipe.zadd(FLEET_INDEX_KEY, {instance: now + ttl_s})
    pipe.zremrangebyscore(FLEET_INDEX_KEY, "-inf", now)
    pipe.execute()


def withdraw(client: redis.Redis, instance: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.delete(FLEET_PREFIX + instance)
    pipe.zrem(FLEET_INDEX_KEY, instance)
    pipe.execute()


def live_instances(client: redis.Redis, now: float | None = None) -> list[Instance]:
    """Instances whose heartbeat has not expired: two round trips, bounded by fleet size."""
    now = time.time() if now is None else now
    ids = client.zrangebyscore(FLEET_INDEX_KEY, now, "+inf", start=0, num=MAX_FLEET)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(FLEET_PREFIX + as_str(i))
    out = []
    for raw in pipe.execute():
        if not raw:
            continue
        try:
            out.append(Instance(
                instance=raw.get("instance", ""),
                host=raw.get("host", ""),
                pid=int(raw.get("pid", 0)),
                version=raw.get("version", ""),
                flags={n: raw.get(n, "") for n in FLAG_NAMES},
                pinned=tuple(p for p in raw.get("pinned", "").split(",") if p),
                started=float(raw.get("started", 0)),
                ts=float(raw.get("ts", 0)),
            ))
        except ValueError:
            continue
    return sorted(out, key=lambda i: i.instance)
