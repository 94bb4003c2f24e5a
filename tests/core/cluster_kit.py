"""Helpers of the census / verify / archive tests on the session's real Redis Cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from redis.cluster import RedisCluster

from relayctl.core.cluster import close_shards, key_slot, shards
from relayctl.core.connection import connect
from relayctl.core.keys import KeySchema

# The seed's templates: a legacy key, its copy and the index land in unrelated slots.
SEED = KeySchema()
# Hash-tagged: a copy and its workspace index share a slot (one script can write both).
TAGGED = KeySchema(new_job="ai:job:{<ws>}:<job_id>", index="ai:jobidx:{<ws>}",
                   idempotency="ai:idempotency:{<ws>}:<request_id>")
SCHEMAS = {"seed": SEED, "tagged": TAGGED}


def cluster_client(url: str) -> RedisCluster:
    client = connect(url)
    assert isinstance(client, RedisCluster), type(client)
    return client


def node_of(client: RedisCluster, key: str) -> str:
    """Address of the primary serving the key's slot."""
    return client.nodes_manager.get_node_from_slot(key_slot(key)).name


def primary_addresses(client: RedisCluster) -> set[str]:
    found = shards(client)
    close_shards(found, client)
    return {s.address for s in found}


def spread(client: RedisCluster, keys: Iterable[str]) -> Counter:
    """How many of the keys each primary serves."""
    return Counter(node_of(client, k) for k in keys)


def legacy_state(client: RedisCluster, schema: KeySchema) -> dict[bytes, tuple[bytes, int]]:
    """DUMP and PTTL of every legacy key, read on every primary with bytes clients."""
    found = shards(client, decode_responses=False)
    try:
        out: dict[bytes, tuple[bytes, int]] = {}
        for shard in found:
            for key in shard.client.scan_iter(match=schema.old_pattern.encode(), count=1000):
                out[key] = (shard.client.dump(key), shard.client.pttl(key))
        return out
    finally:
        close_shards(found, client)


def dump_of(client: RedisCluster, key: str) -> bytes | None:
    """DUMP of one key through a bytes client of the primary that serves it."""
    found = shards(client, decode_responses=False)
    try:
        shard = next(s for s in found if s.address == node_of(client, key))
        return shard.client.dump(key)
    finally:
        close_shards(found, client)
