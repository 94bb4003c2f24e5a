"""The audit stream: every operator action with actor, target, before, after and reason."""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from relayctl.core.keys import AUDIT_KEY
from relayctl.core.replies import as_str, as_str_dict, stream_fields

AUDIT_MAXLEN = 100_000


def default_actor() -> str:
    """RELAYCTL_ACTOR, else the login name."""
    actor = os.environ.get("RELAYCTL_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@dataclass(frozen=True)
class AuditEntry:
    id: str
    ts: float
    actor: str
    action: str
    target: str
    before: str
    after: str
    reason: str

    @classmethod
    def from_stream(cls, entry_id: str, fields: dict[str, str]) -> AuditEntry:
        return cls(
            id=entry_id,
            ts=float(fields.get("ts", 0) or 0),
            actor=fields.get("actor", ""),
            action=fields.get("action", ""),
            target=fields.get("target", ""),
            before=fields.get("before", ""),
            after=fields.get("after", ""),
            reason=fields.get("reason", ""),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "ts": self.ts, "actor": self.actor, "action": self.action,
            "target": self.target, "before": self.before, "after": self.after,
            "reason": self.reason,
        }


def audit_fields(
    actor: str, action: str, target: str, before: str, after: str, reason: str,
    ts: float | None = None,
) -> dict[str, str]:
    return {
        "ts": f"{time.time() if ts is None else ts:.3f}",
        "actor": actor,
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "reason": reason,
    }


def record(
    client: redis.Redis, actor: str, action: str, target: str, before: str, after: str,
    reason: str,
) -> str:
    """Append one audit entry (for actions that are not already a scripted write)."""
    return as_str(client.xadd(
        AUDIT_KEY, stream_fields(audit_fields(actor, action, target, before, after, reason)),
        maxlen=AUDIT_MAXLEN, approximate=True,
    ))


def recent(client: redis.Redis, count: int = 50) -> list[AuditEntry]:
    """The newest entries first; one XREVRANGE, bounded by count."""
    rows = client.xrevrange(AUDIT_KEY, count=count) or []
    return [AuditEntry.from_stream(as_str(i), as_str_dict(f)) for i, f in rows]


def write_audited(
    client: redis.Redis, entries: list[dict[str, str]], write: Callable[[Any], None],
) -> None:
    """Apply `write` (commands queued on a pipeline) and append `entries` to the audit stream.

    Standalone: one MULTI/EXEC, so the change and its entries land together or not at all.
    Cluster: relay:audit and the written keys live in different slots, so the entries are
    appended first and the change follows; a crash in between leaves an entry for a change
    that did not happen (visible, re-doable), never a change without its entry.
    """
    from relayctl.core.cluster import is_cluster

    if not is_cluster(client):
        pipe = client.pipeline(transaction=True)
        write(pipe)
        for entry in entries:
            pipe.xadd(AUDIT_KEY, stream_fields(entry), maxlen=AUDIT_MAXLEN, approximate=True)
        pipe.execute()
        return
    if entries:
        pipe = client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(AUDIT_KEY, stream_fields(entry), maxlen=AUDIT_MAXLEN, approximate=True)
        pipe.execute()
    pipe = client.pipeline(transaction=False)
    write(pipe)
    pipe.execute()
