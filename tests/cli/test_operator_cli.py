"""The operator commands through the real entry point: census, verify, archive, check,
checklist, rollback, status (SPEC §5, §6, §10) against the private redis-server."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from relayctl.core.backfill import Backfill, BackfillKeys, BackfillOptions
from relayctl.core.demo import legacy_record, seed_pre_migration
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, FLAG_NAMES, PREFERS_NEW, set_flag
from relayctl.core.jobs import JobStore, iso_to_ms
from relayctl.core.keys import AUDIT_KEY, CENSUS_KEY, CHECKLIST_KEY, FLAGS_KEY, KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.phases import PHASES, PROCEDURES, phase
from tests.conftest import free_port

SCHEMA = KeySchema()
ACTOR = ("--actor", "oncall")


def audit(r: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in r.xrange(AUDIT_KEY)]


def stored_flags(r: redis.Redis) -> dict[str, bool]:
    return {k: v == "on" for k, v in r.hgetall(FLAGS_KEY).items()}


def set_flags(r: redis.Redis, **flags: bool) -> None:
    for name, value in flags.items():
        set_flag(r, name, value, actor="setup", reason="test setup")


def put_job(r: redis.Redis, ws: str, job_id: str, *, new: bool) -> None:
    record = legacy_record(random.Random(job_id), ws, job_id, time.time() - 60)
    r.hset(SCHEMA.old_key(job_id), mapping=record)
    if new:
        r.hset(SCHEMA.new_key(ws, job_id), mapping=record)
        r.zadd(SCHEMA.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})


@dataclass
class App:
    """One application instance: live traffic through JobStore, a real /metrics endpoint."""

    r: redis.Redis
    store: JobStore
    metrics_url: str

    def reads(self, new: int = 0, old: int = 0, miss: int = 0) -> None:
        for _ in range(new):
            self.store.get_job("ws-a", "job-new")
        for _ in range(old):
            self.store.get_job("ws-a", "job-old")
        for i in range(miss):
            self.store.get_job("ws-a", f"absent-{i}")


@pytest.fixture
def app(r: redis.Redis) -> Iterator[App]:
    put_job(r, "ws-a", "job-new", new=True)
    put_job(r, "ws-a", "job-old", new=False)
    metrics = Metrics(labelled_workspaces=["ws-a"])
    server = metrics.serve(0)
    store = JobStore(r, background=False, pins={}, metrics=metrics, instance="web-1")
    try:
        yield App(r=r, store=store, metrics_url=server.url)
    finally:
        store.close()
        threading.Thread(target=server.close, daemon=True).start()


def show(run_cli, redis_url: str, metrics_url: str | None, number: int) -> dict:
    extra = ("--metrics-url", metrics_url) if metrics_url else ()
    res = run_cli("--redis-url", redis_url, *extra, "checklist", "show", "--phase",
                  str(number), "--json")
    assert res.code == 0, res.err
    return json.loads(res.out)["selected"]


def trigger(selected: dict, gate: str) -> tuple[dict, set[str]]:
    """The trigger gate's live result and the procedures the phase names for it."""
    result = next(g for g in selected["trigger_gates"] if g["gate"] == gate)
    procedures = {t["procedure"] for t in selected["triggers"] if t["gate"] == gate}
    return result, procedures


def rollback(run_cli, redis_url: str, name: str) -> None:
    res = run_cli("--redis-url", redis_url, *ACTOR, "rollback", name, "--reason", "x", "--yes")
    assert res.code == 0, res.err


def assert_rolled_back(r: redis.Redis, name: str) -> None:
    proc = PROCEDURES[name]
    flags = stored_flags(r)
    for flag, value in proc.flags.items():
        assert flags[flag] is value, flag
    entries = audit(r)
    marker = [e for e in entries if e["action"] == "rollback" and e["target"] == name]
    assert len(marker) == 1
    assert (marker[0]["actor"], marker[0]["reason"]) == ("oncall", "x")
    changes = {e["target"]: e for e in entries if e["action"] == "flag.set"
               and e["reason"] == f"rollback {name}: x"}
    assert set(changes) == set(proc.flags)
    for flag, value in proc.flags.items():
        assert changes[flag]["after"] == ("on" if value else "off")
        assert changes[flag]["actor"] == "oncall"


# ---------------------------------------------------------------------------------------------
# rollback procedures: each one's trigger gate sees its condition, then the rollback applies


