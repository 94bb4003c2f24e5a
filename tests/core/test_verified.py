"""The one predicate (relayctl.core.verified): pure logic over byte field maps."""

from __future__ import annotations

import pytest

from relayctl.core.jobs import iso_to_ms
from relayctl.core.verified import (
    Record,
    content_digest,
    escape,
    provably_newer,
    ttl_ok,
    verified,
)

L = {b"job_id": b"j", b"workspace_id": b"ws-a", b"status": b"running",
     b"enqueued_at": b"2024-05-01T10:00:00.123456+00:00", b"params": b"\xff\x00"}
SCORE = float(iso_to_ms("2024-05-01T10:00:00.123456+00:00"))


def check(copy: dict | None, *, legacy_ttl: int = -1, copy_ttl: int = -1,
          score: float | None = SCORE) -> str | None:
    return verified(Record(L, legacy_ttl), Record(copy, copy_ttl), score,
                    workspace_id=b"ws-a", tolerance_s=2.0)


@pytest.mark.parametrize("copy,kwargs,reason", [
    (dict(L), {}, None),
    (None, {}, "missing"),
    ({**L, b"workspace_id": b"ws-b"}, {}, "workspace_mismatch"),
    ({b"status": b"running"}, {}, "partial"),
    ({**L, b"params": b"\xff\x01"}, {}, "field_mismatch"),
    ({**L, b"error": b""}, {}, "field_mismatch"),
    (dict(L), {"copy_ttl": 3000}, "ttl_drift"),  # the source never expires
    (dict(L), {"legacy_ttl": 60_000, "copy_ttl": 57_000}, "ttl_drift"),
    (dict(L), {"legacy_ttl": 60_000, "copy_ttl": 58_500}, None),  # within 2 s
    (dict(L), {"legacy_ttl": 60_000, "copy_ttl": -1}, None),  # outlives its source
    (dict(L), {"score": None}, "index_missing"),
    (dict(L), {"score": SCORE + 1}, "index_missing"),
])
def test_verified_names_the_first_reason_a_copy_cannot_stand_in(copy, kwargs, reason):
    assert check(copy, **kwargs) == reason


def test_ttl_rule_is_not_shorter_than_the_source_beyond_the_tolerance():
    assert ttl_ok(-1, -1, 0) and not ttl_ok(-1, 10, 0)
    assert ttl_ok(100, 100, 0) and ttl_ok(100, -1, 0) and not ttl_ok(100, 99, 0)


@pytest.mark.parametrize("a,b,newer", [
    ({b"status": b"completed"}, {b"status": b"running"}, True),
    ({b"status": b"running"}, {b"status": b"pending"}, True),
    ({b"status": b"running"}, {b"status": b"completed"}, False),
    ({b"status": b"failed", b"finished_at": b"2024-01-01T00:00:02Z"},
     {b"status": b"completed", b"finished_at": b"2024-01-01T00:00:01Z"}, True),
    ({b"status": b"running", b"started_at": b"2024-01-01T00:00:02+00:00"},
     {b"status": b"running", b"started_at": b"2024-01-01T00:00:01+00:00"}, True),
    ({b"status": b"running"}, {b"status": b"running"}, False),
    ({b"status": b"queued"}, {b"status": b"pending"}, False),
    ({b"status": b"completed", b"finished_at": b"garbage"},
     {b"status": b"completed", b"finished_at": b"2024-01-01T00:00:01Z"}, False),
])
def test_provably_newer_follows_status_order_then_times(a, b, newer):
    assert provably_newer(a, b) is newer


def test_content_digest_ignores_field_order_and_sees_every_byte():
    a = {b"x": b"1", b"y": b"\xff"}
    assert content_digest(a) == content_digest(dict(reversed(list(a.items()))))
    assert content_digest(a) != content_digest({b"x": b"1", b"y": b"\xfe"})
    assert content_digest({b"ab": b"c"}) != content_digest({b"a": b"bc"})
    assert content_digest(None) == ""


def test_escape_shows_non_utf8_bytes_as_hex():
    assert escape(b"ai:jobs:\xff") == "ai:jobs:\\xff"
    assert escape("ai:jobs:ok") == "ai:jobs:ok"
