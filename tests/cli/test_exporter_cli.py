"""`relayctl exporter` as an operator runs it: under the console ACL role (read-only), its
password nowhere in its output, every scrape a bounded read of the migration state."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import redis

from relayctl.core.acl import rules_for
from relayctl.core.demo import seed_pre_migration
from relayctl.core.keys import CHECKLIST_KEY, KeySchema
from tests.conftest import free_port, wait_for

PASSWORD = "exp0rter-pw"


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def test_the_exporter_runs_under_the_console_role_with_a_bounded_read_per_scrape(
        r: redis.Redis, redis_server):
    seed_pre_migration(r, KeySchema(), ["ws-a"], jobs=2000, recent_share=0.0, invalid=0)
    r.hset(CHECKLIST_KEY, "phase", "2")
    [console] = rules_for("console", "relay-exporter-test", KeySchema())
    args = console.command.split()[2:]
    r.execute_command("ACL", "SETUSER", *args, f">{PASSWORD}")
    r.execute_command("ACL", "LOG", "RESET")
    url = f"redis://relay-exporter-test:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "relayctl", "--redis-url", url, "exporter",
                             "--port", str(port), "--duration", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = f"http://127.0.0.1:{port}/metrics"
        first = wait_for(lambda: _scrape(endpoint), 15, "the exporter to serve")
        assert "relay_exporter_redis_up 1.0" in first and "relay_migration_phase 2.0" in first
        assert 'relay_gate_status{gate="error_rate",phase="2",status="UNKNOWN"} 1.0' in first
        # commands per scrape, measured on the server: the same with 2,000 or 4,000 jobs
        per_scrape = []
        for jobs in (0, 2000):
            if jobs:
                seed_pre_migration(r, KeySchema(), ["ws-b"], jobs=jobs, recent_share=0.0,
                                   invalid=0)
            r.execute_command("CONFIG", "RESETSTAT")
            _scrape(endpoint)
            stats = r.info("commandstats")
            per_scrape.append(sum(v["calls"] for k, v in stats.items()
                                  if k not in ("cmdstat_config", "cmdstat_info")))
        print("commands per scrape", per_scrape)
        assert per_scrape[0] == per_scrape[1] and per_scrape[0] <= 20, per_scrape
        assert r.execute_command("ACL", "LOG") == []  # nothing refused by the console role
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
        r.execute_command("ACL", "DELUSER", "relay-exporter-test")
    assert PASSWORD not in out + err and "***@127.0.0.1" in out, out + err