def test_every_rollback_procedure_has_a_test_here():
    tested = {"read-routing", "dual-write", "fallback-disable", "emergency", "backfill"}
    assert set(PROCEDURES) == tested


def test_rollback_read_routing_after_new_share_falls_below_fifty_percent(run_cli, redis_url,
                                                                        r, app):
    set_flags(r, **{DUAL_WRITE: False, PREFERS_NEW: True, FALLBACK_OLD: True})
    app.store.refresh_flags()
    app.reads(new=30, old=70)
    gate, procedures = trigger(show(run_cli, redis_url, app.metrics_url, 1), "new_read_share_50")
    assert gate["status"] == "FAIL" and gate["value"] == "30.00%"
    assert procedures == {"read-routing"}
    rollback(run_cli, redis_url, "read-routing")
    assert_rolled_back(r, "read-routing")
    app.store.refresh_flags()
    assert app.store.get_job("ws-a", "job-old").source == "old"  # reads back on the old schema


def test_rollback_dual_write_after_failures_pass_five_percent(run_cli, redis_url, r, app):
    set_flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: True})
    app.store.refresh_flags()
    for _ in range(90):
        app.store.enqueue("ws-a", action_provider="openai", action_name="draft")
    r.delete(SCHEMA.queue)
    r.set(SCHEMA.queue, "not a list")  # every enqueue now fails in the script
    for _ in range(10):
        with pytest.raises(redis.ResponseError):
            app.store.enqueue("ws-a", action_provider="openai", action_name="draft")
    gate, procedures = trigger(show(run_cli, redis_url, app.metrics_url, 3),
                               "dual_write_failure_5")
    assert gate["status"] == "FAIL" and gate["value"] == "10.00%"
    assert procedures == {"dual-write"}
    rollback(run_cli, redis_url, "dual-write")
    assert_rolled_back(r, "dual-write")
    assert stored_flags(r)[DUAL_WRITE] is False


def test_rollback_fallback_disable_after_misses_jump_once_fallback_is_off(run_cli, redis_url,
                                                                          r, app):
    set_flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: True})
    app.store.refresh_flags()
    app.reads(new=490, miss=10)  # 2% misses before phase 5
    r.hset(CHECKLIST_KEY, "phase", "5")
    res = run_cli("--redis-url", redis_url, "--metrics-url", app.metrics_url, *ACTOR,
                  "checklist", "apply", "--reason", "phase 5", "--yes")
    assert res.code == 0, res.err
    assert stored_flags(r)[FALLBACK_OLD] is False
    app.store.refresh_flags()
    app.reads(new=150, old=50)  # the legacy-only job is now a 404
    gate, procedures = trigger(show(run_cli, redis_url, app.metrics_url, 5), "miss_increase")
    assert gate["status"] == "FAIL", gate
    assert procedures == {"fallback-disable"}
    rollback(run_cli, redis_url, "fallback-disable")
    assert_rolled_back(r, "fallback-disable")
    app.store.refresh_flags()
    assert app.store.get_job("ws-a", "job-old").source == "old"  # readable again


def test_rollback_emergency_after_a_cross_workspace_read(run_cli, redis_url, r, app):
    set_flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: True})
    app.store.refresh_flags()
    app.reads(new=20)
    gate, _ = trigger(show(run_cli, redis_url, app.metrics_url, 3), "workspace_mismatch")
    assert gate["status"] == "PASS"
    assert app.store.get_job("ws-b", "job-old") is None  # ws-b asks for ws-a's job
    for number in (1, 2, 3, 5):
        gate, procedures = trigger(show(run_cli, redis_url, app.metrics_url, number),
                                   "workspace_mismatch")
        assert gate["status"] == "FAIL" and gate["value"] == "1"
        assert procedures == {"emergency"}
    rollback(run_cli, redis_url, "emergency")
    assert_rolled_back(r, "emergency")


