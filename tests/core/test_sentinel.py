"""Sentinel (issue 16): redis+sentinel:// URLs through redis-py's Sentinel, and SENTINEL
FAILOVER on a real deployment (primary, replica, three sentinels) during live JobStore traffic
and during a backfill: nothing lost, the backfill completes, verify is clean."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.connection import connect, parse_target
from relayctl.core.demo import legacy_record
from relayctl.core.engine_version import server_identity
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.jobs import JobStore
from relayctl.core.metrics import Metrics
from relayctl.core.verify import run_verify

pytestmark = pytest.mark.slow


def test_sentinel_urls_parse_with_hosts_service_and_database():
    t = parse_target("redis+sentinel://u:p%40ss@127.0.0.1:26379,localhost/relay/3")
    assert t.sentinels == (("127.0.0.1", 26379), ("localhost", 26379))
    assert (t.service, t.db, t.username, t.password, t.tls) == ("relay", 3, "u", "p@ss", False)
    assert "p%40ss" not in t.display and t.display.startswith("redis+sentinel://***@")
    assert parse_target("rediss+sentinel://10.0.0.1:26379/relay").tls
    for bad in ("redis+sentinel://10.0.0.1:26379/relay",  # plaintext off loopback
                "redis+sentinel://127.0.0.1:26379/", "redis+sentinel://127.0.0.1:x/relay",
                "redis+sentinel://127.0.0.1/relay/0?cluster=yes"):
        with pytest.raises(UsageError) as info:
            parse_target(bad)
        assert "\n" not in str(info.value)


def test_the_client_finds_the_primary_and_names_the_server(sentinel_setup):
    client = connect(sentinel_setup.url(3))
    client.set("probe", "1")
    primary = redis.Redis(port=sentinel_setup.primary_port(), db=3, protocol=2)
    assert primary.get("probe") == b"1"
    assert server_identity(client).name == "redis"
    primary.close()
    client.close()
    with pytest.raises(RedisUnavailableError) as info:
        connect(sentinel_setup.url().replace("/relay/", "/nosuch/"))
    assert "\n" not in str(info.value)


def test_failover_under_live_job_store_traffic_loses_no_job(sentinel_setup):
    client = connect(sentinel_setup.url(), socket_timeout=1.0, connect_timeout=1.0)
    admin = connect(sentinel_setup.url())
    set_flag(admin, DUAL_WRITE, True, actor="pytest", reason="setup")
    store = JobStore(client, background=False, pins={"AI_JOBS_NEW_SCHEMA": True},
                     metrics=Metrics())
    acked: list[str] = []
    failures: list[float] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                res = store.enqueue("ws-a", action_provider="openai", action_name="draft",
                                    params={"n": len(acked)})
                acked.append(res.job_id)
            except (redis.RedisError, RedisUnavailableError, OSError):
                failures.append(time.monotonic())
                time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    time.sleep(1.0)
    before = len(acked)
    old, new = sentinel_setup.failover()
    switched = time.monotonic()
    assert old != new
    deadline = switched + 20
    while len(acked) < before + 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    recovered = [t for t in failures if t >= switched]
    print(f"\nsentinel failover under traffic: {len(acked)} acked, {len(failures)} failed "
          f"calls, last failure {max(recovered) - switched if recovered else 0:.2f}s after the "
          "switch")
    assert len(acked) >= before + 200, "JobStore calls did not resume after the failover"
    if failures:
        assert max(failures) - switched < 5.0  # resumed within a few seconds
    lost = [j for j in acked if store.get_job("ws-a", j) is None]
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged jobs lost"
    store.close()
    client.close()
    admin.close()


def test_failover_during_a_backfill_completes_and_verify_is_clean(sentinel_setup):
    admin = connect(sentinel_setup.url())
    rng = random.Random(16)
    pipe = admin.pipeline(transaction=False)
    for i in range(6000):
        pipe.hset(f"ai:jobs:job-{i:05d}",
                  mapping=legacy_record(rng, ("ws-a", "ws-b")[i % 2], f"job-{i:05d}",
                                        time.time() - 3600))
    pipe.execute()
    set_flag(admin, DUAL_WRITE, True, actor="pytest", reason="setup")
    primary = redis.Redis(port=sentinel_setup.primary_port(), protocol=2)
    assert primary.execute_command("WAIT", 1, 5000) == 1  # the replica has every legacy job
    client = connect(sentinel_setup.url(), socket_timeout=1.0, connect_timeout=1.0)
    result: dict = {}

    def run() -> None:
        b = Backfill(client, BackfillOptions(execute=True, force=True, batch=100, rps=3000),
                     metrics=Metrics())
        result["code"] = b.run()
        result["progress"] = (b.progress.scanned, b.progress.migrated,
                              dict(b.progress.skipped), b.progress.message)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the backfill finished before the failover: slow it down"
    old, new = sentinel_setup.failover()
    thread.join(120)
    assert not thread.is_alive()
    assert result.get("code") == 0, result
    report = run_verify(connect(sentinel_setup.url()))
    # the engine must notice the primary changed (run_id) and rescan what the old primary
    # acknowledged but never replicated
    assert report.clean, (report.counts, result["progress"], old, new)
    assert old != new
    primary.close()
    client.close()
    admin.close()
