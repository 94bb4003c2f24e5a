"""Gates that the server can carry the migration (issue 12): dual-write doubles the job
data in phase 3 and the backfill finishes the copy in phase 4, so before each the memory
headroom, an eviction policy that cannot delete a job, no evictions since the phase began,
and replicas keeping up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from relayctl.core.backfill.capacity import EVICTING_ALWAYS, EVICTING_TTL
from relayctl.core.census import last_census
from relayctl.core.gates import (
    FAIL,
    PASS,
    UNKNOWN,
    WAIT,
    GateContext,
    GateResult,
    _r,
    gate,
    pct,
)
from relayctl.core.replies import as_str
from relayctl.core.scrape import SourceError
from relayctl.core.serverinfo import memory_info


@dataclass(frozen=True)
class ServerMemory:
    name: str
    used: int
    dataset: int
    maxmemory: int
    policy: str
    keys: int
    expires: int


def _memories(client: redis.Redis) -> list[ServerMemory] | None:
    """INFO memory + keyspace of the server, or of each primary: a fixed number of commands
    whatever the keyspace holds (this runs on every console refresh)."""
    from relayctl.core import cluster as clusterlib

    def one(name: str, c: redis.Redis) -> ServerMemory:
        pipe = c.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("keyspace")
        mem, space = pipe.execute()
        keys = sum(int(v.get("keys", 0)) for v in space.values() if isinstance(v, dict))
        expires = sum(int(v.get("expires", 0)) for v in space.values() if isinstance(v, dict))
        return ServerMemory(name, int(mem.get("used_memory", 0)),
                            int(mem.get("used_memory_dataset", mem.get("used_memory", 0))),
                            int(mem.get("maxmemory", 0)), as_str(mem.get("maxmemory_policy")),
                            keys, expires)

    try:
        if not clusterlib.is_cluster(client):
            return [one("server", client)]
        found = clusterlib.shards(client)
        try:
            return [one(f"shard {sh.name}", sh.client) for sh in found]
        finally:
            clusterlib.close_shards(found, client)
    except redis.ResponseError:  # no INFO (fakeredis without it, a strict ACL)
        return None


def _mib(n: float) -> str:
    return f"{n / 1048576:,.1f} MiB"


@gate("memory_headroom", "Memory after the copy stays below 85% of maxmemory")
def _memory_headroom(ctx: GateContext) -> GateResult:
    """From the stored census (legacy records without a copy) and INFO's mean bytes per key:
    what the rest of the copy adds, against maxmemory. `backfill --dry-run` samples
    MEMORY USAGE for a closer projection."""
    limit = ctx.t("memory_headroom")
    threshold = f"used + projected copy < {pct(limit)} of maxmemory"
    try:
        mems = ctx.redis_call("memories", _memories)
        census = ctx.redis_call("census", last_census)
    except SourceError as exc:
        return _r("memory_headroom", UNKNOWN, "-", threshold, str(exc))
    if mems is None:
        return _r("memory_headroom", UNKNOWN, "-", threshold, "server reports no INFO memory")
    if census is None:
        return _r("memory_headroom", WAIT, "no census", threshold,
                  "run `relayctl census`: the projection needs the legacy count")
    to_copy = max(census.old - census.new, 0)
    keys = sum(m.keys for m in mems)
    if not keys and to_copy:
        return _r("memory_headroom", UNKNOWN, "-", threshold,
                  "INFO keyspace reports no keys, so the bytes per record are unknown")
    per_key = sum(m.dataset for m in mems) / (keys or 1)
    projected = to_copy * per_key
    limited = [m for m in mems if m.maxmemory]
    if not limited:
        return _r("memory_headroom", PASS, "no maxmemory", threshold,
                  f"projected copy {_mib(projected)} ({to_copy:,} records); the server has "
                  "no memory limit to run into")
    share_of = {m.name: m.keys / keys for m in mems}  # the copy spreads like the keys do
    worst = max(limited, key=lambda m: (m.used + projected * share_of[m.name]) / m.maxmemory)
    after = worst.used + projected * share_of[worst.name]
    share = after / worst.maxmemory
    return _r("memory_headroom", PASS if share < limit else FAIL, pct(share), threshold,
              f"{worst.name}: used {_mib(worst.used)} + projected "
              f"{_mib(projected * share_of[worst.name])} of {_mib(worst.maxmemory)} "
              f"({to_copy:,} legacy records without a copy, ~{per_key:,.0f} B each)")


@gate("eviction_policy_safe", "maxmemory-policy cannot evict a job")
def _eviction_policy_safe(ctx: GateContext) -> GateResult:
    threshold = "noeviction, or volatile-* while no key has a TTL"
    try:
        mems = ctx.redis_call("memories", _memories)
    except SourceError as exc:
        return _r("eviction_policy_safe", UNKNOWN, "-", threshold, str(exc))
    if mems is None:
        return _r("eviction_policy_safe", UNKNOWN, "-", threshold,
                  "server reports no INFO memory")
    for m in mems:
        if m.policy in EVICTING_ALWAYS:
            return _r("eviction_policy_safe", FAIL, m.policy, threshold,
                      f"{m.name}: evicts any key, jobs included; set noeviction")
        if m.policy in EVICTING_TTL and m.expires:
            return _r("eviction_policy_safe", FAIL, m.policy, threshold,
                      f"{m.name}: {m.expires:,} keys have a TTL (jobs may) and can be "
                      "evicted; set noeviction")
    return _r("eviction_policy_safe", PASS, ",".join(sorted({m.policy for m in mems})),
              threshold)


@gate("no_evictions_since_phase", "No key evicted since the phase was applied")
def _no_evictions_since_phase(ctx: GateContext) -> GateResult:
    threshold = "evicted_keys unchanged since apply"
    try:
        info = ctx.redis_call("memory", memory_info)
    except SourceError as exc:
        return _r("no_evictions_since_phase", UNKNOWN, "-", threshold, str(exc))
    if info is None:
        return _r("no_evictions_since_phase", UNKNOWN, "-", threshold,
                  "server reports no INFO stats")
    evicted = info["evicted"]
    if ctx.baseline_evicted is None:
        return _r("no_evictions_since_phase", WAIT, f"{evicted} evicted", threshold,
                  "no baseline yet: `relayctl checklist apply` records one")
    since = evicted - ctx.baseline_evicted
    return _r("no_evictions_since_phase", PASS if since <= 0 else FAIL, f"{max(since, 0)} keys",
              threshold, f"evicted_keys {evicted} vs {ctx.baseline_evicted} at apply"
              + ("" if since <= 0 else ": jobs may be lost, verify before going on"))


def _replication(client: redis.Redis) -> list[dict[str, Any]]:
    from relayctl.core import cluster as clusterlib

    if not clusterlib.is_cluster(client):
        return [dict(client.info("replication"))]
    found = clusterlib.shards(client)
    try:
        return [{**sh.client.info("replication"), "_shard": sh.name} for sh in found]
    finally:
        clusterlib.close_shards(found, client)


@gate("replicas_in_sync", "Every replica online and keeping up")
def _replicas_in_sync(ctx: GateContext) -> GateResult:
    lag_limit = ctx.t("replica_lag_s")
    threshold = f"every replica online, last ack < {lag_limit:g}s"
    try:
        infos = ctx.redis_call("replication", _replication)
    except SourceError as exc:
        return _r("replicas_in_sync", UNKNOWN, "-", threshold, str(exc))
    count = 0
    for info in infos:
        where = f"shard {info['_shard']}: " if "_shard" in info else ""
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        for rep in replicas:
            count += 1
            name = f"{rep.get('ip')}:{rep.get('port')}"
            if rep.get("state") != "online":
                return _r("replicas_in_sync", FAIL, rep.get("state", "?"), threshold,
                          f"{where}replica {name} is {rep.get('state')}")
            lag = float(rep.get("lag", 0) or 0)
            if lag >= lag_limit:
                behind = int(info.get("master_repl_offset", 0)) - int(rep.get("offset", 0))
                return _r("replicas_in_sync", FAIL, f"{lag:g}s", threshold,
                          f"{where}replica {name} last acked {lag:g}s ago, {behind} bytes "
                          "behind")
    if count == 0:
        return _r("replicas_in_sync", PASS, "no replicas", threshold)
    return _r("replicas_in_sync", PASS, f"{count} in sync", threshold)


__all__ = ["FAIL", "PASS", "UNKNOWN", "WAIT"]