def test_rollback_backfill_stops_the_running_engine_after_errors(run_cli, redis_url, r):
    seed_pre_migration(r, SCHEMA, ["ws-a", "ws-b"], jobs=4000, recent_share=0.0, invalid=0)
    r.set(SCHEMA.index_key("ws-b"), "not a zset")  # every ws-b copy errors
    set_flags(r, **{DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: True})
    env = {k: v for k, v in os.environ.items() if k not in FLAG_NAMES}
    engine = subprocess.Popen(
        [sys.executable, "-m", "relayctl", "--redis-url", redis_url, "--actor", "backfiller",
         "backfill", "--execute", "--rps", "500", "--batch", "50", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    state_key = BackfillKeys().state
    try:
        deadline = time.monotonic() + 20
        while int(r.hget(state_key, "errors") or 0) == 0:
            assert engine.poll() is None, engine.communicate()
            assert time.monotonic() < deadline, "backfill made no errors"
            time.sleep(0.05)
        gate, procedures = trigger(show(run_cli, redis_url, None, 4), "backfill_errors")
        assert gate["status"] == "FAIL" and int(gate["value"]) > 0
        assert "backfill" in procedures
        assert r.exists(BackfillKeys().lease) == 1  # still running
        res = run_cli("--redis-url", redis_url, *ACTOR, "rollback", "backfill", "--reason",
                      "x", "--yes", "--json")
        assert res.code == 0, res.err
        assert json.loads(res.out)["backfill_stopped"] is True
        assert engine.wait(timeout=20) == 3
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert r.hget(state_key, "status") == "stopped"
    assert int(r.hget(state_key, "scanned")) < 4000
    assert_rolled_back(r, "backfill")
    stop = [e for e in audit(r) if e["action"] == "backfill.stop"]
    assert len(stop) == 1 and stop[0]["actor"] == "oncall"
    assert stop[0]["reason"] == "rollback backfill: x"


def test_rollback_refuses_unknown_procedure_missing_reason_and_no_yes(run_cli, redis_url, r):
    bad = run_cli("--redis-url", redis_url, "rollback", "everything", "--reason", "x", "--yes")
    assert bad.code == 2 and "unknown rollback procedure" in bad.err
    blank = run_cli("--redis-url", redis_url, "rollback", "dual-write", "--reason", " ",
                    "--yes")
    assert blank.code == 2 and "reason" in blank.err
    no_yes = run_cli("--redis-url", redis_url, "rollback", "dual-write", "--reason", "x")
    assert no_yes.code == 2 and "--yes" in no_yes.err
    assert r.exists(FLAGS_KEY, AUDIT_KEY) == 0


# ---------------------------------------------------------------------------------------------
# checklist


def manual_items(number: int) -> list[str]:
    p = phase(number)
    return [i.id for i in p.prerequisites + p.validation if i.manual]


def test_advance_refuses_naming_failing_gates_and_open_items_then_advances(run_cli,
                                                                          redis_url, r):
    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "advance")
    assert res.code == 2
    assert "new_keys_present" in res.err  # no census yet: WAIT blocks too
    for item in manual_items(0):
        assert item in res.err
    assert r.hget(CHECKLIST_KEY, "phase") is None

    seed_pre_migration(r, SCHEMA, ["ws-a"], jobs=50, recent_share=0.5, invalid=0)
    assert run_cli("--redis-url", redis_url, "census").code == 0
    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "advance")
    assert res.code == 2
    assert "gates not passing" not in res.err and "env-dual-off" in res.err

    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "mark", *manual_items(0),
                  "--reason", "walkthrough")
    assert res.code == 0, res.err
    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "advance", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["to"] == 1
    assert r.hget(CHECKLIST_KEY, "phase") == "1"
    entry = [e for e in audit(r) if e["action"] == "checklist.advance"]
    assert len(entry) == 1 and entry[0]["actor"] == "oncall"
    marks = [e for e in audit(r) if e["action"] == "checklist.mark"]
    assert marks and marks[0]["actor"] == "oncall" and marks[0]["reason"] == "walkthrough"
    item = json.loads(r.hget(CHECKLIST_KEY, "item:env-dual-off"))
    assert item["state"] == "done" and item["actor"] == "oncall"


def test_advance_with_override_and_reason_advances_and_audits_the_override(run_cli,
                                                                          redis_url, r):
    run_cli("--redis-url", redis_url, *ACTOR, "checklist", "mark", *manual_items(0))
    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "advance", "--override",
                  "new_keys_present", "--reason", "census runs tonight", "--yes")
    assert res.code == 0, res.err
    assert r.hget(CHECKLIST_KEY, "phase") == "1"
    (override,) = [e for e in audit(r) if e["action"] == "gate.override"]
    assert override["reason"] == "census runs tonight"
    assert override["actor"] == "oncall"
    assert override["target"] == "phase 0/new_keys_present"
    assert override["before"] == "WAIT"


