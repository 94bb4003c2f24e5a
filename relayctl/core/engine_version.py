"""What server is on the other end (Redis or Valkey, which version) and whether it has every
command relayctl needs: read once per client, refused before any write when it falls short."""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

import redis

from relayctl.core.errors import UsageError

# Commands relayctl cannot do without, and the Redis version that introduced each. Valkey
# (forked from Redis 7.2) has them all. A cluster backfill also copies absolute expiries.
STANDALONE_NEEDS = {"copy": (6, 2), "zmscore": (6, 2)}
CLUSTER_NEEDS = {**STANDALONE_NEEDS, "pexpiretime": (7, 0)}
MINIMUM = {"standalone": (6, 2), "cluster": (7, 0)}
_VERSION_RE = re.compile(r"^(?:(redis|valkey)[-: ]?)?(\d+)(?:\.(\d+))?(?:\.(\d+))?$", re.I)


@dataclass(frozen=True)
class ServerIdentity:
    """A server's name ("redis" / "valkey") and version, as its INFO server reports them."""

    name: str
    version: tuple[int, int, int]

    @property
    def label(self) -> str:
        return f"{'Valkey' if self.name == 'valkey' else 'Redis'} {self.version_text}"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def at_least(self, version: tuple[int, int]) -> bool:
        """Whether this server has what Redis `version` introduced (any Valkey has 7.2's)."""
        return self.name == "valkey" or self.version[:2] >= version

    @property
    def has_selectors(self) -> bool:
        """ACL read-only key patterns (`%R~`) and selectors came with Redis 7.0."""
        return self.at_least((7, 0))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version_text}


NEWEST = ServerIdentity("redis", (7, 0, 0))  # what `relayctl acl` assumes with no server


def parse_version(text: str) -> ServerIdentity:
    """`6.2`, `7.0.15`, `redis-6.2.14`, `valkey-9.1` -> ServerIdentity; else a usage error."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise UsageError(f"invalid server version {text!r}: expected e.g. 6.2, 7.0.15 or "
                         "valkey-9.1")
    name = (m.group(1) or "redis").lower()
    return ServerIdentity(name, (int(m.group(2)), int(m.group(3) or 0), int(m.group(4) or 0)))


def identity_from_info(info: dict[str, Any]) -> ServerIdentity:
    """Valkey names itself in INFO (`server_name`, `valkey_version`); Redis does not."""
    name = str(info.get("server_name") or "redis").lower()
    raw = str(info.get(f"{name}_version") or info.get("redis_version") or "0.0.0")
    parts = [int(p) if p.isdigit() else 0 for p in raw.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return ServerIdentity(name, (parts[0], parts[1], parts[2]))


_KNOWN: weakref.WeakKeyDictionary[Any, ServerIdentity | None] = weakref.WeakKeyDictionary()


def server_identity(client: Any) -> ServerIdentity | None:
    """The client's server, read once per client (INFO server); None if INFO is refused or
    absent. On a cluster: the lowest version among the primaries."""
    if client in _KNOWN:
        return _KNOWN[client]
    try:
        found = [identity_from_info(i) for i in _server_infos(client)]
    except redis.ResponseError:
        found = []
    ident = min(found, key=lambda i: i.version) if found else None
    _KNOWN[client] = ident
    return ident


def _server_infos(client: Any) -> list[dict[str, Any]]:
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        infos = client.info("server", target_nodes=RedisCluster.PRIMARIES)
        return list(infos.values()) if isinstance(infos, dict) and infos and all(
            isinstance(v, dict) for v in infos.values()) else [infos]
    return [client.info("server")]


def _present(client: Any, names: list[str]) -> dict[str, bool] | None:
    """Which of `names` the server knows (COMMAND INFO: nil for a renamed or absent command);
    None when COMMAND is refused or unsupported."""
    from redis.cluster import RedisCluster

    # "COMMAND INFO" as one name: redis-py's COMMAND reply parser fails on a nil entry
    try:
        if isinstance(client, RedisCluster):
            node = client.get_random_node()
            reply = client.get_redis_connection(node).execute_command("COMMAND INFO", *names)
        else:
            reply = client.execute_command("COMMAND INFO", *names)
    except redis.ResponseError:
        return None
    if isinstance(reply, list) and len(reply) == len(names):
        return {n: bool(v) for n, v in zip(names, reply, strict=True)}
    return None


def missing_commands(ident: ServerIdentity | None, present: dict[str, bool] | None,
                     cluster: bool) -> list[tuple[str, tuple[int, int]]]:
    """(command, Redis version that has it) for each needed command the server lacks."""
    needs = CLUSTER_NEEDS if cluster else STANDALONE_NEEDS
    out = []
    for name, since in needs.items():
        too_old = ident is not None and not ident.at_least(since)
        absent = present is not None and not present.get(name, True)
        if too_old or absent:
            out.append((name, since))
    return out


def require_commands(client: Any, display: str, *, cluster: bool) -> ServerIdentity | None:
    """Refuse (exit 2, one line) a server that lacks a command relayctl needs."""
    ident = server_identity(client)
    needs = CLUSTER_NEEDS if cluster else STANDALONE_NEEDS
    missing = missing_commands(ident, _present(client, list(needs)), cluster)
    if missing:
        name, since = missing[0]
        what = ident.label if ident else "the server"
        layout = "cluster" if cluster else "standalone"
        lowest = ".".join(map(str, MINIMUM[layout]))
        old = ident is not None and not ident.at_least(since)
        why = "" if old else " (renamed or disabled)"
        raise UsageError(
            f"{what} at {display} has no {name.upper()} command{why}: relayctl needs "
            f"{name.upper()} (Redis >= {since[0]}.{since[1]}; {layout} minimum Redis "
            f">= {lowest} or Valkey)")
    return ident
