"""Server memory figures for the console and the memory gate."""

from __future__ import annotations

import redis


def memory_info(client: redis.Redis) -> dict[str, int] | None:
    """used / maxmemory / evicted keys, or None when the server has no INFO (fakeredis)."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("stats")
        mem, stats = pipe.execute()
    except redis.ResponseError:
        return None
    return {"used": int(mem.get("used_memory", 0)), "maxmemory": int(mem.get("maxmemory", 0)),
            "evicted": int(stats.get("evicted_keys", 0))}
