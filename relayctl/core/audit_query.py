"""Reading the audit log back for `relayctl audit`: filters over a bounded, newest-first read."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from typing import Any

import redis

from relayctl.core.audit import AuditEntry
from relayctl.core.errors import UsageError
from relayctl.core.formatting import iso
from relayctl.core.keys import AUDIT_KEY
from relayctl.core.replies import as_str, as_str_dict

SCAN_LIMIT = 10_000  # entries read at most, newest first (the stream is capped anyway)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """`90m`, `2h`, `3d`, `1w` before `now`, or a UTC ISO time (2026-01-01T00:00:00Z)."""
    value = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    for form in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value, form)))
        except ValueError:
            continue
    raise UsageError(f"--since must be a duration (90m, 2h, 3d, 1w) or a UTC ISO time, "
                     f"not {text!r}")


@dataclass(frozen=True)
class AuditQuery:
    since: float | None = None
    actor: str | None = None
    action: str | None = None
    limit: int = 100


def query(client: redis.Redis, q: AuditQuery, scan: int = SCAN_LIMIT) -> list[AuditEntry]:
    """Matching entries, newest first: actor exact, action exact or a prefix ending in `.`
    (`backfill.` matches every backfill action)."""
    out: list[AuditEntry] = []
    last = "+"
    read = 0
    while len(out) < q.limit and read < scan:
        batch = [(as_str(i), as_str_dict(f)) for i, f in
                 client.xrevrange(AUDIT_KEY, max=last, count=min(500, scan - read)) or []]
        if last != "+" and batch and batch[0][0] == last:
            batch = batch[1:]
        if not batch:
            break
        for entry_id, fields in batch:
            e = AuditEntry.from_stream(entry_id, fields)
            if q.since is not None and e.ts < q.since:
                return out
            if q.actor and e.actor != q.actor:
                continue
            if q.action and not (e.action == q.action or (
                    q.action.endswith(".") and e.action.startswith(q.action))):
                continue
            out.append(e)
            if len(out) >= q.limit:
                break
        read += len(batch)
        last = batch[-1][0]
    return out


def entry_json(e: AuditEntry) -> dict[str, Any]:
    """The documented shape: time as an ISO string, every other field a string."""
    return {"id": e.id, "time": iso(e.ts), "actor": e.actor, "action": e.action,
            "target": e.target, "before": e.before, "after": e.after, "reason": e.reason}
