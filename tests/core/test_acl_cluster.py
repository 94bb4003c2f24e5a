"""The least-privilege ACL roles work on a real Redis Cluster (issue 6).

The users are created on every node (ACLs are per node in a cluster). Detection needs INFO,
the cluster client needs CLUSTER SLOTS and COMMAND; the cluster backfill needs PEXPIRETIME.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from backfill_kit import seed_jobs

from relayctl.core import acl
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.cluster import is_cluster
from relayctl.core.connection import connect
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.jobs import JobStore
from relayctl.core.metrics import Metrics
from relayctl.core.verify import run_verify

PASSWORD = "acl-cluster-test-pw"


@pytest.fixture
def users(redis_cluster, cluster_url):
    """role -> URL of a user holding exactly `relayctl acl --role ROLE`, on every node."""
    for role in acl.ROLES:
        rule = acl.rule(role)
        for port in redis_cluster.ports:
            node = redis.Redis(port=port)
            node.execute_command("ACL", "SETUSER", rule.user, *rule.rules, f">{PASSWORD}")
            node.close()
    port = cluster_url.rsplit(":", 1)[1].split("/")[0]
    yield {role: f"redis://{acl.DEFAULT_USERS[role]}:{PASSWORD}@127.0.0.1:{port}/0"
           for role in acl.ROLES}
    for role in acl.ROLES:
        for port in redis_cluster.ports:
            node = redis.Redis(port=port)
            node.execute_command("ACL", "DELUSER", acl.DEFAULT_USERS[role])
            node.close()


def test_every_role_is_detected_as_a_cluster_client(users):
    for url in users.values():
        client = connect(url)
        assert is_cluster(client)
        client.close()


def test_the_app_role_runs_the_job_store_under_dual_write(users, cluster_url):
    admin = connect(cluster_url)
    set_flag(admin, DUAL_WRITE, "on", actor="pytest", reason="acl test")
    store = JobStore(connect(users["app"]), background=False, pins={}, metrics=Metrics())
    assert store.flags.dual_write
    job = store.enqueue("ws-a", action_provider="p", action_name="a", request_id="req-1")
    assert store.enqueue("ws-a", action_provider="p", action_name="a",
                         request_id="req-1").job_id == job.job_id
    assert store.get_job("ws-a", job.job_id) is not None
    assert [j.job_id for j in store.list_jobs("ws-a").jobs] == [job.job_id]
    assert store.update_status("ws-a", job.job_id, "running") == "both"
    store.heartbeat()
    store.close()


def test_the_operator_role_backfills_and_verifies(users, cluster_url):
    admin = connect(cluster_url)
    seed_jobs(admin, 600, invalid=False)
    set_flag(admin, DUAL_WRITE, "on", actor="pytest", reason="acl test")
    operator = connect(users["operator"])
    engine = Backfill(operator, BackfillOptions(execute=True, workers=3), metrics=Metrics())
    assert engine.run() == 0
    assert engine.progress.migrated == 600  # not silently "gone" for want of a command
    assert run_verify(operator, repair=True).clean


def test_the_console_role_reads_status_and_a_write_is_a_permission_error(users):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["REDIS_URL"] = users["console"]
    status = subprocess.run([sys.executable, "-m", "relayctl", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode in (0, 1, 3), status.stderr
    write = subprocess.run([sys.executable, "-m", "relayctl", "flags", "set",
                            "READ_PREFERS_NEW", "on", "--reason", "x", "--yes"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert write.returncode == 2
    assert "permission" in write.stderr and PASSWORD not in write.stderr
    assert len(write.stderr.strip().splitlines()) == 1
