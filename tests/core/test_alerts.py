"""`relayctl export alerts|grafana` (SPEC §7): rules validated and unit-tested with promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relayctl.core.alerts import grafana_dashboard, rules
from relayctl.core.gates import THRESHOLDS

REQUIRE_TOOLS = os.environ.get("RELAYCTL_REQUIRE_TOOLS") == "1"
RELAYCTL = [sys.executable, "-m", "relayctl"]


def relayctl(*args: str) -> str:
    proc = subprocess.run([*RELAYCTL, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if REQUIRE_TOOLS:
            pytest.fail("promtool is not on PATH and RELAYCTL_REQUIRE_TOOLS=1")
        pytest.skip("promtool is not on PATH")
    return found


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alerts") / "relay-alerts.yml"
    path.write_text(relayctl("export", "alerts"))
    return path


def test_exported_alert_rules_pass_promtool_check_rules(promtool, rules_file):
    proc = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules())} rules found" in proc.stdout + proc.stderr


def test_exported_rules_carry_every_rule_with_the_gate_thresholds(rules_file):
    text = rules_file.read_text()
    for rule in rules():
        assert f"- alert: {rule.name}" in text
    assert f"< {THRESHOLDS['new_read_share_60']}" in text
    assert f"< {THRESHOLDS['new_read_share_50']}" in text
    assert f"> {THRESHOLDS['dual_write_failure_1']}" in text
    assert f"> {THRESHOLDS['dual_write_failure_5']}" in text


def test_alert_thresholds_follow_the_config_file(tmp_path):
    config = tmp_path / "relayctl.toml"
    config.write_text("[thresholds]\ndual_write_failure_5 = 0.07\n")
    text = relayctl("--config", str(config), "export", "alerts")
    assert "> 0.07" in text and "> 0.05" not in text


# ---------------------------------------------------------------------------------------------
# promtool unit tests: alerts that fire and alerts that stay silent

RULES = {rule.name: rule for rule in rules()}


def fired(name: str, phase: str = "unknown (no relayctl exporter)", **labels: str) -> dict:
    rule = RULES[name]
    return {"exp_labels": {"severity": rule.severity, "team": "relay", **labels},
            "exp_annotations": {"summary": rule.summary, "source": rule.source,
                                "runbook": rule.runbook, "phase": phase}}


def case(series: dict[str, str], checks: list[tuple[str, str, list[dict]]]) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": t, "alertname": name, "exp_alerts": exp}
                            for t, name, exp in checks],
    }


DW_OK = 'relay_dual_write_attempt_total{result="succeeded",workspace_id="ws-a"}'
DW_FAILED = 'relay_dual_write_attempt_total{result="failed",workspace_id="ws-a"}'
READ = 'relay_job_read_path_total{{path="{}",workspace_id="ws-a"}}'

UNIT_TESTS = [
    # dual-write failing at 10% for 10+ minutes: both the 1% alert and the 5% rollback fire
    case({DW_OK: "0+90x30", DW_FAILED: "0+10x30"}, [
        ("12m", "RelayDualWriteFailures", [fired("RelayDualWriteFailures")]),
        ("12m", "RelayDualWriteFailuresRollback", [fired("RelayDualWriteFailuresRollback")]),
        # not for long enough yet: pending, not firing
        ("3m", "RelayDualWriteFailuresRollback", []),
    ]),
    # 3% failures: above the 1% alert, below the 5% rollback line
    case({DW_OK: "0+97x30", DW_FAILED: "0+3x30"}, [
        ("12m", "RelayDualWriteFailures", [fired("RelayDualWriteFailures")]),
        ("12m", "RelayDualWriteFailuresRollback", []),
    ]),
    # healthy dual-write: silent
    case({DW_OK: "0+100x30", DW_FAILED: "0+0x30"}, [
        ("12m", "RelayDualWriteFailures", []),
        ("12m", "RelayDualWriteFailuresRollback", []),
    ]),
    # one cross-workspace read: the isolation alert fires at once
    case({'relay_workspace_mismatch_total{operation="get",workspace_id="ws-a"}':
          "0 0 0 0 1 1 1 1 1 1"}, [
        ("5m", "RelayWorkspaceMismatch", [fired("RelayWorkspaceMismatch")]),
        ("2m", "RelayWorkspaceMismatch", []),
    ]),
    # no mismatches: silent
    case({'relay_workspace_mismatch_total{operation="get",workspace_id="ws-a"}': "0x20"}, [
        ("15m", "RelayWorkspaceMismatch", []),
    ]),
    # backfill errors growing for 10+ minutes
    case({'relay_backfill_errors_total{workspace_id="ws-a"}': "0+2x20"}, [
        ("12m", "RelayBackfillErrors", [fired("RelayBackfillErrors")]),
    ]),
    # a clean backfill: silent
    case({'relay_backfill_errors_total{workspace_id="ws-a"}': "0x20",
          'relay_backfill_migrated_total{workspace_id="ws-a"}': "0+500x20"}, [
        ("12m", "RelayBackfillErrors", []),
    ]),
    # new-schema share at 40% for two hours: the 60% alert and the 50% rollback fire
    case({READ.format("new"): "0+40x180", READ.format("old"): "0+60x180"}, [
        ("130m", "RelayNewReadShareLow", [fired("RelayNewReadShareLow")]),
        ("130m", "RelayNewReadShareRollback", [fired("RelayNewReadShareRollback")]),
        ("30m", "RelayNewReadShareLow", []),  # below 60% for less than an hour
    ]),
    # 55%: below the 60% target but above the rollback line
    case({READ.format("new"): "0+55x180", READ.format("old"): "0+45x180"}, [
        ("130m", "RelayNewReadShareLow", [fired("RelayNewReadShareLow")]),
        ("130m", "RelayNewReadShareRollback", []),
    ]),
    # 404s are not reads of the old schema: 50 new / 10 old / 40 misses is 83% of the found
    # reads (the share gates' measure), so the share alerts stay silent
    case({READ.format("new"): "0+50x180", READ.format("old"): "0+10x180",
          READ.format("miss"): "0+40x180"}, [
        ("130m", "RelayNewReadShareLow", []),
        ("130m", "RelayNewReadShareRollback", []),
    ]),
    # 10% fallback reads: expected before the backfill (phase 3), an alert from phase 5 on,
    # carrying the phase the exporter reports
    case({READ.format("new"): "0+90x180", READ.format("old"): "0+10x180",
          "relay_migration_phase": "3x180"}, [
        ("130m", "RelayFallbackReadsHigh", []),
    ]),
    case({READ.format("new"): "0+90x180", READ.format("old"): "0+10x180",
          "relay_migration_phase": "5x180"}, [
        ("130m", "RelayFallbackReadsHigh", [fired("RelayFallbackReadsHigh", phase="5")]),
    ]),
    # a running backfill whose scan does not move is stalled; one that scans is not, however
    # small migrated/(migrated+exists) is (dual-write copied most records already)
    case({"relay_backfill_running": "1x90",
          'relay_backfill_keys{kind="scanned"}': "500x90",
          'relay_backfill_keys{kind="migrated"}': "5x90",
          'relay_backfill_keys{kind="skipped_exists"}': "495x90"}, [
        ("60m", "RelayBackfillStalled", [fired("RelayBackfillStalled")]),
    ]),
    case({"relay_backfill_running": "1x90",
          'relay_backfill_keys{kind="scanned"}': "0+100x90",
          'relay_backfill_keys{kind="migrated"}': "0+1x90",
          'relay_backfill_keys{kind="skipped_exists"}': "0+99x90"}, [
        ("60m", "RelayBackfillStalled", []),
    ]),
    # a finished run does not scan any more: not stalled
    case({"relay_backfill_running": "0x90", 'relay_backfill_keys{kind="scanned"}': "500x90"}, [
        ("60m", "RelayBackfillStalled", []),
    ]),
    # healthy read-routing at 90% new: silent
    case({READ.format("new"): "0+90x180", READ.format("old"): "0+10x180"}, [
        ("130m", "RelayNewReadShareLow", []),
        ("130m", "RelayNewReadShareRollback", []),
    ]),
]


def test_promtool_unit_tests_fire_and_stay_silent_as_the_seeds_say(promtool, rules_file):
    spec = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": UNIT_TESTS}
    test_file = rules_file.parent / "relay-alerts.test.yml"
    test_file.write_text(json.dumps(spec, indent=2))  # JSON is YAML
    proc = subprocess.run([promtool, "test", "rules", test_file.name], capture_output=True,
                          text=True, timeout=120, cwd=rules_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_unit_tests_can_fail_so_the_success_above_means_something(promtool,
                                                                          rules_file):
    wrong = case({DW_OK: "0+100x30", DW_FAILED: "0+0x30"}, [
        ("12m", "RelayDualWriteFailuresRollback", [fired("RelayDualWriteFailuresRollback")]),
    ])
    spec = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": [wrong]}
    test_file = rules_file.parent / "wrong.test.yml"
    test_file.write_text(json.dumps(spec))
    proc = subprocess.run([promtool, "test", "rules", test_file.name], capture_output=True,
                          text=True, timeout=120, cwd=rules_file.parent)
    assert proc.returncode != 0


# ---------------------------------------------------------------------------------------------
# Grafana


def test_exported_grafana_dashboard_is_json_with_the_seed_queries():
    dashboard = json.loads(relayctl("export", "grafana"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    joined = "\n".join(exprs)
    # migration completion: migrated / (migrated + skipped exists)
    completion = next(e for e in exprs if "relay_backfill_migrated_total" in e)
    assert 'relay_backfill_skipped_total{' in completion and 'reason="exists"' in completion
    assert "rate(relay_backfill_scanned_total" in joined  # throughput
    assert "rate(relay_backfill_errors_total" in joined  # error rate
    assert "histogram_quantile(0.99" in joined and "relay_backfill_duration_seconds_bucket" \
        in joined  # p99
    assert "relay_job_read_path_total" in joined  # read-path shares
    assert 'relay_dual_write_attempt_total{result="failed",' in joined
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    dw = next(p for p in dashboard["panels"] if "Dual-write" in p["title"])
    steps = [s["value"] for s in dw["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, THRESHOLDS["dual_write_failure_1"], THRESHOLDS["dual_write_failure_5"]]


APP_COUNTERS = ("relay_job_read_path_total", "relay_job_list_read_path_total",
                "relay_dual_write_attempt_total", "relay_workspace_mismatch_total",
                "relay_backfill_migrated_total", "relay_backfill_scanned_total",
                "relay_backfill_skipped_total", "relay_backfill_errors_total")


def test_the_workspace_variable_filters_every_series_that_has_a_workspace():
    dashboard = grafana_dashboard()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name, matchers in re.findall(r"(relay_[a-z_]+)(\{[^}]*\})?", target["expr"]):
                if name in APP_COUNTERS:
                    assert 'workspace_id=~"$workspace"' in matchers, (panel["title"], name)


def test_the_dashboard_round_trips_through_the_grafana_foundation_sdk():
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    ours = json.loads(relayctl("export", "dashboard"))
    decoded = Dashboard.from_json(ours)
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    for key in ("uid", "title", "schemaVersion", "tags", "refresh"):
        assert again[key] == ours[key], key
    assert [(p["id"], p["title"], p["type"], p["gridPos"]) for p in again["panels"]] == \
        [(p["id"], p["title"], p["type"], p["gridPos"]) for p in ours["panels"]]
    assert [[(t["refId"], t["expr"]) for t in p["targets"]] for p in again["panels"]] == \
        [[(t["refId"], t["expr"]) for t in p["targets"]] for p in ours["panels"]]
    variables = {v["name"]: v for v in again["templating"]["list"]}
    assert variables["workspace"]["query"] == "label_values(relay_job_read_path_total, " \
        "workspace_id)" and variables["workspace"]["multi"] is True
    assert [p["fieldConfig"]["defaults"]["thresholds"] for p in again["panels"]] == \
        [p["fieldConfig"]["defaults"]["thresholds"] for p in ours["panels"]]
