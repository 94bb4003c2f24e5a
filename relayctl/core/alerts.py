"""Prometheus alerting rules and a Grafana dashboard built from the gates' thresholds.

Migration-wide state (phase, backfill progress, fleet) comes from `relayctl exporter`, so
panels and alerts have data whether or not an engine process runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relayctl.core.gates import THRESHOLDS

READS = "relay_job_read_path_total"
DW = "relay_dual_write_attempt_total"


@dataclass(frozen=True)
class Rule:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    source: str
    runbook: str = ""


def _share(path: str, window: str, offset: str = "") -> str:
    """Share of all reads for misses; of the reads that found a job for new/old, like the
    share gates (misses have their own gate and alert)."""
    off = f" offset {offset}" if offset else ""
    among = "" if path == "miss" else '{path=~"new|old"}'
    return (f'sum(rate({READS}{{path="{path}"}}[{window}]{off})) / '
            f"sum(rate({READS}{among}[{window}]{off}))")


PHASE = "relay_migration_phase"
# Shown with every alert: the phase the exporter reads from Redis when the alert fires.
PHASE_ANNOTATION = ('{{ with query "max(relay_migration_phase)" }}{{ . | first | value }}'
                    "{{ else }}unknown (no relayctl exporter){{ end }}")
RUNBOOKS = {
    "RelayNewReadShareLow": "Check relay_job_read_path_total by workspace; if it stays <50% "
                            "run `relayctl rollback read-routing`.",
    "RelayNewReadShareRollback": "Step 1 rollback: `relayctl rollback read-routing`.",
    "RelayDualWriteFailures": "Inspect dual-write errors in the app logs; `relayctl check`.",
    "RelayDualWriteFailuresRollback": "Step 3 rollback: `relayctl rollback dual-write`.",
    "RelayDualWriteLatencyHigh": "Check Redis latency and memory (`relayctl status`).",
    "RelayWorkspaceMismatch": "Emergency rollback: `relayctl rollback emergency`; alert "
                              "security.",
    "RelayMissRateIncrease": "Compare 404s by workspace; `relayctl verify` for missing copies.",
    "RelayJobErrorRateIncrease": "Check the job store's errors by operation; `relayctl check`.",
    "RelayDeserializeErrors": "Corrupt records: `relayctl verify --full` and inspect them.",
    "RelayBackfillErrors": "`relayctl backfill status`; investigate the errors it names.",
    "RelayBackfillSlow": "Reduce the rate: `relayctl backfill set --rps N`.",
    "RelayBackfillStalled": "`relayctl backfill status`: resume a dead run with "
                            "`relayctl backfill --execute --resume`.",
    "RelayFallbackReadsHigh": "Do not disable fallback yet: finish the backfill and "
                              "`relayctl verify`.",
    "RelayEvictionsDuringMigration": "Keys were evicted: jobs may be lost. Stop writes that "
                                     "grow memory, set maxmemory-policy noeviction, then "
                                     "`relayctl verify`.",
    "RelayMemoryHeadroomLow": "Raise maxmemory or archive first; the backfill refuses to start "
                              "(`relayctl backfill --dry-run` shows the projection).",
    "RelayReplicasOutOfSync": "Slow the backfill (`relayctl backfill set --rps N`) and check "
                              "the replica's link.",
    "RelayBackfillThrottled": "`relayctl backfill status` names the guard; fix its cause or "
                              "retune with `relayctl backfill set`.",
}


def rules(thresholds: dict[str, float] | None = None) -> list[Rule]:
    t = {**THRESHOLDS, **(thresholds or {})}
    miss_now = _share("miss", "1h")
    return [Rule(**{**r.__dict__, "runbook": RUNBOOKS[r.name]}) for r in _rules(t, miss_now)]


def _rules(t: dict[str, float], miss_now: str) -> list[Rule]:
    return [
        Rule("RelayNewReadShareLow", f"{_share('new', '5m')} < {t['new_read_share_60']}", "1h",
             "warning",
             f"New-schema read share below {t['new_read_share_60']:.0%} for over an hour",
             "000: Alert: If new path <60% for >1 hour"),
        Rule("RelayNewReadShareRollback", f"{_share('new', '5m')} < {t['new_read_share_50']}",
             "15m", "critical",
             f"New-schema read share below {t['new_read_share_50']:.0%}: step 1 rollback trigger",
             "000: If read path metrics show <50% new schema"),
        Rule("RelayDualWriteFailures",
             f'sum(rate({DW}{{result="failed"}}[5m])) / sum(rate({DW}[5m])) '
             f"> {t['dual_write_failure_1']}", "5m", "warning",
             f"Dual-write failures above {t['dual_write_failure_1']:.0%}",
             "000: Alert: If failed >1%"),
        Rule("RelayDualWriteFailuresRollback",
             f'sum(rate({DW}{{result="failed"}}[5m])) / sum(rate({DW}[5m])) '
             f"> {t['dual_write_failure_5']}", "5m", "critical",
             f"Dual-write failures above {t['dual_write_failure_5']:.0%}: "
             "disable AI_JOBS_NEW_SCHEMA",
             "000: If dual-write failure rate >5%, disable AI_JOBS_NEW_SCHEMA"),
        Rule("RelayDualWriteLatencyHigh",
             "histogram_quantile(0.99, sum by (le) "
             "(rate(relay_dual_write_duration_seconds_bucket[5m]))) > 0.1", "5m", "warning",
             "Dual-write p99 latency above 100 ms", "000: Alert: ... or latency spike >100ms"),
        Rule("RelayWorkspaceMismatch", "sum(increase(relay_workspace_mismatch_total[5m])) > 0",
             "0m", "critical",
             "Workspace mismatch detected: emergency rollback, alert security",
             "000: Alert: If workspace_id mismatch detected; Emergency Rollback"),
        Rule("RelayMissRateIncrease",
             f"({miss_now}) > {1 + t['miss_increase']} * ({_share('miss', '1h', '1d')})",
             "15m", "warning",
             f"Job 404s (read misses) up more than {t['miss_increase']:.0%} on a day ago",
             "000: If 404 errors increase >10%"),
        Rule("RelayJobErrorRateIncrease",
             'sum(rate(relay_job_requests_total{outcome="error"}[1h])) > 1.5 * '
             'sum(rate(relay_job_requests_total{outcome="error"}[1h] offset 1d))', "15m",
             "warning", "Job store error rate up more than 50%",
             "000: Alert: If error rate increases >50%"),
        Rule("RelayDeserializeErrors",
             f"sum(increase(relay_job_deserialize_errors_total[1h])) > "
             f"{t['deserialize_errors']:g}", "0m", "warning",
             f"Over {t['deserialize_errors']:g} deserialization errors/hour (corruption?)",
             "000: Alert: If deserialization errors >100/hour"),
        Rule("RelayBackfillErrors", "sum(increase(relay_backfill_errors_total[5m])) > 0", "5m",
             "warning", "Backfill errors for more than 5 minutes: investigate",
             "003: Errors > 0 for > 5 min"),
        Rule("RelayBackfillSlow",
             "histogram_quantile(0.99, sum by (le) "
             "(rate(relay_backfill_duration_seconds_bucket[10m]))) > 5", "10m", "warning",
             "Backfill p99 batch duration above 5 s: reduce --rps",
             "003: p99 duration > 5 s for > 10 min"),
        # scan progress, not migrated/(migrated+exists): dual-write copies most records first,
        # so that ratio is tiny during a healthy backfill
        Rule("RelayBackfillStalled",
             "max(relay_backfill_running) == 1 and on() "
             'max(delta(relay_backfill_keys{kind="scanned"}[30m])) <= 0', "15m", "warning",
             "Backfill state says running but no key was scanned for 30 minutes",
             "003: Migration stalled"),
        Rule("RelayEvictionsDuringMigration",
             'max(relay_gate_status{gate="no_evictions_since_phase",status="FAIL"}) == 1',
             "0m", "critical", "Redis evicted keys since the phase began: jobs may be lost",
             "issue 12: any increase of evicted_keys"),
        Rule("RelayMemoryHeadroomLow",
             'max(relay_gate_status{gate="memory_headroom",status="FAIL"}) == 1', "15m",
             "warning", "Projected memory after the copy exceeds the headroom threshold",
             "000: If Redis memory spike >50%, consider increasing capacity"),
        Rule("RelayReplicasOutOfSync",
             'max(relay_gate_status{gate="replicas_in_sync",status="FAIL"}) == 1', "5m",
             "warning", "A replica is not online or lags beyond its threshold",
             "issue 12: replica lag"),
        Rule("RelayBackfillThrottled", "max(relay_backfill_throttled) == 1", "30m", "info",
             "A backfill guard has held the run for 30 minutes", "issue 12: throttled"),
        # fallback reads are expected until the backfill is done: only from phase 5 on
        Rule("RelayFallbackReadsHigh",
             f"({_share('old', '1h')} > {t['old_read_share_2']}) and on() "
             f"(max({PHASE}) >= 5)", "1h", "info",
             f"Over {t['old_read_share_2']:.0%} of found reads still hit the old schema",
             "000: Step 5 prerequisite: <2% of reads still hitting old schema"),
    ]


def _yaml_str(text: str) -> str:
    return json.dumps(text)


def alert_rules_yaml(thresholds: dict[str, float] | None = None) -> str:
    """Prometheus rule file; every string is JSON-quoted, which YAML accepts as-is."""
    lines = ["groups:", "  - name: relayctl-migration", "    rules:"]
    for rule in rules(thresholds):
        lines += [
            f"      - alert: {rule.name}",
            f"        expr: {_yaml_str(rule.expr)}",
            f"        for: {rule.for_}",
            "        labels:",
            f"          severity: {rule.severity}",
            "          team: relay",
            "        annotations:",
            f"          summary: {_yaml_str(rule.summary)}",
            f"          source: {_yaml_str(rule.source)}",
            f"          runbook: {_yaml_str(rule.runbook)}",
            f"          phase: {_yaml_str(PHASE_ANNOTATION)}",
        ]
    return "\n".join(lines) + "\n"


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int,
           thresholds: list[tuple[str, float | None]] | None = None) -> dict[str, Any]:
    steps = [{"color": c, "value": v} for c, v in (thresholds or [("green", None)])]
    return {
        "id": pid, "type": "timeseries", "title": title,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit,
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend}
                    for i, (e, legend) in enumerate(exprs)],
    }


def grafana_dashboard(thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """A dashboard with the seed's queries and the gates' thresholds as colours; `$workspace`
    filters every panel whose series carry a workspace, the exporter's are migration-wide."""
    t = {**THRESHOLDS, **(thresholds or {})}
    ws = 'workspace_id=~"$workspace"'
    panels = [
        _panel(1, "Read-path shares (new / old / miss)", [
            (f'sum by (path) (rate({READS}{{{ws}}}[5m])) / ignoring(path) group_left '
             f"sum(rate({READS}{{{ws}}}[5m]))", "{{path}}")],
            "percentunit", 0, 0,
            [("red", None), ("yellow", t["new_read_share_50"]),
             ("green", t["new_read_share_80"])]),
        _panel(2, "List-path shares (new / mixed / old)", [
            (f"sum by (path) (rate(relay_job_list_read_path_total{{{ws}}}[5m])) / "
             f"ignoring(path) group_left sum(rate(relay_job_list_read_path_total{{{ws}}}[5m]))",
             "{{path}}")],
            "percentunit", 12, 0),
        _panel(3, "Dual-write failure rate", [
            (f'sum(rate({DW}{{result="failed",{ws}}}[5m])) / sum(rate({DW}{{{ws}}}[5m]))',
             "failed")],
            "percentunit", 0, 8,
            [("green", None), ("yellow", t["dual_write_failure_1"]),
             ("red", t["dual_write_failure_5"])]),
        # each backfill panel: the run's state from relayctl exporter (there with or without
        # an engine), then the seed's query on the engine's own counters (while one runs)
        _panel(4, "Migration completion % (seed query)", [
            ('max(relay_backfill_keys{kind="migrated"}) / (max(relay_backfill_keys'
             '{kind="migrated"}) + max(relay_backfill_keys{kind="skipped_exists"}))',
             "completion (run state)"),
            ("max(relay_backfill_progress_ratio)", "keyspace scanned (run state)"),
            (f"sum(relay_backfill_migrated_total{{{ws}}}) / (sum(relay_backfill_migrated_total"
             f'{{{ws}}}) + sum(relay_backfill_skipped_total{{{ws},reason="exists"}}))',
             "completion (engine)")], "percentunit", 12, 8),
        _panel(5, "Backfill throughput (keys/s, seed query)", [
            ("max(relay_backfill_rate_keys_per_second)", "scanned/s (run state)"),
            (f"sum(rate(relay_backfill_scanned_total{{{ws}}}[1m]))", "scanned/s (engine)")],
            "ops", 0, 16),
        _panel(6, "Backfill errors (seed query)", [
            ('max(relay_backfill_keys{kind="errors"})', "errors (run state)"),
            (f"sum(rate(relay_backfill_errors_total{{{ws}}}[5m]))", "errors/s (engine)")],
            "short", 12, 16, [("green", None), ("red", 0.000001)]),
        _panel(11, "Backfill batch latency p99 (seed query, engine)", [
            ("histogram_quantile(0.99, sum by (le) "
             "(rate(relay_backfill_duration_seconds_bucket[5m])))", "p99")],
            "s", 0, 40, [("green", None), ("yellow", 2.0), ("red", 5.0)]),
        _panel(7, "Migration phase and fleet (from relayctl exporter)", [
            (f"max({PHASE})", "phase"),
            ("max by (state) (relay_fleet_instances)", "{{state}} instances")],
            "short", 0, 24),
        _panel(8, "Workspace mismatches (isolation)", [
            (f"sum(increase(relay_workspace_mismatch_total{{{ws}}}[5m]))", "mismatches")],
            "short", 12, 24, [("green", None), ("red", 1)]),
        _panel(9, "Gates not passing (current phase, from relayctl exporter)", [
            ('sum by (status) (relay_gate_status{status!="PASS"})', "{{status}}")],
            "short", 0, 32),
        _panel(10, "Backfill run health (from relayctl exporter)", [
            ("max by (health) (relay_backfill_health) == 1", "{{health}}")], "short", 12, 32),
    ]
    return {
        "title": "Relay job store migration (relayctl)",
        "uid": "relayctl-migration",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "tags": ["relay", "migration"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "workspace", "type": "query", "includeAll": True, "multi": True,
             "allValue": ".*", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": f"label_values({READS}, workspace_id)"},
        ]},
        "panels": panels,
    }
