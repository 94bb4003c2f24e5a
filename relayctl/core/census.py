"""Key census: old keys, new keys and index entries counted in one streaming SCAN pass.

Key names are bytes: a name with a job-store prefix that is not UTF-8 is counted `invalid`
(reason encoding) and shown escaped. The walk restarts from cursor 0 when the server
answering changes (relayctl.core.scan), so the counts are of one server.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from relayctl.core.binary import binary_client
from relayctl.core.cluster import close_shards, dbsize, refresh_topology, shards
from relayctl.core.formatting import iso
from relayctl.core.keys import CENSUS_KEY, KeyClassifier, KeySchema
from relayctl.core.roundtrip import read_many
from relayctl.core.scan import RESTARTS, Walk, restarting
from relayctl.core.verified import escape

SCAN_COUNT = 5000
MAX_EXAMPLES = 20


@dataclass
class Census:
    old: int = 0
    new: int = 0
    index_keys: int = 0
    index_entries: int = 0
    other: int = 0
    scanned: int = 0
    duration_s: float = 0.0
    ts: float = 0.0
    by_workspace: dict[str, dict[str, int]] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=lambda: {"encoding": 0})
    invalid_examples: list[str] = field(default_factory=list)
    restarts: int = 0

    @property
    def keys_per_s(self) -> float:
        return self.scanned / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "old": self.old, "new": self.new, "index_keys": self.index_keys,
            "index_entries": self.index_entries, "other": self.other,
            "scanned": self.scanned, "duration_s": round(self.duration_s, 3),
            "keys_per_s": round(self.keys_per_s), "finished": iso(self.ts),
            "by_workspace": self.by_workspace, "invalid": dict(self.invalid),
            "invalid_examples": list(self.invalid_examples), "restarts": self.restarts,
        }


def run_census(
    client: redis.Redis,
    schema: KeySchema | None = None,
    *,
    by_workspace: bool = False,
    progress: Callable[[Census, float], None] | None = None,
    store: bool = True,
    restarts: int = RESTARTS,
    now: Callable[[], float] = time.time,
) -> Census:
    """SCAN the whole keyspace once (never KEYS), classify names, ZCARD each index key.

    Stores the result and its time in relay:census for the gates and the console. On a
    cluster every primary is scanned (the sum is the keyspace); relay:census is written after
    the scan, so `scanned` counts it only when a previous census had stored it.
    """
    kc = (schema or KeySchema()).classifier()
    t0 = time.perf_counter()
    total = max(dbsize(client), 1)
    bclient = binary_client(client)
    per_ws: dict[str, Counter[str]] = {}

    def attempt(n: int) -> Census:
        census = Census(restarts=n)
        per_ws.clear()
        if n:
            refresh_topology(client)
        found = shards(bclient)
        try:
            for shard in found:
                _census_shard(shard.client, kc, census, per_ws, by_workspace, progress, total)
        finally:
            close_shards(found, bclient)
        return census

    try:
        census = restarting(attempt, restarts=restarts)
    finally:
        bclient.close()
    census.duration_s = time.perf_counter() - t0
    census.ts = now()
    census.by_workspace = {ws: dict(c) for ws, c in sorted(per_ws.items())}
    if store:
        client.hset(CENSUS_KEY, mapping={
            "old": census.old, "new": census.new, "index_keys": census.index_keys,
            "index_entries": census.index_entries, "other": census.other,
            "scanned": census.scanned, "duration_s": f"{census.duration_s:.3f}",
            "ts": f"{census.ts:.3f}", "by_workspace": json.dumps(census.by_workspace),
            "invalid": json.dumps(census.invalid),
        })
    return census


def _census_shard(shard: redis.Redis, kc: KeyClassifier, census: Census,
                  per_ws: dict[str, Counter[str]], by_workspace: bool,
                  progress: Callable[[Census, float], None] | None, total: int) -> None:
    """SCAN one shard to its end; its index keys live there, so ZCARD goes to it too."""
    oh, ot, nh, nm, nt, ih, it = (x.encode() for x in (
        kc.old_head, kc.old_tail, kc.new_head, kc.new_mid, kc.new_tail, kc.idx_head,
        kc.idx_tail))
    ours = (oh, nh, ih)
    for keys in Walk(shard, count=SCAN_COUNT):
        census.scanned += len(keys)
        index_keys: list[tuple[bytes, str]] = []
        # Pattern semantics, like the MATCH patterns the engines scan with: a key counts
        # as old/new/index by its template's literal head and tail.
        for key in keys:
            try:
                key.decode("utf-8")
            except UnicodeDecodeError:
                if key.startswith(ours):
                    census.invalid["encoding"] += 1
                    if len(census.invalid_examples) < MAX_EXAMPLES:
                        census.invalid_examples.append(escape(key))
                else:
                    census.other += 1
                continue
            if key.startswith(oh) and (not ot or key.endswith(ot)):
                census.old += 1
            elif key.startswith(nh) and (not nt or key.endswith(nt)) and nm in key[len(nh):]:
                census.new += 1
                if by_workspace:
                    ws = key[len(nh):].partition(nm)[0].decode()
                    per_ws.setdefault(ws, Counter())["new"] += 1
            elif key.startswith(ih) and (not it or key.endswith(it)):
                index_keys.append((key, key[len(ih):len(key) - len(it)].decode()))
            else:
                census.other += 1
        if index_keys:
            cards = read_many(shard, [("ZCARD", k) for k, _ in index_keys])
            for (_key, ws), card in zip(index_keys, cards, strict=True):
                if isinstance(card, int):
                    census.index_keys += 1
                    census.index_entries += card
                    if by_workspace:
                        per_ws.setdefault(ws, Counter())["index_entries"] += card
                else:
                    census.other += 1
        if progress is not None:
            progress(census, min(census.scanned / total, 1.0))


def last_census(client: redis.Redis) -> Census | None:
    raw: Any = client.hgetall(CENSUS_KEY)
    return parse_census(raw)


def parse_census(raw: dict[str, str]) -> Census | None:
    """The stored relay:census hash, or None when absent or malformed."""
    if not raw:
        return None
    try:
        return Census(
            old=int(raw["old"]), new=int(raw["new"]), index_keys=int(raw["index_keys"]),
            index_entries=int(raw["index_entries"]), other=int(raw.get("other", 0)),
            scanned=int(raw.get("scanned", 0)), duration_s=float(raw.get("duration_s", 0)),
            ts=float(raw["ts"]), by_workspace=json.loads(raw.get("by_workspace") or "{}"),
            invalid=json.loads(raw.get("invalid") or '{"encoding": 0}'),
        )
    except (KeyError, ValueError):
        return None
