"""Will the copy fit? The preflight projection of the memory a backfill adds, per server.

Every legacy record still without a copy will be copied once (COPY duplicates the hash) and
indexed once, so: bytes ≈ legacy keys left x (mean MEMORY USAGE of a legacy record + one
index entry). The counts come from a RANDOMKEY sample (one round trip), so the projection is
an estimate with its sample size stated; the running memory guard is the safety net.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import redis

from relayctl.core.binary import binary_client
from relayctl.core.keys import KeySchema
from relayctl.core.replies import as_str

SAMPLE = 256
INDEX_ENTRY_OVERHEAD = 64  # skiplist node + dict entry + score, beyond the member itself
EVICTING_ALWAYS = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
EVICTING_TTL = ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


@dataclass
class ServerProjection:
    """One server (or shard primary): what it holds, what the copy adds, the verdict."""

    name: str
    info: bool = True  # False: the server answers no INFO (fakeredis, a strict ACL)
    used: int = 0
    maxmemory: int = 0
    policy: str = ""
    dbsize: int = 0
    sampled: int = 0
    legacy_sampled: int = 0
    copied_sampled: int = 0
    ttl_sampled: int = 0
    mean_record: float = 0.0
    legacy_estimate: int = 0
    to_copy_estimate: int = 0
    projected: int = 0
    limit: int = 0
    note: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def after(self) -> int:
        return self.used + self.projected

    def line(self) -> str:
        if not self.info:
            return f"{self.name}: memory unknown (INFO is not available); guards are off"
        if self.note:
            return (f"{self.name}: used {_mib(self.used)}, projection unknown: {self.note}; "
                    f"policy {self.policy or '?'}")
        limit = (f"{self.after / self.limit:.0%} of the {_mib(self.limit)} limit"
                 if self.limit else "no memory limit (maxmemory 0)")
        return (f"{self.name}: used {_mib(self.used)} + projected {_mib(self.projected)} "
                f"({self.to_copy_estimate:,} of ~{self.legacy_estimate:,} legacy records to "
                f"copy, ~{self.mean_record:,.0f} B each; sample {self.sampled}) = "
                f"{_mib(self.after)}, {limit}; policy {self.policy or '?'}")


@dataclass
class Projection:
    servers: list[ServerProjection]

    @property
    def problems(self) -> list[str]:
        return [f"{s.name}: {p}" for s in self.servers for p in s.problems]

    def lines(self) -> list[str]:
        return [s.line() for s in self.servers]


def _mib(n: float) -> str:
    return f"{n / 1048576:,.1f} MiB"


def project_server(name: str, client: redis.Redis, schema: KeySchema,
                   workspaces: frozenset[str], *, max_memory_pct: float,
                   max_memory_bytes: int | None, allow_evicting: bool,
                   sample: int = SAMPLE) -> ServerProjection:
    """Sample one server (a standalone server, or one shard's primary) in three round trips."""
    out = ServerProjection(name)
    try:
        info: dict[str, Any] = client.info("memory")
    except redis.ResponseError:
        out.info = False
        return out
    out.used = int(info.get("used_memory", 0))
    out.maxmemory = int(info.get("maxmemory", 0))
    out.policy = as_str(info.get("maxmemory_policy", ""))
    pipe = client.pipeline(transaction=False)
    pipe.dbsize()
    for _ in range(sample):
        pipe.randomkey()
    try:
        size, *keys = pipe.execute()
    except redis.ResponseError as exc:  # RANDOMKEY or DBSIZE denied: no projection
        out.note = f"no sample ({str(exc).splitlines()[0][:80]})"
        _judge(out, max_memory_pct, max_memory_bytes, allow_evicting)
        return out
    out.dbsize = int(size)
    picked = {_utf8(k) for k in keys if k is not None}
    out.sampled = len([k for k in keys if k is not None])
    picked.discard(None)
    legacy = sorted(k for k in picked if k and fnmatch.fnmatchcase(k, schema.old_pattern))
    _measure(out, client, schema, workspaces, legacy)
    if out.sampled:
        share = out.legacy_sampled / out.sampled
        out.legacy_estimate = round(out.dbsize * share)
        left = 1 - (out.copied_sampled / out.legacy_sampled if out.legacy_sampled else 0)
        out.to_copy_estimate = round(out.legacy_estimate * left)
    out.projected = round(out.to_copy_estimate * out.mean_record)
    _judge(out, max_memory_pct, max_memory_bytes, allow_evicting)
    return out


def _utf8(key: Any) -> str | None:
    """A sampled key name as text; None for a name that is not UTF-8 (never a job key)."""
    if isinstance(key, str):
        return key
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _measure(out: ServerProjection, client: redis.Redis, schema: KeySchema,
             workspaces: frozenset[str], legacy: list[str]) -> None:
    """MEMORY USAGE, head and TTL of each sampled legacy key; then which have a copy."""
    pipe = client.pipeline(transaction=False)
    for key in legacy:
        pipe.memory_usage(key)
        pipe.hmget(key, ["workspace_id", "job_id"])
        pipe.pttl(key)
    replies = pipe.execute(raise_on_error=False)
    sizes: list[int] = []
    heads: list[tuple[str, str]] = []
    for i in range(len(legacy)):
        usage, head, pttl = replies[3 * i: 3 * i + 3]
        if not isinstance(head, list) or not head[0] or not head[1]:
            continue  # not a job record (wrong type, no workspace): never copied
        ws, job_id = as_str(head[0]), as_str(head[1])
        if workspaces and ws not in workspaces:
            continue
        if isinstance(usage, int):
            sizes.append(usage + len(job_id) + INDEX_ENTRY_OVERHEAD)
        if isinstance(pttl, int) and pttl > 0:
            out.ttl_sampled += 1
        heads.append((ws, job_id))
    out.legacy_sampled = len(heads)
    if heads:
        pipe = client.pipeline(transaction=False)
        for ws, job_id in heads:
            pipe.exists(schema.new_key(ws, job_id))
        out.copied_sampled = sum(1 for n in pipe.execute(raise_on_error=False) if n == 1)
    out.mean_record = sum(sizes) / len(sizes) if sizes else 0.0


def _judge(out: ServerProjection, max_memory_pct: float, max_memory_bytes: int | None,
           allow_evicting: bool) -> None:
    if out.maxmemory:
        out.limit = int(out.maxmemory * max_memory_pct / 100)
    elif max_memory_bytes:
        out.limit = max_memory_bytes
    if out.limit and out.after > out.limit:
        out.problems.append(
            f"used {_mib(out.used)} + projected {_mib(out.projected)} = {_mib(out.after)} "
            f"exceeds {max_memory_pct:g}% of maxmemory ({_mib(out.limit)}): raise maxmemory, "
            "run by --workspace, or archive first")
    if not allow_evicting and (out.policy in EVICTING_ALWAYS or (
            out.policy in EVICTING_TTL and out.ttl_sampled > 0)):
        why = ("evicts any key" if out.policy in EVICTING_ALWAYS
               else f"evicts keys with a TTL and {out.ttl_sampled} of the sampled jobs have one")
        out.problems.append(
            f"maxmemory-policy {out.policy} {why}: one eviction during the migration deletes "
            "a job; set noeviction (or pass --allow-evicting-policy)")


def project(client: Any, schema: KeySchema, workspaces: frozenset[str], *,
            max_memory_pct: float = 85.0, max_memory_bytes: int | None = None,
            allow_evicting: bool = False) -> Projection:
    """The projection for every server the run writes to: the server, or each shard."""
    from relayctl.core import cluster as clusterlib

    def one(name: str, server: redis.Redis) -> ServerProjection:
        return project_server(name, server, schema, workspaces, max_memory_pct=max_memory_pct,
                              max_memory_bytes=max_memory_bytes, allow_evicting=allow_evicting)

    if not clusterlib.is_cluster(client):
        raw = binary_client(client)  # key names are data: sampled as bytes
        try:
            return Projection([one("server", raw)])
        finally:
            raw.close()
    found = clusterlib.shards(client, decode_responses=False)
    try:
        return Projection([one(f"shard {sh.name}", sh.client) for sh in found])
    finally:
        clusterlib.close_shards(found, client)
