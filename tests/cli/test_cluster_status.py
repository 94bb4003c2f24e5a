"""`relayctl status` shows the deployment and the dual-write's slot layout; `check` gates
dual-write on a cluster on hash-tagged key templates (from the --config file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TAGGED_TOML = """[keys]
new_job = "ai:job:{<ws>}:<job_id>"
index = "ai:jobidx:{<ws>}"
idempotency = "ai:idempotency:{<ws>}:<request_id>"
"""


@pytest.fixture
def tagged_config(tmp_path: Path) -> str:
    path = tmp_path / "relayctl.toml"
    path.write_text(TAGGED_TOML)
    return str(path)


def slots_covered(shards: list[dict]) -> list[int]:
    out: list[int] = []
    for shard in shards:
        for part in shard["slots"].split(","):
            first, _, last = part.partition("-")
            out.extend(range(int(first), int(last or first) + 1))
    return sorted(out)


def slot_layout_gate(run_cli, *args: str) -> dict:
    result = run_cli(*args, "check", "--phase", "3", "--json")
    assert result.code == 1, result.err  # phase 3 has failing gates on an empty keyspace
    (gates,) = [p["gates"] for p in json.loads(result.out)["phases"]]
    return next(g for g in gates if g["gate"] == "slot_layout")


def test_status_on_a_cluster_lists_its_shards_and_the_split_dual_write(run_cli, cluster_url,
                                                                       redis_cluster):
    result = run_cli("--redis-url", cluster_url, "status")
    assert result.code == 3, result.err  # no census yet: a phase 0 gate waits
    lines = result.out.splitlines()
    assert "deploy   cluster, 3 shards" in lines
    shard_lines = [line for line in lines if line.lstrip().startswith("shard ")]
    assert len(shard_lines) == 3
    assert {line.split()[2] for line in shard_lines} == {
        f"127.0.0.1:{port}" for port in redis_cluster.primaries()}
    assert "layout   dual-write in 5 steps, not atomic with each other:" in lines
    assert any(line.split()[:3] == ["old_job", "hashes", "ai:jobs:<job_id>"] for line in lines)
    assert '         fix: [keys] new_job = "ai:job:{<ws>}:<job_id>"' in lines
    assert max(len(line) for line in lines) <= 80


def test_status_json_on_a_cluster_parses_with_every_slot_served_once(run_cli, cluster_url,
                                                                     tagged_config):
    data = json.loads(run_cli("--redis-url", cluster_url, "status", "--json").out)
    deployment = data["deployment"]
    assert deployment["kind"] == "cluster" and len(deployment["shards"]) == 3
    assert slots_covered(deployment["shards"]) == list(range(16384))
    assert [s["name"] for s in deployment["shards"]] == [
        s["slots"].split("-")[0] for s in deployment["shards"]]
    assert data["layout"]["cluster"] is True and len(data["layout"]["split"]) == 5
    assert data["memory"]["used"] > 0

    tagged = json.loads(run_cli("--redis-url", cluster_url, "--config", tagged_config,
                                "status", "--json").out)
    assert tagged["layout"]["groups"] == [["old_job"], ["new_job", "index", "idempotency"],
                                          ["queue"]]


def test_status_with_tagged_templates_shows_the_grouped_step_and_no_fix(run_cli, cluster_url,
                                                                        tagged_config):
    out = run_cli("--redis-url", cluster_url, "--config", tagged_config, "status").out
    lines = out.splitlines()
    assert "layout   dual-write in 3 steps, not atomic with each other:" in lines
    assert any(line.split() == ["new_job+index+idempotency", "hashes", "{<ws>}"]
               for line in lines)
    assert "fix:" not in out


def test_status_on_a_standalone_server_says_standalone(run_cli, redis_url):
    result = run_cli("--redis-url", redis_url, "status")
    lines = result.out.splitlines()
    assert "deploy   standalone" in lines
    assert "layout   one atomic script per dual-write (standalone)" in lines
    data = json.loads(run_cli("--redis-url", redis_url, "status", "--json").out)
    assert data["deployment"] == {"kind": "standalone", "shards": []}
    assert data["layout"]["cluster"] is False and data["layout"]["split"] == []


def test_slot_layout_gate_passes_standalone(run_cli, redis_url):
    gate = slot_layout_gate(run_cli, "--redis-url", redis_url)
    assert (gate["status"], gate["value"]) == ("PASS", "standalone")


def test_slot_layout_gate_fails_on_a_cluster_with_the_seed_templates(run_cli, cluster_url):
    gate = slot_layout_gate(run_cli, "--redis-url", cluster_url)
    assert gate["status"] == "FAIL"
    assert gate["threshold"] == ('[keys] new_job = "ai:job:{<ws>}:<job_id>", '
                                 'index = "ai:jobidx:{<ws>}"')


def test_slot_layout_gate_passes_on_a_cluster_with_tagged_templates_from_the_config(
        run_cli, cluster_url, tagged_config):
    gate = slot_layout_gate(run_cli, "--redis-url", cluster_url, "--config", tagged_config)
    assert (gate["status"], gate["value"]) == ("PASS", "both hash {<ws>}")