def test_override_without_reason_or_of_a_foreign_gate_is_refused(run_cli, redis_url, r):
    run_cli("--redis-url", redis_url, *ACTOR, "checklist", "mark", *manual_items(0))
    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "advance", "--override",
                  "new_keys_present", "--yes")
    assert res.code == 2 and "--reason" in res.err
    res = run_cli("--redis-url", redis_url, *ACTOR, "checklist", "advance", "--override",
                  "backfill_errors", "--reason", "r", "--yes")
    assert res.code == 2 and "not a gate of phase 0" in res.err
    assert r.hget(CHECKLIST_KEY, "phase") is None
    assert not [e for e in audit(r) if e["action"] in ("gate.override", "checklist.advance")]


def test_mark_refuses_gate_backed_and_unknown_items(run_cli, redis_url, r):
    res = run_cli("--redis-url", redis_url, "checklist", "mark", "env-tls")
    assert res.code == 2 and "checked by gate redis_tls" in res.err
    res = run_cli("--redis-url", redis_url, "checklist", "mark", "no-such-item")
    assert res.code == 2 and "unknown checklist item" in res.err
    assert r.exists(CHECKLIST_KEY, AUDIT_KEY) == 0


def test_apply_sets_the_phase_target_flags_with_audit_and_records_a_baseline(run_cli,
                                                                            redis_url, r,
                                                                            app):
    app.reads(new=10)
    r.hset(CHECKLIST_KEY, "phase", "1")
    refused = run_cli("--redis-url", redis_url, "checklist", "apply", "--reason", "go")
    assert refused.code == 2 and "--yes" in refused.err
    res = run_cli("--redis-url", redis_url, "--metrics-url", app.metrics_url, *ACTOR,
                  "checklist", "apply", "--reason", "go", "--yes", "--json")
    assert res.code == 0, res.err
    target = phase(1).target_flags
    assert stored_flags(r) == target
    changes = {e["target"]: e for e in audit(r) if e["action"] == "flag.set"}
    assert set(changes) == set(target)
    for name, value in target.items():
        assert changes[name]["after"] == ("on" if value else "off")
        assert changes[name]["actor"] == "oncall"
        assert changes[name]["reason"] == "phase 1: go"
    (applied,) = [e for e in audit(r) if e["action"] == "checklist.apply"]
    assert applied["reason"] == "go"
    state = r.hgetall(CHECKLIST_KEY)
    assert float(state["applied:1"]) > 0
    assert int(state["memory:1"]) > 0
    baseline = json.loads(state["baseline:1"])
    reads = sum(v for name, _lbls, v in baseline if name == "relay_job_read_path_total")
    assert reads == 10.0  # the traffic so far, the gates' "since apply" zero point


# ---------------------------------------------------------------------------------------------
# check


def test_check_phase_json_exits_3_waiting_1_failing_0_passing(run_cli, redis_url, r):
    def check() -> tuple[int, dict[str, str]]:
        res = run_cli("--redis-url", redis_url, "check", "--phase", "0", "--json")
        data = json.loads(res.out)
        assert data["exit"] == res.code
        return res.code, {g["gate"]: g["status"] for g in data["phases"][0]["gates"]}

    assert check() == (3, {"redis_tls": "PASS", "new_keys_present": "WAIT"})
    seed_pre_migration(r, SCHEMA, ["ws-a"], jobs=30, recent_share=0.0, invalid=0)
    run_cli("--redis-url", redis_url, "census")
    assert check() == (1, {"redis_tls": "PASS", "new_keys_present": "FAIL"})
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    run_cli("--redis-url", redis_url, "census")
    assert check() == (0, {"redis_tls": "PASS", "new_keys_present": "PASS"})


def test_check_all_reports_every_phase(run_cli, redis_url):
    res = run_cli("--redis-url", redis_url, "check", "--all", "--json")
    data = json.loads(res.out)
    assert [p["phase"] for p in data["phases"]] == [p.number for p in PHASES]
    assert res.code == data["exit"] == 1  # phase 1 targets are not applied: FAIL


def test_check_with_a_dead_metrics_endpoint_is_unknown_not_passing(run_cli, redis_url, r):
    res = run_cli("--redis-url", redis_url, "--metrics-url", "http://127.0.0.1:1/metrics",
                  "check", "--phase", "2", "--json")
    gates = {g["gate"]: g["status"] for g in json.loads(res.out)["phases"][0]["gates"]}
    assert gates["new_read_share_80"] == "UNKNOWN"
    assert res.code in (1, 3)


# ---------------------------------------------------------------------------------------------
# census, verify, archive, status


