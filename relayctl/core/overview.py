"""What `relayctl status`, `relayctl flags` and the console show, read the same way.

One bounded read (no SCAN, nothing that grows with the keyspace): flags with who changed
them, the fleet, backfill, census, verify, memory, the audit tail, the checklist and the
current phase's gates and rollback triggers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from relayctl.core import audit, fleet
from relayctl.core.backfill import BackfillKeys
from relayctl.core.census import Census, parse_census
from relayctl.core.checklist import ChecklistState, parse_checklist
from relayctl.core.evaluation import GateConfig, gate_context
from relayctl.core.flags import DEFAULTS, FLAG_NAMES, stored_flags, word
from relayctl.core.formatting import iso
from relayctl.core.gates import GateResult, evaluate
from relayctl.core.keys import AUDIT_KEY, CENSUS_KEY, CHECKLIST_KEY, VERIFY_KEY
from relayctl.core.phases import LAST_PHASE, phase
from relayctl.core.serverinfo import memory_info
from relayctl.core.verify import parse_verify

AUDIT_ROWS = 30
FLAG_AUDIT_SCAN = 500  # audit entries searched for each flag's last change


@dataclass
class FlagRow:
    """One flag: stored value (None: unset, the default applies), its last audited change,
    and how many live instances run with it."""

    name: str
    value: bool
    stored: bool | None
    actor: str = ""
    ts: float = 0.0
    reason: str = ""
    agree: int = 0
    pinned: list[str] = field(default_factory=list)
    here: bool | None = None
    pinned_here: bool = False

    def as_dict(self) -> dict[str, Any]:
        changed = bool(self.actor or self.ts)
        return {
            "flag": self.name,
            "stored": word(self.stored) if self.stored is not None else None,
            "default": word(DEFAULTS[self.name]),
            "effective_here": word(self.value if self.here is None else self.here),
            "pinned_here": self.pinned_here,
            "changed_by": self.actor if changed else None,
            "changed_at": iso(self.ts) if changed else None,
            "reason": self.reason if changed else None,
            "fleet_agree": self.agree,
            "fleet_pinned": list(self.pinned),
        }


def flag_rows(client: redis.Redis, instances: list[fleet.Instance],
              pins: Mapping[str, bool] | None = None,
              scan: int = FLAG_AUDIT_SCAN) -> list[FlagRow]:
    """The three flags with their last `flag.set` entry among the newest `scan` entries;
    `pins` are this process's environment pins (what `effective_here` reports)."""
    pins = pins or {}
    stored = stored_flags(client)
    last: dict[str, audit.AuditEntry] = {}
    for entry in reversed(audit.recent(client, scan)):
        if entry.action == "flag.set":
            last[entry.target] = entry
    rows = []
    for name in FLAG_NAMES:
        value = stored.get(name, DEFAULTS[name])
        e = last.get(name)
        rows.append(FlagRow(
            name=name, value=value, stored=stored.get(name),
            actor=e.actor if e else "", ts=e.ts if e else 0.0, reason=e.reason if e else "",
            agree=sum(1 for i in instances if i.flags.get(name) == word(value)),
            pinned=[i.instance for i in instances if name in i.pinned],
            here=pins.get(name, value), pinned_here=name in pins,
        ))
    return rows


@dataclass
class Overview:
    """The current state of the rollout, as of one read."""

    flags: list[FlagRow]
    instances: list[fleet.Instance]
    backfill: dict[str, str]
    engine_alive: bool
    census: Census | None
    verify: dict[str, Any] | None
    memory: dict[str, int]
    audit: list[audit.AuditEntry]
    checklist: ChecklistState
    gates: list[GateResult]
    triggers: list[GateResult]

    @property
    def phase_number(self) -> int:
        return min(self.checklist.phase, LAST_PHASE)


def read_overview(client: redis.Redis, gates: GateConfig, *,
                  now: Callable[[], float] = time.time, shared: dict[str, Any] | None = None,
                  backfill_keys: BackfillKeys | None = None) -> Overview:
    """One read of everything status and the console show; the gates reuse what it read.

    `shared` carries a /metrics scrape the caller already made (see GateContext.shared).
    """
    bk = backfill_keys or BackfillKeys()
    instances = fleet.live_instances(client, now=time.time())
    flags = flag_rows(client, instances)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(bk.state)
    pipe.exists(bk.lease)
    pipe.xrevrange(AUDIT_KEY, count=AUDIT_ROWS)
    pipe.hgetall(CENSUS_KEY)
    pipe.hgetall(VERIFY_KEY)
    pipe.hgetall(CHECKLIST_KEY)
    bf, lease, rows, census_raw, verify_raw, checklist_raw = pipe.execute()
    view = Overview(
        flags=flags, instances=instances, backfill=bf, engine_alive=bool(lease),
        census=parse_census(census_raw), verify=parse_verify(verify_raw),
        memory=memory_info(client) or {},
        audit=[audit.AuditEntry.from_stream(i, f) for i, f in rows],
        checklist=parse_checklist(checklist_raw), gates=[], triggers=[])
    number = view.phase_number
    ctx = gate_context(gates, client, view.checklist, number, now=now, shared=shared)
    ctx._cache.update({"census": view.census, "verify": view.verify, "backfill": bf,
                       "fleet": instances, "memory": view.memory or None})
    view.gates = evaluate(ctx, phase(number).gates)
    view.triggers = evaluate(ctx, phase(number).trigger_gates)
    return view


def deployment(client: redis.Redis) -> dict[str, Any]:
    """Standalone, or the cluster's shards (named by first slot) with primary and slots."""
    from relayctl.core.cluster import close_shards, is_cluster, shards

    if not is_cluster(client):
        return {"kind": "standalone", "shards": []}
    found = shards(client)
    close_shards(found, client)
    return {"kind": "cluster", "shards": [{"name": s.name, "primary": s.address,
                                           "slots": s.slots} for s in found]}
