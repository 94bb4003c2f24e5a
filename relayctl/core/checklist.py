"""The shared walkthrough: current phase, checked-off items, baselines, overrides, rollbacks.

State lives in relay:checklist. Every write is compare-and-set on the phase the operator saw
and goes with its audit entries: one script standalone (phase check, write and entries
together or not at all); on a cluster, where relay:audit lives in another slot, the entries
first, then the script on relay:checklist (a refusal appends a `<action>.refused` entry).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from relayctl.core import audit
from relayctl.core.backfill import send_control
from relayctl.core.cluster import is_cluster
from relayctl.core.errors import UsageError
from relayctl.core.flags import FlagChange, set_flag
from relayctl.core.gates import PASS, GateContext, GateResult, evaluate_phase
from relayctl.core.keys import AUDIT_KEY, CHECKLIST_KEY
from relayctl.core.phases import LAST_PHASE, PROCEDURES, Phase, find_item, phase
from relayctl.core.replies import as_str_dict
from relayctl.core.scrape import Snapshot, SourceError, scrape
from relayctl.core.serverinfo import memory_info

# KEYS: checklist [, audit]  (the audit stream only where it may share the script: standalone)
# ARGV: seen_phase, audit_maxlen, n_fields, field, value, ... (n_fields pairs), then for each
#       audit entry: n_pairs, key, value, ...
# Returns {1} after writing everything, or {0, phase, by, at} without writing anything when
# the stored phase is not seen_phase (a phase that is not a plain number reads as 0).
CHECKLIST_CAS = """
local raw = redis.call('HGET', KEYS[1], 'phase')
local now = '0'
if raw and string.match(raw, '^[0-9]+$') then now = tostring(tonumber(raw)) end
if now ~= ARGV[1] then
  local who = redis.call('HMGET', KEYS[1], 'phase:by', 'phase:at')
  return {0, now, who[1] or '', who[2] or ''}
