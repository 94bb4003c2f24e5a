"""Gates that the server can carry the migration (issue 12): dual-write doubles the job
data in phase 3 and the backfill finishes the copy in phase 4, so before each the memory
headroom, an eviction policy that cannot delete a job, no evictions since the phase began,
and replicas keeping up."""

from __future__ import annotations

from typing import Any

import redis

from relayctl.core.backfill.capacity import EVICTING_ALWAYS, EVICTING_TTL, Projection, project
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
from relayctl.core.scrape import SourceError
from relayctl.core.serverinfo import memory_info


def _projection(ctx: GateContext) -> Projection:
    return ctx.redis_call("projection", lambda c: project(
        c, ctx.schema, frozenset(), max_memory_pct=100 * ctx.t("memory_headroom")))


def _mib(n: float) -> str:
    return f"{n / 1048576:,.1f} MiB"


@gate("memory_headroom", "Memory after the copy stays below 85% of maxmemory")
def _memory_headroom(ctx: GateContext) -> GateResult:
    limit = ctx.t("memory_headroom")
    threshold = f"used + projected copy < {pct(limit)} of maxmemory"
    try:
        proj = _projection(ctx)
    except SourceError as exc:
        return _r("memory_headroom", UNKNOWN, "-", threshold, str(exc))
    if not all(s.info for s in proj.servers):
        return _r("memory_headroom", UNKNOWN, "-", threshold, "server reports no INFO memory")
    unknown = [s for s in proj.servers if s.note]
    if unknown:
        return _r("memory_headroom", UNKNOWN, "-", threshold, f"{unknown[0].name}: "
                  f"{unknown[0].note}")
    limited = [s for s in proj.servers if s.maxmemory]
    if not limited:
        return _r("memory_headroom", PASS, "no maxmemory", threshold,
                  f"projected copy {_mib(sum(s.projected for s in proj.servers))}; "
                  "the server has no memory limit to run into")
    worst = max(limited, key=lambda s: s.after / s.maxmemory)
    share = worst.after / worst.maxmemory
    return _r("memory_headroom", PASS if share < limit else FAIL, pct(share), threshold,
              f"{worst.name}: used {_mib(worst.used)} + projected {_mib(worst.projected)} "
              f"of {_mib(worst.maxmemory)} (sample {worst.sampled})")


@gate("eviction_policy_safe", "maxmemory-policy cannot evict a job")
def _eviction_policy_safe(ctx: GateContext) -> GateResult:
    threshold = "noeviction, or volatile-* while no job key has a TTL"
    try:
        proj = _projection(ctx)
    except SourceError as exc:
        return _r("eviction_policy_safe", UNKNOWN, "-", threshold, str(exc))
    if not all(s.info for s in proj.servers):
        return _r("eviction_policy_safe", UNKNOWN, "-", threshold,
                  "server reports no INFO memory")
    for s in proj.servers:
        if s.policy in EVICTING_ALWAYS:
            return _r("eviction_policy_safe", FAIL, s.policy, threshold,
                      f"{s.name}: evicts any key, jobs included; set noeviction")
        if s.policy in EVICTING_TTL and s.ttl_sampled:
            return _r("eviction_policy_safe", FAIL, s.policy, threshold,
                      f"{s.name}: {s.ttl_sampled} sampled job keys have a TTL and can be "
                      "evicted; set noeviction")
    return _r("eviction_policy_safe", PASS, ",".join(sorted({s.policy for s in proj.servers})),
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
