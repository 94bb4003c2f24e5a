"""The console and `relayctl check` give the same gate verdict from the same `--config` and
`--prometheus-url`: in the gate panel, in the console's advance, and on the command line.

Real redis-server, real Prometheus (Debian's) scraping a real /metrics endpoint; the console
is the app `relayctl tui` builds from its options, driven with Pilot.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from textual.pilot import Pilot

from relayctl.cli import main
from relayctl.core import checklist as checklist_core
from relayctl.core.keys import CHECKLIST_KEY
from relayctl.core.metrics import OTHER, Metrics
from relayctl.tui.app import RelayApp
from tests.conftest import wait_for
from tests.tui.kit import (
    ACTOR,
    audit_entries,
    confirm_with_reason,
    relayctl,
    run_pilot,
    wait_connected,
    wait_until,
)

GATE = "new_read_share_60"  # phase 1: new-schema share of found reads >= 60% by default
READS = {"new": 40, "old": 60, "miss": 0}  # a 40% share: FAIL by default, PASS at 30%


def prom_value(url: str, promql: str) -> float | None:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=3) as resp:
        result = json.loads(resp.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus_with_reads(prometheus):
    """A /metrics endpoint whose read counters go 0 -> READS, scraped by Prometheus until
    Prometheus sees the increase (every series exists at 0 before the first scrape)."""
    metrics = Metrics()
    for path in READS:
        metrics.read_path.labels(path, OTHER)
    endpoint = metrics.serve(0)
    try:
        prom = prometheus(f"127.0.0.1:{endpoint.port}")
        wait_for(lambda: prom_value(prom.url, "count(relay_job_read_path_total)") == 3, 30,
                 "Prometheus to scrape the zero counters", interval=0.2)
        for path, n in READS.items():
            metrics.read_path.labels(path, OTHER).inc(n)
        increase = 'sum(increase(relay_job_read_path_total{{path="{}"}}[1h]))'
        wait_for(lambda: all(prom_value(prom.url, increase.format(p)) for p in ("new", "old")),
                 30, "Prometheus to see the reads", interval=0.2)
        yield prom.url
    finally:
        endpoint.close()


def share(value: str) -> float:
    """A share gate's value ("39.98%": Prometheus extrapolates each series' increase)."""
    return round(float(value.rstrip("%")))


def check_phase_1(redis_url: str, *options: str) -> dict[str, tuple[str, str]]:
    out = relayctl(redis_url, *options, "check", "--phase", "1", "--json")
    assert out.returncode in (1, 3), out.stderr
    [entry] = json.loads(out.stdout)["phases"]
    return {g["gate"]: (g["status"], g["value"]) for g in entry["gates"]}


def console_from_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> RelayApp:
    """The app `relayctl ... tui` builds from its options (its run() hands it to Pilot)."""
    built: list[RelayApp] = []
    monkeypatch.setattr(RelayApp, "run", lambda self, *a, **k: built.append(self))
    with pytest.raises(SystemExit) as exited:
        main([*argv, "tui", "--refresh", "0.5"])
    assert exited.value.code == 0 and len(built) == 1
    built[0].animation_level = "none"
    return built[0]


def test_a_config_threshold_gives_the_same_verdict_in_check_the_gate_panel_and_the_advance(
        redis_url, r, tmp_path, prometheus_with_reads, monkeypatch):
    prom_url = prometheus_with_reads
    config = tmp_path / "relayctl.toml"
    config.write_text(f"[thresholds]\n{GATE} = 0.3\n")
    r.hset(CHECKLIST_KEY, "phase", "1")
    checklist_core.mark(r, ["p1-old-schema", "p1-old-share", "p1-list-path"], actor="pytest",
                        reason="setup")

    # the threshold decides the verdict: FAIL with the seeds' 60%, PASS with the config's 30%
    default = check_phase_1(redis_url, "--prometheus-url", prom_url)
    assert default[GATE][0] == "FAIL" and share(default[GATE][1]) == 40, default
    cli = check_phase_1(redis_url, "--prometheus-url", prom_url, "--config", str(config))
    assert cli[GATE][0] == "PASS" and share(cli[GATE][1]) == 40, cli

    app = console_from_cli(monkeypatch, "--redis-url", redis_url, "--actor", ACTOR,
                           "--prometheus-url", prom_url, "--config", str(config))

    async def scenario(pilot: Pilot) -> None:
        await wait_connected(pilot)
        await wait_until(pilot, lambda: pilot.app.state.gates, "the gate panel")
        panel = {g.gate: (g.status, g.value) for g in pilot.app.state.gates}
        # the panel reads Prometheus (no /metrics given) and applies the config's threshold
        assert panel[GATE][0] == "PASS" and share(panel[GATE][1]) == 40, panel
        assert {g: s for g, (s, _v) in panel.items()} == {g: s for g, (s, _v) in cli.items()}
        not_passing = sorted(g for g, (s, _v) in panel.items() if s != "PASS")
        assert not_passing, "other phase 1 gates wait: the advance overrides exactly those"

        before = len(audit_entries(r))
        await pilot.press("c")
        await pilot.press("A")
        await confirm_with_reason(pilot, "parity")
        # the advance re-evaluates every gate; the config's PASS is not overridden, so it
        # moves on only if the advance used the same thresholds and Prometheus as the panel
        await wait_until(pilot, lambda: r.hget(CHECKLIST_KEY, "phase") == "2", "the advance",
                         timeout=15)
        entries = audit_entries(r)[before:]
        overridden = sorted(e["target"].split("/", 1)[1] for e in entries
                            if e["action"] == "gate.override")
        assert overridden == not_passing and GATE not in overridden

    run_pilot(app, scenario)


def test_a_threshold_the_gates_do_not_know_stops_relayctl_tui_before_the_console(
        redis_url, tmp_path):
    config = tmp_path / "relayctl.toml"
    config.write_text("[thresholds]\nnew_read_share_61 = 0.3\n")
    out = relayctl(redis_url, "--config", str(config), "tui")
    assert out.returncode == 2
    assert out.stderr.strip() == ("relayctl: error: unknown threshold(s) in config: "
                                  "new_read_share_61"), out.stderr
