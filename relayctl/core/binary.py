"""Bytes clients on the same server or cluster: DUMP payloads, key names and field values
are data, never decoded."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from relayctl.core.cluster import is_cluster


def binary_client(client: Any) -> Any:
    """A client on the same server (or cluster) that returns bytes: DUMP payloads are binary."""
    if is_cluster(client):
        return _binary_cluster(client)
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs["decode_responses"] = False
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class,
                                **kwargs)
    return redis.Redis(connection_pool=pool)


def _binary_cluster(client: Any) -> RedisCluster:
    """A bytes RedisCluster with the decoded one's nodes and settings (TLS, auth, timeouts).

    redis-py fixes decode_responses per client, so the cluster client cannot be switched.
    """
    manager = client.nodes_manager
    kwargs = {k: v for k, v in manager.connection_kwargs.items()
              if k not in ("db", "redis_connect_func")
              and not k.startswith(("maint_", "oss_cluster_", "orig_"))}
    kwargs["decode_responses"] = False
    nodes = [ClusterNode(n.host, n.port) for n in manager.startup_nodes.values()]
    return RedisCluster(startup_nodes=nodes, retry=client.retry,
                        address_remap=manager.address_remap, **kwargs)
