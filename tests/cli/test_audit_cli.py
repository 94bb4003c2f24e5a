"""`relayctl audit`: the audit log read back with filters, and its --json shape."""

from __future__ import annotations

import json
import subprocess
import sys

from relayctl.core import audit

RELAYCTL = [sys.executable, "-m", "relayctl"]


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RELAYCTL, "--redis-url", url, "audit", *args], capture_output=True,
                          text=True, timeout=60)


def test_audit_filters_by_actor_and_action_prefix_and_prints_iso_times(redis_url, r):
    audit.record(r, "alice", "flag.set", "READ_PREFERS_NEW", "off", "on", "phase 1")
    audit.record(r, "bob", "backfill.start", "backfill", "", "pid 1 execute", "week 4")
    audit.record(r, "bob", "backfill.pause", "backfill", "run", "pause", "peak")
    out = run(redis_url, "--actor", "bob", "--action", "backfill.", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [row["action"] for row in rows] == ["backfill.pause", "backfill.start"]
    assert set(rows[0]) == {"id", "time", "actor", "action", "target", "before", "after",
                            "reason"}
    assert rows[0]["time"].endswith("Z") and rows[0]["time"][4] == "-"
    text = run(redis_url, "--action", "flag.set")
    assert text.returncode == 0 and "alice" in text.stdout and "bob" not in text.stdout
    assert run(redis_url, "--since", "1h", "--json").stdout.count('"action"') == 3


def test_audit_with_a_bad_since_is_one_line_usage_error(redis_url):
    out = run(redis_url, "--since", "yesterday-ish")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--since" in out.stderr


def test_audit_with_redis_down_exits_4_with_a_message():
    out = subprocess.run([*RELAYCTL, "--redis-url", "redis://127.0.0.1:1/0", "audit"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "cannot reach redis" in out.stderr.lower(), (out.returncode,
                                                                         out.stderr)
