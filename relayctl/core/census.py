"""Key census: old keys, new keys and index entries counted in one streaming SCAN pass."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from relayctl.core.cluster import close_shards, dbsize, shards
from relayctl.core.keys import CENSUS_KEY, KeyClassifier, KeySchema
from relayctl.core.roundtrip import read_many

SCAN_COUNT = 5000


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

    @property
    def keys_per_s(self) -> float:
        return self.scanned / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "old": self.old, "new": self.new, "index_keys": self.index_keys,
            "index_entries": self.index_entries, "other": self.other,
            "scanned": self.scanned, "duration_s": round(self.duration_s, 3),
            "keys_per_s": round(self.keys_per_s), "ts": self.ts,
            "by_workspace": self.by_workspace,
        }


def run_census(
    client: redis.Redis,
    schema: KeySchema | None = None,
    *,
    by_workspace: bool = False,
    progress: Callable[[Census, float], None] | None = None,
    store: bool = True,
    now: Callable[[], float] = time.time,
) -> Census:
    """SCAN the whole keyspace once (never KEYS), classify names, ZCARD each index key.

    Stores the result and its time in relay:census for the gates and the console. On a
    cluster every primary is scanned (the sum is the keyspace); relay:census is written after
    the scan, so `scanned` counts it only when a previous census had stored it.
    """
    kc = (schema or KeySchema()).classifier()
    census = Census()
    per_ws: dict[str, Counter] = {}
    t0 = time.perf_counter()
    total = max(dbsize(client), 1)
    found = shards(client)
    try:
        for shard in found:
            _census_shard(shard.client, kc, census, per_ws, by_workspace, progress, total)
    finally:
        close_shards(found, client)
    census.duration_s = time.perf_counter() - t0
    census.ts = now()
    census.by_workspace = {ws: dict(c) for ws, c in sorted(per_ws.items())}
    if store:
        client.hset(CENSUS_KEY, mapping={
            "old": census.old, "new": census.new, "index_keys": census.index_keys,
            "index_entries": census.index_entries, "other": census.other,
            "scanned": census.scanned, "duration_s": f"{census.duration_s:.3f}",
            "ts": f"{census.ts:.3f}", "by_workspace": json.dumps(census.by_workspace),
        })
    return census


def _census_shard(shard: redis.Redis, kc: KeyClassifier, census: Census,
                  per_ws: dict[str, Counter], by_workspace: bool,
                  progress: Callable[[Census, float], None] | None, total: int) -> None:
    """SCAN one shard to its end; its index keys live there, so ZCARD goes to it too."""
    oh, ot, nh, nm, nt, ih, it = (kc.old_head, kc.old_tail, kc.new_head, kc.new_mid,
                                  kc.new_tail, kc.idx_head, kc.idx_tail)
    cursor = 0
    while True:
        cursor, keys = shard.scan(cursor, count=SCAN_COUNT)
        census.scanned += len(keys)
        index_keys: list[tuple[str, str]] = []
        # Pattern semantics, like the MATCH patterns the engines scan with: a key counts
        # as old/new/index by its template's literal head and tail.
        for key in keys:
            if key.startswith(oh) and (not ot or key.endswith(ot)):
                census.old += 1
            elif key.startswith(nh) and (not nt or key.endswith(nt)) and nm in key[len(nh):]:
                census.new += 1
                if by_workspace:
                    ws = key[len(nh):].partition(nm)[0]
                    per_ws.setdefault(ws, Counter())["new"] += 1
            elif key.startswith(ih) and (not it or key.endswith(it)):
                index_keys.append((key, key[len(ih):len(key) - len(it)]))
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
        if int(cursor) == 0:
            return


def last_census(client: redis.Redis) -> Census | None:
    return parse_census(client.hgetall(CENSUS_KEY))


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
        )
    except (KeyError, ValueError):
        return None
