"""Every operator command works unchanged on a real Redis Cluster (issue 6).

One walk through the rollout's commands against the session cluster, through the real entry
point, with application traffic written by `relayctl simulate` in between.
"""

from __future__ import annotations

import json

import pytest

from relayctl.core import cluster as clusterlib
from relayctl.core.connection import connect

TAGGED_TOML = """
[keys]
new_job = "ai:job:{<ws>}:<job_id>"
index = "ai:jobidx:{<ws>}"
idempotency = "ai:idempotency:{<ws>}:<request_id>"
"""


@pytest.fixture(params=["seed", "tagged"])
def layout(request, tmp_path) -> list[str]:
    if request.param == "seed":
        return []
    cfg = tmp_path / "tagged.toml"
    cfg.write_text(TAGGED_TOML)
    return ["--config", str(cfg)]


def test_the_rollout_commands_run_unchanged_on_a_cluster(run_cli, cluster_url, layout,
                                                         tmp_path, redis_cluster):
    def ok(*args: str, codes: tuple[int, ...] = (0,)) -> str:
        res = run_cli("--redis-url", cluster_url, *layout, *args)
        assert res.code in codes, (args, res.code, res.err)
        return res.out

    rc = connect(cluster_url)
    # pre-migration traffic: legacy records only
    ok("simulate", "--rate", "400", "--duration", "2", "--workspaces", "6", "--write-share",
       "0.5")
    legacy = sum(len(b) for b in clusterlib.scan_all(rc, match="ai:jobs:*"))
    assert legacy > 300
    status = json.loads(ok("status", "--json", codes=(0, 1, 3)))  # 3: gates still waiting
    assert status["deployment"]["kind"] == "cluster"
    assert len(status["deployment"]["shards"]) == 3

    ok("flags", "set", "AI_JOBS_NEW_SCHEMA", "on", "--reason", "phase 2", "--yes")
    ok("simulate", "--rate", "400", "--duration", "2", "--workspaces", "6")
    ok("backfill", "--dry-run", "--workers", "3", "--json")
    summary = json.loads(ok("backfill", "--execute", "--workers", "3", "--json"))
    assert summary["status"] == "completed" and summary["errors"] == 0
    census = json.loads(ok("census", "--json"))
    assert census["scanned"] >= legacy
    assert census["old"] == sum(len(b) for b in clusterlib.scan_all(rc, match="ai:jobs:*"))
    verify = json.loads(ok("verify", "--json"))
    assert verify["clean"], verify
    json.loads(ok("check", "--phase", "4", "--json", codes=(0, 1, 3)))  # gates evaluated

    ok("flags", "set", "READ_PREFERS_NEW", "on", "--reason", "phase 3", "--yes")
    ok("simulate", "--rate", "400", "--duration", "2", "--workspaces", "6")
    assert json.loads(ok("verify", "--json"))["clean"]

    archive = tmp_path / "jobs.jsonl.gz"
    ok("archive", "export", str(archive))
    ok("flags", "set", "READ_FALLBACK_OLD", "off", "--reason", "phase 5", "--yes")
    assert json.loads(ok("verify", "--json"))["clean"]  # fresh, after the flag change
    ok("archive", "delete", "--from", str(archive), "--reason", "phase 6", "--yes")
    assert sum(len(b) for b in clusterlib.scan_all(rc, match="ai:jobs:*")) == 0
    ok("archive", "restore", str(archive), "--reason", "undo", "--yes")
    assert sum(len(b) for b in clusterlib.scan_all(rc, match="ai:jobs:*")) > legacy

    ok("rollback", "read-routing", "--reason", "drill", "--yes")
    flags = {f["flag"]: f for f in json.loads(ok("flags", "--json"))["flags"]}
    assert flags["READ_PREFERS_NEW"]["stored"] == "off"
    actions = [f["action"] for _i, f in rc.xrange("relay:audit")]
    assert actions.count("flag.set") >= 4
    assert "archive.delete.start" in actions and "archive.restore.end" in actions
    rc.close()
