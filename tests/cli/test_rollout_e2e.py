"""The whole six-phase rollout, driven only through `relayctl` subprocesses, on a real Redis
with live simulated traffic. Time-based gates use the injectable clock
(RELAYCTL_CLOCK_OFFSET_S), never waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
import redis

from relayctl.core.archive import read_archive
from relayctl.core.keys import KeySchema
from tests.conftest import free_port

DAY = 86400
ACTOR = "e2e-alice"
PHASE0_ITEMS = ["env-dual-off", "env-prefers-on", "env-fallback-on", "env-example",
                "sec-secrets", "sec-traces", "sec-workspace", "sec-cursor", "sec-telemetry",
                "tests-pass", "redis-no-migration", "redis-idem-prefix"]


@dataclass
class Relay:
    """Runs relayctl as a subprocess with a virtual clock that only moves forward."""

    redis_url: str
    metrics_url: str
    offset_s: float = 0.0
    log: list[str] = field(default_factory=list)
    traffic: subprocess.Popen | None = None
    last_check: list[dict] = field(default_factory=list)

    def stop_traffic(self) -> None:
        if self.traffic is not None and self.traffic.poll() is None:
            self.traffic.terminate()
            self.traffic.wait(timeout=20)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW", "READ_FALLBACK_OLD")}
        env.update(REDIS_URL=self.redis_url, RELAYCTL_ACTOR=ACTOR,
                   RELAYCTL_METRICS_URL=self.metrics_url,
                   RELAYCTL_CLOCK_OFFSET_S=str(self.offset_s), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def __call__(self, *args: str, expect: int | None = 0, timeout: float = 120,
                 **extra_env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "relayctl", *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env(**extra_env))
        self.log.append(f"$ relayctl {' '.join(args)} -> {proc.returncode}")
        if expect is not None:
            assert proc.returncode == expect, (
                f"relayctl {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return proc

    def gates(self, phase: int, window: float | None = 3.0) -> tuple[int, dict[str, str]]:
        args = ["check", "--phase", str(phase), "--json"]
        if window:
            args += ["--window", str(window)]
        proc = self(*args, expect=None)
        data = json.loads(proc.stdout)
        self.last_check = [g for p in data["phases"] for g in p["gates"]]
        return proc.returncode, {g["gate"]: g["status"] for g in self.last_check}

    def not_passing(self) -> list[dict]:
        """The last check's gates that did not PASS, with their value and detail."""
        return [g for g in self.last_check if g["status"] != "PASS"]


def _digest(url: str, pattern: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(url)
    try:
        return {k: client.dump(k) for k in client.scan_iter(match=pattern, count=1000)}
    finally:
        client.close()


@pytest.fixture
def rollout(redis_url, tmp_path):
    port = free_port()
    relay = Relay(redis_url=redis_url, metrics_url=f"http://127.0.0.1:{port}/metrics")
    # history: legacy-only jobs, then recent jobs written by an earlier dual-write release
    relay("simulate", "--rate", "800", "--workspaces", "3", "--duration", "3", "--seed", "1",
          "--write-share", "0.5")
    relay("simulate", "--rate", "1000", "--workspaces", "3", "--duration", "5", "--seed", "2",
          "--write-share", "0.5", AI_JOBS_NEW_SCHEMA="on")
    sim = subprocess.Popen(
        [sys.executable, "-m", "relayctl", "--redis-url", redis_url, "simulate", "--rate",
         "150", "--workspaces", "3", "--seed", "3", "--write-share", "0.03",
         "--metrics-port", str(port)],
        # stderr to a file, not a pipe nobody drains for minutes (a full pipe stalls traffic)
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "sim.err").open("w"), env=relay.env())
    deadline = time.monotonic() + 20
    import urllib.request
    while True:
        try:
            urllib.request.urlopen(relay.metrics_url, timeout=1).read()
            break
        except OSError:
            assert sim.poll() is None, (tmp_path / "sim.err").read_text()
            assert time.monotonic() < deadline, "simulator never served /metrics"
            time.sleep(0.2)
    relay.traffic = sim
    yield relay
    relay.stop_traffic()


