"""verify_fresh and index_orphans gates over a real redis-server."""

from __future__ import annotations

import time

from relayctl.core.flags import FALLBACK_OLD, set_flag
from relayctl.core.gates import GATES, GateContext
from relayctl.core.keys import KeySchema
from relayctl.core.verify import run_verify
from relayctl.core.verify_gates import index_orphans, verify_fresh

SCHEMA = KeySchema()


def seed(r) -> None:
    for i in range(20):
        rec = {"job_id": f"j{i}", "workspace_id": "ws-a", "status": "pending",
               "enqueued_at": "2024-01-01T00:00:00Z"}
        r.hset(SCHEMA.old_key(f"j{i}"), mapping=rec)
        r.hset(SCHEMA.new_key("ws-a", f"j{i}"), mapping=rec)
        r.zadd(SCHEMA.index_key("ws-a"), {f"j{i}": 1704067200000})


def test_verify_fresh_waits_passes_goes_stale_and_fails(r):
    assert "verify_fresh" in GATES and "index_orphans" in GATES
    seed(r)
    assert verify_fresh(GateContext(client=r)).status == "WAIT"  # no verify yet
    run_verify(r, SCHEMA)
    assert verify_fresh(GateContext(client=r)).status == "PASS"
    set_flag(r, FALLBACK_OLD, False, actor="t", reason="x")
    stale = verify_fresh(GateContext(client=r))
    assert stale.status == "WAIT" and "flag changed" in stale.detail
    run_verify(r, SCHEMA)
    assert verify_fresh(GateContext(client=r)).status == "PASS"
    old = GateContext(client=r, now=lambda: time.time() + 3700)
    assert verify_fresh(old).status == "WAIT"
    r.hset(SCHEMA.new_key("ws-a", "j0"), "status", "tampered")
    run_verify(r, SCHEMA)
    assert verify_fresh(GateContext(client=r)).status == "FAIL"
    r.hset(SCHEMA.new_key("ws-a", "j0"), "status", "pending")
    run_verify(r, SCHEMA, workspaces=("ws-a",))
    assert verify_fresh(GateContext(client=r)).status == "WAIT"  # not every workspace
    assert verify_fresh(GateContext(client=None)).status == "UNKNOWN"


def test_index_orphans_gate_counts_the_latest_full_verify(r):
    seed(r)
    assert index_orphans(GateContext(client=r)).status == "WAIT"
    run_verify(r, SCHEMA)
    assert index_orphans(GateContext(client=r)).status == "PASS"
    r.zadd(SCHEMA.index_key("ws-a"), {"gone-1": 1, "gone-2": 2})
    run_verify(r, SCHEMA)
    result = index_orphans(GateContext(client=r))
    assert (result.status, result.value) == ("FAIL", "2 orphans")
    run_verify(r, SCHEMA, repair=True, reason="orphans")
    run_verify(r, SCHEMA)
    assert index_orphans(GateContext(client=r)).status == "PASS"
