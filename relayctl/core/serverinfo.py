"""Server memory figures for the console and the memory gate."""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from relayctl.core.cluster import is_cluster


def memory_info(client: redis.Redis) -> dict[str, int] | None:
    """used / maxmemory / evicted keys, or None when the server has no INFO (fakeredis).

    On a cluster: the sums over every primary (each holds its own share of the jobs).
    """
    try:
        if is_cluster(client):
            mems = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            stats = client.info("stats", target_nodes=RedisCluster.PRIMARIES)
            return {"used": sum(int(m.get("used_memory", 0)) for m in mems.values()),
                    "maxmemory": sum(int(m.get("maxmemory", 0)) for m in mems.values()),
                    "evicted": sum(int(s.get("evicted_keys", 0)) for s in stats.values())}
        pipe = client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("stats")
        mem, stats = pipe.execute()
    except redis.ResponseError:
        return None
    return {"used": int(mem.get("used_memory", 0)), "maxmemory": int(mem.get("maxmemory", 0)),
            "evicted": int(stats.get("evicted_keys", 0))}
