from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import redis

from relayctl.core.flags import set_flag

RELAYCTL = [sys.executable, "-m", "relayctl"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW", "READ_FALLBACK_OLD")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_simulate_drives_jobs_through_their_lifecycle_with_dual_write(redis_url, r):
    set_flag(r, "AI_JOBS_NEW_SCHEMA", "on", actor="t", reason="test")
    out = subprocess.run(
        [*RELAYCTL, "--redis-url", redis_url, "simulate", "--rate", "300", "--duration", "3",
         "--workspaces", "3", "--seed", "4", "--json"],
        capture_output=True, text=True, timeout=60, env=_env(), check=True,
    )
    stats = json.loads(out.stdout)["stats"]
    assert stats["enqueued"] > 20 and stats["started"] > 5 and stats["finished"] > 0
    assert stats["reads"] > 0 and stats["lists"] > 0 and stats["errors"] == 0
    legacy = sum(1 for _ in r.scan_iter(match="ai:jobs:*", count=1000))
    new = sum(1 for _ in r.scan_iter(match="ai:job:*:*", count=1000))
    assert legacy == new == stats["enqueued"]
    statuses = {r.hget(k, "status") for k in r.scan_iter(match="ai:job:*:*", count=1000)}
    assert {"pending", "running"} & statuses and {"completed", "failed"} & statuses


def test_demo_no_tui_serves_embedded_redis_and_metrics(tmp_path):
    proc = subprocess.Popen(
        [*RELAYCTL, "demo", "--no-tui", "--duration", "30", "--speed", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        redis_url = re.search(r"redis:\s+(redis://127\.0\.0\.1:\d+/0)", text).group(1)
        metrics_url = re.search(r"metrics:\s+(http://127\.0\.0\.1:\d+/metrics)", text).group(1)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        legacy = sum(1 for _ in client.scan_iter(match="ai:jobs:*", count=1000))
        assert legacy >= 3000
        time.sleep(2.5)
        body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        reads = sum(_metric(body, "relay_job_read_path_total", path=p)
                    for p in ("new", "old", "miss"))
        assert reads > 0
        fleet = client.zrange("relay:fleet", 0, -1)
        assert len(fleet) == 1
        client.close()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stats:" in out
