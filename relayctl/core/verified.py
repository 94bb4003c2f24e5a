"""The one answer to "is this legacy job safely in the new schema?" (verify and archive delete).

Records are compared as field maps of bytes, never as DUMP payloads (a hashtable-encoded
hash dumps its fields in an order that changes across restarts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from relayctl.core.timestamps import iso_to_ms

Fields = dict[bytes, bytes]

# Kinds `verified` can answer, in the order they are checked.
REASONS = ("missing", "workspace_mismatch", "partial", "field_mismatch", "ttl_drift",
           "index_missing")

_RANK = {b"pending": 0, b"running": 1, b"completed": 2, b"failed": 2}


@dataclass(frozen=True)
class Record:
    """A hash's fields (None: no such key / not a hash) and its PTTL (-1 none, -2 absent)."""

    fields: Fields | None
    pttl: int = -1

    @property
    def exists(self) -> bool:
        return bool(self.fields)


def escape(name: bytes | str) -> str:
    """A key name for display: UTF-8 as is, other bytes as \\xNN."""
    if isinstance(name, str):
        return name
    return name.decode("utf-8", "backslashreplace")


def text(value: bytes | None) -> str | None:
    """Strict UTF-8 decoding of an identifier; None when absent or not UTF-8."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def score_of(fields: Fields) -> float:
    """The index score a record must have (the one timestamp contract, relayctl.core.jobs)."""
    raw = fields.get(b"enqueued_at")
    return float(iso_to_ms(raw.decode("utf-8", "replace") if raw is not None else None))


def ttl_ok(legacy_pttl: int, copy_pttl: int, tolerance_ms: float) -> bool:
    """The copy must not expire before its source (beyond the tolerance)."""
    if legacy_pttl < 0:
        return copy_pttl < 0  # a copy with a TTL whose source has none would vanish first
    if copy_pttl < 0:
        return True
    return copy_pttl >= legacy_pttl - tolerance_ms


def verified(legacy: Record, copy: Record, index: float | None, *, workspace_id: bytes,
             tolerance_s: float = 2.0) -> str | None:
    """None when the copy can stand in for the legacy record; else the first reason why not.

    `index` is the job's score in its workspace index (None: no entry).
    """
    assert legacy.fields is not None
    if not copy.exists:
        return "missing"
    c = copy.fields or {}
    ws = c.get(b"workspace_id")
    if ws is not None and ws != workspace_id:
        return "workspace_mismatch"
    if any(name not in c for name in legacy.fields):
        return "partial"
    if c != legacy.fields:
        return "field_mismatch"
    if not ttl_ok(legacy.pttl, copy.pttl, tolerance_s * 1000):
        return "ttl_drift"
    if index is None or float(index) != score_of(legacy.fields):
        return "index_missing"
    return None


def _stamp(fields: Fields, name: bytes) -> int | None:
    raw = fields.get(name)
    if not raw:
        return None
    ms = iso_to_ms(raw.decode("utf-8", "replace"))
    return ms if ms else None


def provably_newer(a: Fields, b: Fields) -> bool:
    """Whether record `a` is a later state of the job than `b` (status order, then times).

    pending < running < completed/failed; on an equal rank a later finished_at, then a later
    started_at. Anything else (unknown status, equal or missing times) is not proof.
    """
    ra, rb = _RANK.get(a.get(b"status", b"")), _RANK.get(b.get(b"status", b""))
    if ra is None or rb is None:
        return False
    if ra != rb:
        return ra > rb
    for name in (b"finished_at", b"started_at"):
        ta, tb = _stamp(a, name), _stamp(b, name)
        if ta is not None and tb is not None and ta != tb:
            return ta > tb
        if ta is not None and tb is None:
            return True
        if ta is None and tb is not None:
            return False
    return False


def content_digest(fields: Fields | None) -> str:
    """sha256 of a hash's field map, independent of field order ("" for no hash)."""
    if fields is None:
        return ""
    h = hashlib.sha256()
    for name in sorted(fields):
        value = fields[name]
        h.update(b"%d:" % len(name) + name + b"%d:" % len(value) + value)
    return h.hexdigest()