end
local n = tonumber(ARGV[3])
local i = 4
if n > 0 then
  local fields = {}
  for j = i, i + 2 * n - 1 do fields[#fields + 1] = ARGV[j] end
  redis.call('HSET', KEYS[1], unpack(fields))
end
i = i + 2 * n
while i <= #ARGV do
  local pairs_n = tonumber(ARGV[i])
  local entry = {}
  for j = i + 1, i + 2 * pairs_n do entry[#entry + 1] = ARGV[j] end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
  i = i + 1 + 2 * pairs_n
end
return {1}
"""


@dataclass
class ChecklistState:
    phase: int = 0
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: dict[int, float] = field(default_factory=dict)
    baselines: dict[int, Snapshot] = field(default_factory=dict)
    memory: dict[int, int] = field(default_factory=dict)
    evicted: dict[int, int] = field(default_factory=dict)  # evicted_keys when applied

    @property
    def complete(self) -> bool:
        return self.phase > LAST_PHASE

    def done(self, item_id: str) -> bool:
        return self.items.get(item_id, {}).get("state") == "done"

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "complete": self.complete, "items": self.items,
                "applied": {str(k): v for k, v in self.applied.items()}}


def read_checklist(client: redis.Redis) -> ChecklistState:
    return parse_checklist(as_str_dict(client.hgetall(CHECKLIST_KEY)))


def parse_checklist(raw: dict[str, str]) -> ChecklistState:
    """The relay:checklist hash as a ChecklistState (defaults for what is missing)."""
    state = ChecklistState()
    try:
        state.phase = int(raw.get("phase", 0))
    except ValueError:
        state.phase = 0
    for key, value in raw.items():
        kind, _, rest = key.partition(":")
        try:
            if kind == "item":
                state.items[rest] = json.loads(value)
            elif kind == "applied":
                state.applied[int(rest)] = float(value)
            elif kind == "baseline":
                state.baselines[int(rest)] = Snapshot.from_json(value)
            elif kind == "memory":
                state.memory[int(rest)] = int(value)
            elif kind == "evicted":
                state.evicted[int(rest)] = int(value)
        except (ValueError, TypeError):
            continue
    return state


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _stamp(at: str) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(at)))
    except (ValueError, OverflowError):
        return "an unknown time"


def _write(client: redis.Redis, seen_phase: int, fields: dict[str, str],
           entries: list[dict[str, str]]) -> None:
    """Write `fields` and `entries` only if the phase is still `seen_phase`; otherwise
    nothing is written and the loser gets UsageError `phase is now M (advanced by X at T)`."""
    cluster = is_cluster(client)
    args: list[str] = [str(seen_phase), str(audit.AUDIT_MAXLEN), str(len(fields))]
    for key, value in fields.items():
        args += [key, value]
    if cluster:
        audit.write_audited(client, entries, lambda pipe: None)  # entries first (see module)
        keys = [CHECKLIST_KEY]
    else:
        keys = [CHECKLIST_KEY, AUDIT_KEY]
        for entry in entries:
            args.append(str(len(entry)))
            for key, value in entry.items():
                args += [key, value]
    reply = client.eval(CHECKLIST_CAS, len(keys), *keys, *args)
    if int(reply[0]) == 1:
        return
    now, by, at = (_text(v) for v in reply[1:4])
    if cluster:
        for entry in entries:
            audit.record(client, entry["actor"], entry["action"] + ".refused", entry["target"],
                         entry["before"], entry["after"], f"phase is now {now}")
    raise UsageError(f"phase is now {now} (advanced by {by or 'an unknown actor'} at "
                     f"{_stamp(at) if at else 'an unknown time'}); you saw phase {seen_phase}"
                     ": nothing was written, check the checklist and run it again")


def mark(client: redis.Redis, item_ids: list[str], *, actor: str, reason: str = "",
         undo: bool = False, now: float | None = None,
         seen_phase: int | None = None) -> list[str]:
    """Check off (or re-open) manual items; gate-backed items are not marked by hand.
    Written only while the phase is still `seen_phase` (default: as read now)."""
    seen = read_checklist(client).phase if seen_phase is None else seen_phase
    ts = time.time() if now is None else now
    fields: dict[str, str] = {}
    for item_id in item_ids:
        found = find_item(item_id)
        if found is None:
            raise UsageError(f"unknown checklist item {item_id!r} (see `relayctl checklist show`)")
        if not found[1].manual:
            raise UsageError(f"item {item_id!r} is checked by gate {found[1].gate}, not by hand")
        fields[f"item:{item_id}"] = json.dumps(
            {"state": "open" if undo else "done", "actor": actor, "ts": ts})
    state = "open" if undo else "done"
    _write(client, seen, fields, [audit.audit_fields(
        actor, "checklist.mark", ",".join(item_ids), "", state, reason, ts)])
    return item_ids


def apply(client: redis.Redis, *, actor: str, reason: str, metrics_urls: list[str],
          now: float | None = None, seen_phase: int | None = None,
          ) -> tuple[Phase, list[FlagChange]]:
    """Set the current phase's target flags (each audited) and record the gate baselines;
    refused, with nothing written, once the phase is no longer `seen_phase`."""
    if not reason.strip():
        raise UsageError("a reason is required to apply a phase")
    state = read_checklist(client)
    if seen_phase is not None and seen_phase != state.phase:
        _write(client, seen_phase, {}, [])  # raises with who moved it
    if state.complete:
        raise UsageError("the rollout is complete; nothing to apply")
    current = phase(state.phase)
    ts = time.time() if now is None else now
    baseline: Snapshot | None = None
    if metrics_urls:
        try:
            baseline = scrape(metrics_urls)
        except SourceError:
            baseline = None
    memory = memory_info(client)
    fields = {f"applied:{current.number}": f"{ts:.3f}"}
    if memory is not None:
        fields[f"memory:{current.number}"] = str(memory["used"])
        fields[f"evicted:{current.number}"] = str(memory["evicted"])
    if baseline is not None:
        fields[f"baseline:{current.number}"] = baseline.to_json()
    _write(client, state.phase, fields, [audit.audit_fields(
        actor, "checklist.apply", f"phase {current.number}", "",
        json.dumps({k: v for k, v in (current.target_flags or {}).items()}), reason, ts)])
    changes = [set_flag(client, name, value, actor=actor, now=ts,
                        reason=f"phase {current.number}: {reason}")
               for name, value in (current.target_flags or {}).items()]
    return current, changes


@dataclass
class AdvanceResult:
    advanced: bool
    phase_from: int
    phase_to: int
    gates: list[GateResult]
    blocking: list[str]
    open_items: list[str]
    overridden: list[str]


def advance(client: redis.Redis, ctx: GateContext, *, actor: str,
            overrides: dict[str, str], now: Callable[[], float] = time.time,
            seen_phase: int | None = None, reason: str = "") -> AdvanceResult:
    """Move to the next phase only when every gate passes (or is overridden with a reason)
    and every manual item is checked off, and only from the phase the operator saw
    (`seen_phase`, default: as read here): of two concurrent advances one wins, a stale one
    never moves the phase back. `reason` is the operator's, kept in the audit."""
    state = read_checklist(client)
    if seen_phase is not None and seen_phase != state.phase:
        _write(client, seen_phase, {}, [])  # raises with who moved it
    if state.complete:
        raise UsageError("the rollout is already complete")
    current = phase(state.phase)
    for gid, reason in overrides.items():
        if gid not in current.gates:
            raise UsageError(f"gate {gid!r} is not a gate of phase {current.number}")
        if not reason.strip():
            raise UsageError(f"overriding gate {gid!r} needs a reason")
    results = evaluate_phase(ctx, current)
    blocking = [r.gate for r in results if r.status != PASS and r.gate not in overrides]
    open_items = [i.id for i in current.prerequisites + current.validation
                  if i.manual and not state.done(i.id)]
    result = AdvanceResult(False, current.number, current.number, results, blocking,
                           open_items, [g for g in overrides if g in current.gates])
    if blocking or open_items:
        return result
    ts = now()
    nxt = current.number + 1
    entries = [audit.audit_fields(actor, "gate.override", f"phase {current.number}/{r.gate}",
                                  r.status, PASS, overrides[r.gate], ts)
               for r in results if r.gate in overrides]
    entries.append(audit.audit_fields(
        actor, "checklist.advance", "phase", str(current.number), str(nxt),
        "; ".join(f"{g}: {why}" for g, why in overrides.items())
        or (f"{reason.strip()} (all gates pass)" if reason.strip() else "all gates pass"), ts))
    _write(client, current.number,
           {"phase": str(nxt), "phase:by": actor, "phase:at": f"{ts:.3f}"}, entries)
    result.advanced = True
    result.phase_to = nxt
    return result


@dataclass
class RollbackResult:
    procedure: str
    changes: list[FlagChange]
    backfill_stopped: bool
    steps: tuple[str, ...]


def rollback(client: redis.Redis, procedure_id: str, *, actor: str,
             reason: str, now: float | None = None,
             seen_phase: int | None = None) -> RollbackResult:
    """Apply a documented rollback procedure's flag changes (each audited). With
    `seen_phase`, refused before any change once the phase is no longer the one the operator
    saw (the flags are written by flags.set_flag, so the check precedes them)."""
    proc = PROCEDURES.get(procedure_id)
    if proc is None:
        raise UsageError(f"unknown rollback procedure {procedure_id!r}: expected one of "
                         f"{', '.join(PROCEDURES)}")
    if not reason.strip():
        raise UsageError("a reason is required for a rollback")
    if seen_phase is not None and read_checklist(client).phase != seen_phase:
        _write(client, seen_phase, {}, [])  # raises with who moved it
    stopped = False
    if proc.stop_backfill:
        try:
            send_control(client, "stop", actor=actor, reason=f"rollback {proc.id}: {reason}")
            stopped = True
        except UsageError:
            stopped = False
    changes = [set_flag(client, name, value, actor=actor, now=now,
                        reason=f"rollback {proc.id}: {reason}")
               for name, value in proc.flags.items()]
    # recorded after the changes it summarises, so a failed change leaves no false entry
    audit.record(client, actor, "rollback", proc.id, "", json.dumps(
        {k: v for k, v in proc.flags.items()}), reason)
    return RollbackResult(proc.id, changes, stopped, proc.steps)