def test_census_command_prints_and_stores_exact_counts(run_cli, redis_url, r):
    seed_pre_migration(r, SCHEMA, ["ws-a", "ws-b"], jobs=120, recent_share=0.25, invalid=2)
    res = run_cli("--redis-url", redis_url, "census", "--by-workspace", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert (data["old"], data["new"], data["index_entries"]) == (122, 30, 30)
    assert sum(c["new"] for c in data["by_workspace"].values()) == 30
    assert int(r.hget(CENSUS_KEY, "old")) == 122
    text = run_cli("--redis-url", redis_url, "census")
    assert text.code == 0 and "old keys" in text.out and "122" in text.out


@pytest.fixture
def backfilled(r: redis.Redis) -> list[tuple[str, str]]:
    seeded = seed_pre_migration(r, SCHEMA, ["ws-a", "ws-b"], jobs=100, recent_share=0.2,
                                invalid=0)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    return list(seeded.jobs)


def test_verify_command_exits_0_when_clean_and_1_with_twenty_examples_per_kind(
        run_cli, redis_url, r, backfilled):
    clean = run_cli("--redis-url", redis_url, "verify")
    assert clean.code == 0, clean.err
    assert "CLEAN" in clean.out
    victims = backfilled[:25]
    for ws, job in victims:
        r.delete(SCHEMA.new_key(ws, job))
    ws, job = backfilled[30]
    r.hset(SCHEMA.new_key(ws, job), "status", "tampered")
    res = run_cli("--redis-url", redis_url, "verify")
    assert res.code == 1
    lines = res.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["missing"])
    assert lines[start].split()[1] == "25"
    examples = []
    for line in lines[start + 1:]:
        if not line.startswith("      "):
            break
        examples.append(line.strip())
    assert len(examples) == 20
    assert set(examples) <= {SCHEMA.new_key(w, j) for w, j in victims}
    assert SCHEMA.new_key(ws, job) in res.out
    assert "DIFFERENCES FOUND" in res.out
    data = json.loads(run_cli("--redis-url", redis_url, "verify", "--json").out)
    assert data["counts"]["missing"] == 25 and len(data["examples"]["missing"]) == 20
    sample = json.loads(run_cli("--redis-url", redis_url, "verify", "--sample", "7",
                                "--json").out)
    assert sample["checked"] == 7


def test_verify_repair_needs_yes_is_audited_and_is_refused_after_fallback_off(
        run_cli, redis_url, r, backfilled):
    ws, job = backfilled[0]
    r.delete(SCHEMA.new_key(ws, job))
    no_reason = run_cli("--redis-url", redis_url, "verify", "--repair", "--yes")
    assert no_reason.code == 2 and "--reason" in no_reason.err
    no_yes = run_cli("--redis-url", redis_url, "verify", "--repair", "--reason", "fix")
    assert no_yes.code == 2 and "--yes" in no_yes.err
    set_flags(r, **{FALLBACK_OLD: False})
    refused = run_cli("--redis-url", redis_url, "verify", "--repair", "--reason", "fix", "--yes")
    assert refused.code == 2 and "READ_FALLBACK_OLD" in refused.err
    assert r.exists(SCHEMA.new_key(ws, job)) == 0
    fixed = run_cli("--redis-url", redis_url, *ACTOR, "verify", "--repair", "--reason",
                    "copy lost", "--force", "--yes")
    assert fixed.code == 1  # this run found the difference (and repaired it)
    assert "repaired 1" in fixed.out
    assert run_cli("--redis-url", redis_url, "verify").code == 0
    start, end = [e for e in audit(r) if e["action"].startswith("verify.repair")]
    assert (start["action"], end["action"]) == ("verify.repair.start", "verify.repair.end")
    assert end["actor"] == "oncall" and end["reason"] == "copy lost"
    assert json.loads(end["after"])["copied"] == 1