@pytest.mark.slow
def test_whole_rollout_gates_fail_before_and_pass_after_with_every_action_audited(
        rollout: Relay, r: redis.Redis) -> None:
    relay = rollout

    # Phase 0: pre-deployment. No census yet -> WAIT; after a census -> PASS.
    code, gates = relay.gates(0, window=None)
    assert gates["new_keys_present"] == "WAIT" and code == 3
    relay("census")
    code, gates = relay.gates(0, window=None)
    assert gates == {"redis_tls": "PASS", "new_keys_present": "PASS"} and code == 0
    refused = relay("checklist", "advance", expect=2)
    assert "items not checked off" in refused.stderr
    relay("checklist", "mark", *PHASE0_ITEMS, "--reason", "reviewed with the release")
    relay("checklist", "advance")

    # Phase 1: read-routing. Before apply the flags and the new-read share fail.
    code, gates = relay.gates(1)
    assert gates["flags_converged"] == "FAIL" and gates["new_read_share_60"] == "FAIL"
    assert code == 1
    relay("checklist", "apply", "--reason", "step 1: read-routing", "--yes")
    time.sleep(2)
    code, gates = relay.gates(1)
    assert code == 0, relay.not_passing()
    relay("checklist", "mark", "p1-old-schema", "p1-old-share", "p1-list-path",
          "--reason", "dashboards checked")
    relay("checklist", "advance", "--window", "2")

    # Phase 2: stabilisation.
    relay("checklist", "apply", "--reason", "step 2: baseline", "--yes")
    relay("census")
    time.sleep(2)
    code, gates = relay.gates(2)
    assert code == 0, relay.not_passing()
    relay("checklist", "mark", "p2-latency", "--reason", "latency flat")
    relay("checklist", "advance", "--window", "2")

    # Phase 3: dual-write. "Stable for 1+ weeks" waits until the clock says so.
    code, gates = relay.gates(3)
    assert gates["read_routing_days_7"] == "WAIT" and gates["flags_converged"] == "FAIL"
    assert code == 1
    relay.offset_s += 8 * DAY
    code, gates = relay.gates(3)
    assert gates["read_routing_days_7"] == "PASS", gates
    relay("checklist", "apply", "--reason", "step 3: dual-write", "--yes")
    time.sleep(2)
    relay("census")
    code, gates = relay.gates(3)
    assert code == 0, relay.not_passing()
    relay("checklist", "mark", "p3-both", "--reason", "spot-checked")
    relay("checklist", "advance", "--window", "2")

    # Phase 4: backfill. Before it runs: WAIT; verify finds the legacy-only jobs missing.
    code, gates = relay.gates(4)
    assert gates["backfill_complete"] == "WAIT" and gates["census_equal"] == "FAIL"
    assert code == 1
    assert relay("verify", expect=1).returncode == 1
    code, gates = relay.gates(4)
    assert gates["verify_clean"] == "FAIL" and code == 1
    relay("backfill", "--dry-run", "--json")
    relay("backfill", "--execute", "--batch", "500", "--json")
    relay("verify")
    relay("census")
    time.sleep(2)
    code, gates = relay.gates(4)
    assert code == 0, relay.not_passing()
    relay("checklist", "mark", "p4-implement", "p4-low-traffic", "--reason", "ran off-peak")
    relay("checklist", "advance", "--window", "2")

    # Phase 5: fallback off. Dual-write must have run for 2+ weeks.
    code, gates = relay.gates(5)
    assert gates["dual_write_days_14"] == "WAIT", gates
    relay.offset_s += 15 * DAY
    relay("census")
    code, gates = relay.gates(5)
    assert gates["dual_write_days_14"] == "PASS" and gates["flags_converged"] == "FAIL"
    relay("checklist", "apply", "--reason", "step 5: fallback off", "--yes")
    time.sleep(2)
    code, gates = relay.gates(5)
    assert code == 0, relay.not_passing()
    relay("verify")  # every legacy job still has its equal new copy: all readable
    relay("checklist", "mark", "p5-perf", "--reason", "p99 down")
    relay("checklist", "advance", "--window", "2")

    # Phase 6: archive, after a month with fallback off.
    code, gates = relay.gates(6)
    assert gates["fallback_off_days_30"] == "WAIT", gates
    relay.offset_s += 31 * DAY
    relay("checklist", "apply", "--reason", "step 6: baseline before archive", "--yes")
    relay("census")
    relay("verify")  # archive delete needs a clean full verify after the last flag change
    archive = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"relay-{os.getpid()}.jsonl.gz")
    try:
        relay("archive", "export", archive)
        # what was exported (traffic keeps running, so read it from the file, not Redis)
        before = {a.key.encode(): a.dump for a in read_archive(archive, KeySchema())}
        assert len(before) > 1000
        counts = json.loads(relay("archive", "delete", "--from", archive, "--reason", "step 6",
                                  "--yes", "--json").stdout)["counts"]
        left = _digest(relay.redis_url, "ai:jobs:*")
        # live traffic keeps updating some jobs: a legacy key survives only if it changed
        # after the export (or was born after it), or its copy was not verified at that
        # moment (counted by reason); everything else is gone
        survivors = set(left) & set(before)
        unchanged = sum(1 for k in survivors if left[k] == before[k])
        kept = sum(n for k, n in counts.items() if k not in ("deleted", "changed", "gone"))
        assert unchanged <= kept, (unchanged, counts)
        deleted = set(before) - set(left)
        assert len(deleted) > 0.9 * len(before)
        relay("census")
        code, gates = relay.gates(6)
        assert code == 0, relay.not_passing()
        relay("checklist", "mark", "p6-retention", "p6-export", "p6-delete",
              "--reason", "archived")
        relay("checklist", "advance", "--window", "2")
        relay.stop_traffic()  # a restore drill with live workers would race the comparison
        relay("archive", "restore", archive, "--reason", "restore drill", "--yes")
        after = _digest(relay.redis_url, "ai:jobs:*")
        assert {k: after.get(k) for k in deleted} == {k: before[k] for k in deleted}
    finally:
        if os.path.exists(archive):
            os.unlink(archive)

    status = json.loads(relay("status", "--json").stdout)
    assert status["complete"] and status["phase"] == 7

    # Every operator action is in the audit stream with its actor and reason.
    entries = [f for _id, f in r.xrange("relay:audit")]
    actions = {e["action"] for e in entries if e["actor"] == ACTOR}
    assert {"checklist.mark", "checklist.apply", "checklist.advance", "flag.set",
            "archive.export", "archive.delete.start", "archive.delete.end",
            "archive.restore.start", "archive.restore.end"} <= actions, actions
    assert all(e["reason"] for e in entries if e["action"] != "checklist.mark")
    advances = [e for e in entries if e["action"] == "checklist.advance"]
    assert [(e["before"], e["after"]) for e in advances] == [
        (str(n), str(n + 1)) for n in range(7)]
