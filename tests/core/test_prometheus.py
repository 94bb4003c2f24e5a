"""The gates, alert rules, dashboard and exporter against a real Prometheus (Debian's), which
scrapes a JobStore's /metrics (job relay-api) and `relayctl exporter`'s (job relayctl-exporter)
every second with the exported rules loaded. Nothing here mocks Prometheus."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from relayctl.core.alerts import alert_rules_yaml, grafana_dashboard, rules
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.config import Config
from relayctl.core.demo import seed_pre_migration
from relayctl.core.evaluation import gate_config
from relayctl.core.exporter import MigrationCollector, serve
from relayctl.core.gates import FAIL, PASS, UNKNOWN, GateContext, GateResult, evaluate
from relayctl.core.jobs import JobStore
from relayctl.core.keys import CHECKLIST_KEY
from relayctl.core.metrics import Metrics
from relayctl.core.scrape import PromOptions
from tests.conftest import PrometheusServer, wait_for
from tests.core.test_gates import App, _put_job

APP_JOB = 'job="relay-api"'
# every gate that reads application metrics (flags_converged: traffic without heartbeats)
METRIC_GATES = ("new_read_share_50", "new_read_share_60", "new_read_share_80",
                "new_read_share_98", "old_read_share_2", "old_read_share_0",
                "dual_write_failure_1", "dual_write_failure_5", "dual_write_success",
                "workspace_mismatch", "deserialize_errors", "error_rate", "flags_converged")


@dataclass
class Stack:
    app: App
    prom: PrometheusServer
    exporter_url: str

    def prom_ctx(self, selector: str = APP_JOB, window_s: float = 600) -> GateContext:
        return GateContext(client=self.app.r, window_s=window_s,
                           prometheus_options=PromOptions(self.prom.url, selector=selector))

    def metrics_ctx(self) -> GateContext:
        return GateContext(client=self.app.r, metrics_urls=[self.app.url])

    def scraped(self) -> None:
        """Wait for a scrape of every target that started after now (so it has every event
        so far)."""
        since = time.time()
        wait_for(lambda: all(float(r["value"][1]) > since for r in self.prom.query(
            "timestamp(up)")), 10, "a fresh scrape", interval=0.1)


def _hostport(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture
def stack(r: redis.Redis, redis_url: str, prometheus) -> Iterator[Stack]:
    from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW, set_flag

    for name in (PREFERS_NEW, FALLBACK_OLD, DUAL_WRITE):
        set_flag(r, name, True, actor="test", reason="prometheus test setup")
    _put_job(r, "ws-a", "job-new", new=True)
    _put_job(r, "ws-a", "job-old", new=False)
    metrics = Metrics(labelled_workspaces=["ws-a"])
    app_server = metrics.serve(0)
    store = JobStore(r, background=False, pins={}, metrics=metrics)
    exporter_client = redis.Redis.from_url(redis_url, decode_responses=True)
    exporter = serve(MigrationCollector(connect=lambda: exporter_client,
                                        gates=gate_config(Config(), redis_url=redis_url)), 0)
    prom = prometheus(jobs={"relay-api": (_hostport(app_server.url),),
                            "relayctl-exporter": (_hostport(exporter.url),)},
                      rules=alert_rules_yaml())
    try:
        # the zero counters and the exporter's phase are in Prometheus before any event
        wait_for(lambda: prom.query("count(relay_workspace_mismatch_total)")
                 and prom.query("relay_migration_phase"), 30, "the first scrapes", interval=0.2)
        yield Stack(app=App(r=r, store=store, metrics=metrics, url=app_server.url), prom=prom,
                    exporter_url=exporter.url)
    finally:
        store.close()
        app_server.close()
        exporter.close()
        exporter_client.close()


def verdicts(ctx: GateContext) -> dict[str, GateResult]:
    return {g.gate: g for g in evaluate(ctx, METRIC_GATES)}


def test_every_rule_is_healthy_and_one_mismatch_fires_the_alert_and_fails_both_gates(stack):
    def rule_health() -> dict[str, str]:
        with urllib.request.urlopen(stack.prom.url + "/api/v1/rules", timeout=3) as resp:
            groups = json.loads(resp.read())["data"]["groups"]
        return {r["name"]: r["health"] for g in groups for r in g["rules"]}

    wait_for(lambda: set(rule_health().values()) == {"ok"}, 20, "every rule evaluated",
             interval=0.2)
    assert set(rule_health()) == {r.name for r in rules()}

    stack.app.reads(new=20)
    stack.scraped()
    assert verdicts(stack.prom_ctx())["workspace_mismatch"].status == PASS
    # ws-b asks for ws-a's job: one rejected record, the very first event of that counter
    assert stack.app.store.get_job("ws-b", "job-old") is None
    stack.scraped()
    from_prom = verdicts(stack.prom_ctx())["workspace_mismatch"]
    from_metrics = verdicts(stack.metrics_ctx())["workspace_mismatch"]
    assert (from_prom.status, from_prom.value) == (FAIL, "1") == \
        (from_metrics.status, from_metrics.value)
    wait_for(lambda: stack.prom.query(
        'ALERTS{alertname="RelayWorkspaceMismatch",alertstate="firing"}'), 15,
        "RelayWorkspaceMismatch to fire", interval=0.2)
    [alert] = stack.prom.query('ALERTS{alertname="RelayWorkspaceMismatch"}')
    assert alert["metric"]["severity"] == "critical"


def test_a_selector_that_matches_no_target_makes_every_prometheus_gate_unknown(stack):
    stack.app.reads(new=60)
    stack.scraped()
    for selector in ('job="relay-api",env="prod"', 'job="nothing-here"'):
        results = verdicts(stack.prom_ctx(selector=selector))
        del results["flags_converged"]  # a Redis gate: 0 heartbeats, no traffic seen: WAIT
        assert {g: r.status for g, r in results.items()} == \
            dict.fromkeys(results, UNKNOWN) and len(results) == len(METRIC_GATES) - 1
        assert all("matches no up target" in r.detail for r in results.values()), results


def test_an_absent_series_is_unknown_not_zero(stack):
    # the exporter's target is up but exports no application counters
    results = verdicts(stack.prom_ctx(selector='job="relayctl-exporter"'))
    assert results["workspace_mismatch"].status == UNKNOWN
    assert "no relay_workspace_mismatch_total" in results["workspace_mismatch"].detail
    assert results["deserialize_errors"].status == UNKNOWN


def test_gate_verdicts_and_values_agree_between_metrics_and_prometheus_in_three_states(stack):
    app = stack.app
    states = {
        "healthy": lambda: (app.reads(new=95, old=1, miss=4), app.writes(ok=100)),
        "dual-write failing": lambda: app.writes(ok=20, failed=15),
        "read-routing": lambda: app.reads(new=10, old=200),
    }
    seen = {}
    for name, traffic in states.items():
        traffic()
        stack.scraped()
        prom, direct = verdicts(stack.prom_ctx()), verdicts(stack.metrics_ctx())
        assert {g: (r.status, r.value) for g, r in prom.items()} == \
            {g: (r.status, r.value) for g, r in direct.items()}, name
        seen[name] = {g: r.status for g, r in prom.items()}
    assert seen["healthy"]["dual_write_failure_1"] == PASS
    assert seen["dual-write failing"]["dual_write_failure_5"] == FAIL
    assert seen["read-routing"]["new_read_share_50"] == FAIL
    # traffic, but no instance sends a heartbeat: the fleet gate cannot pass
    assert seen["healthy"]["flags_converged"] == UNKNOWN
    assert verdicts(stack.prom_ctx())["flags_converged"].value == "1 scrape targets, 0 heartbeats"


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A loopback proxy in front of Prometheus that wants basic auth and logs each query."""

    upstream = ""
    expected = ""
    queries: list[str] = []

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="prom"')
            self.end_headers()
            return
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if self.path.startswith("/api/v1/query"):
            self.queries.append(query["query"][0])
        with urllib.request.urlopen(self.upstream + self.path, timeout=3) as resp:
            body = resp.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_proxy(stack) -> Iterator[tuple[type[_Proxy], int]]:
    handler = type("Proxy", (_Proxy,), {
        "upstream": stack.prom.url, "queries": [],
        "expected": "Basic " + base64.b64encode(b"sre:s3cr%t!").decode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()


def _check_all(redis_url: str, prom_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayctl", "--redis-url", redis_url, "--prometheus-url",
         prom_url, "--prometheus-selector", APP_JOB, "--prometheus-header",
         "X-Scope-OrgID: tenant-a", "check", "--all", "--window", "600", "--json"],
        capture_output=True, text=True, timeout=60)


def test_check_all_behind_basic_auth_sends_each_distinct_query_once_and_hides_the_password(
        stack, auth_proxy, redis_url):
    handler, port = auth_proxy
    stack.app.reads(new=80, old=20)
    stack.scraped()
    out = _check_all(redis_url, f"http://sre:s3cr%25t%21@127.0.0.1:{port}")
    assert out.returncode in (1, 3), out.stderr
    report = json.loads(out.stdout)
    assert len(handler.queries) == len(set(handler.queries)) == report["prometheus_queries"]
    # up, then one per counter: reads, dual-writes, mismatches, deserialize errors, requests
    assert len(report["phases"]) == 7 and len(handler.queries) == 6, handler.queries
    shares = {g["value"] for p in report["phases"] for g in p["gates"]
              if g["gate"].startswith("new_read_share")}
    assert shares == {"80.00%"}  # the same number in every phase: one evaluation time
    assert "relay_job_read_path_total" in report["metrics_read"]
    assert "s3cr" not in out.stdout + out.stderr

    handler.queries.clear()
    wrong = _check_all(redis_url, f"http://sre:wr0ng-pw@127.0.0.1:{port}")
    gates = {g["gate"]: g for p in json.loads(wrong.stdout)["phases"] for g in p["gates"]}
    assert gates["new_read_share_60"]["status"] == UNKNOWN
    assert "wr0ng" not in wrong.stdout + wrong.stderr and not handler.queries


def test_a_window_of_fewer_than_four_scrapes_is_refused_with_a_clear_error(stack, redis_url):
    out = subprocess.run(
        [sys.executable, "-m", "relayctl", "--redis-url", redis_url, "--prometheus-url",
         stack.prom.url, "check", "--phase", "1", "--window", "2"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("relayctl: error: --window 2s is shorter than 4 scrape "
                                  "intervals (1s): give at least 4s")


def _exported(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_a_finished_backfill_stays_on_the_exporter_after_the_engine_exited(stack):
    r = stack.app.r
    seed_pre_migration(r, stack.app.store.schema, ["ws-a", "ws-b"], jobs=300,
                       recent_share=0.0, invalid=0)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0  # engine gone
    r.hset(CHECKLIST_KEY, "phase", "4")
    text = _exported(stack.exporter_url)
    assert "relay_backfill_progress_ratio 1.0" in text
    assert 'relay_backfill_health{health="finished"} 1.0' in text
    assert "relay_migration_phase 4.0" in text
    migrated = next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith('relay_backfill_keys{kind="migrated"}'))
    assert migrated >= 300
    wait_for(lambda: stack.prom.query('relay_backfill_keys{kind="migrated"} >= 300'), 10,
             "Prometheus to have the finished run", interval=0.2)


def test_every_dashboard_expression_returns_data_on_the_running_prometheus(stack):
    app = stack.app
    seed_pre_migration(app.r, app.store.schema, ["ws-a"], jobs=200, recent_share=0.0,
                       invalid=0)
    for _ in range(3):
        app.reads(new=30, old=5)
        app.writes(ok=10)
        app.store.list_jobs("ws-a", limit=5)
        time.sleep(1.2)
    # the engine reports its own counters (the seed's queries) on the app's registry here
    assert Backfill(app.r, BackfillOptions(execute=True, force=True, rps=100),
                    metrics=app.metrics).run() == 0
    stack.scraped()
    end = time.time()
    empty = []
    for panel in grafana_dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$workspace", ".*")
            # end at the fresh scrape exactly: a rounded-down end can miss a new series
            q = urllib.parse.urlencode({"query": expr, "start": f"{end - 60:.3f}",
                                        "end": f"{end:.3f}", "step": "1"})
            with urllib.request.urlopen(f"{stack.prom.url}/api/v1/query_range?{q}",
                                        timeout=5) as resp:
                if not json.loads(resp.read())["data"]["result"]:
                    empty.append((panel["title"], expr))
    assert not empty, empty