def test_archive_commands_export_delete_restore_and_refuse_what_they_must(
        run_cli, redis_url, r, backfilled, tmp_path):
    raw = redis.Redis.from_url(redis_url)
    dumps = {k: raw.dump(k) for k in raw.scan_iter(match=b"ai:jobs:*")}
    path = str(tmp_path / "legacy.jsonl.gz")
    res = run_cli("--redis-url", redis_url, *ACTOR, "archive", "export", path, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["count"] == 100
    again = run_cli("--redis-url", redis_url, "archive", "export", path)
    assert again.code == 2 and "already exists" in again.err

    missing = run_cli("--redis-url", redis_url, "archive", "delete", "--from",
                      str(tmp_path / "nope.gz"), "--reason", "x", "--yes")
    assert missing.code == 2 and "does not exist" in missing.err
    no_yes = run_cli("--redis-url", redis_url, "archive", "delete", "--from", path,
                     "--reason", "x")
    assert no_yes.code == 2 and "--yes" in no_yes.err
    fallback_on = run_cli("--redis-url", redis_url, "archive", "delete", "--from", path,
                          "--reason", "x", "--yes")
    assert fallback_on.code == 2 and "READ_FALLBACK_OLD" in fallback_on.err
    assert len(list(r.scan_iter(match="ai:jobs:*"))) == 100

    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b'{"format": "relayctl-archive", "version": 3}\n'))
    corrupt = run_cli("--redis-url", redis_url, "archive", "restore", str(bad), "--reason",
                      "x", "--yes")
    assert corrupt.code == 2 and "unsupported version" in corrupt.err

    set_flags(r, **{FALLBACK_OLD: False})
    stale = run_cli("--redis-url", redis_url, "archive", "delete", "--from", path,
                    "--reason", "x", "--yes")
    assert stale.code == 2 and "verify_fresh" in stale.err
    assert run_cli("--redis-url", redis_url, "verify").code == 0
    res = run_cli("--redis-url", redis_url, *ACTOR, "archive", "delete", "--from", path,
                  "--reason", "phase 6", "--yes", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["counts"]["deleted"] == 100
    assert not list(r.scan_iter(match="ai:jobs:*"))
    res = run_cli("--redis-url", redis_url, *ACTOR, "archive", "restore", path, "--reason",
                  "undo", "--yes", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["counts"] == {"restored": 100, "rewritten": 0, "exists": 0,
                                             "expired": 0, "unrestorable": 0}
    assert {k: raw.dump(k) for k in raw.scan_iter(match=b"ai:jobs:*")} == dumps
    raw.close()
    actions = [(e["action"], e["actor"]) for e in audit(r)]
    for action in ("archive.export", "archive.delete.start", "archive.delete.end",
                   "archive.restore.start", "archive.restore.end"):
        assert (action, "oncall") in actions


def test_status_json_summarises_flags_backfill_census_and_the_current_phase(
        run_cli, redis_url, r, backfilled):
    run_cli("--redis-url", redis_url, "census")
    res = run_cli("--redis-url", redis_url, "status", "--json")
    data = json.loads(res.out)
    assert {f["flag"]: f["effective_here"] for f in data["flags"]} == {
        DUAL_WRITE: "off", PREFERS_NEW: "off", FALLBACK_OLD: "on"}
    # one shape per object: status's flags are `flags --json`'s rows
    assert data["flags"] == json.loads(run_cli("--redis-url", redis_url, "flags", "--json")
                                       .out)["flags"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["census"]["finished"])
    assert data["backfill"]["status"] == "completed"
    assert data["census"]["old"] == 100 and data["census"]["new"] == 100
    assert data["phase"] == 0
    assert {g["gate"]: g["status"] for g in data["gates"]} == {"redis_tls": "PASS",
                                                               "new_keys_present": "PASS"}
    assert res.code == 0


@pytest.mark.parametrize("args", [
    ("check",), ("check", "--all"), ("status",), ("flags",), ("census",), ("verify",),
    ("backfill", "status"), ("checklist", "show"), ("audit",), ("acl",),
    ("flags", "set", "AI_JOBS_NEW_SCHEMA", "on", "--reason", "x", "--yes"),
    ("backfill", "--dry-run"), ("backfill", "--execute"), ("backfill", "pause", "--reason", "x"),
    ("backfill", "set", "--rps", "10", "--reason", "x"),
    ("checklist", "mark", "env-dual-off", "--reason", "x"),
    ("checklist", "apply", "--reason", "x", "--yes"), ("checklist", "advance", "--reason", "x"),
    ("rollback", "read-routing", "--reason", "x", "--yes"),
    ("simulate", "--duration", "1"), ("bench", "store"),
])
def test_every_command_exits_4_with_one_line_when_redis_is_down(run_cli, args):
    """Defect 9: `check` with Redis down exited 3 and said nothing on stderr; the README says
    4 for every command (the console instead shows DOWN and retries)."""
    down = f"redis://127.0.0.1:{free_port()}/0"
    res = run_cli("--redis-url", down, *args)
    assert res.code == 4, (args, res.code, res.out, res.err)
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("relayctl: error:"), (args, res.err)
    assert "Traceback" not in res.err
