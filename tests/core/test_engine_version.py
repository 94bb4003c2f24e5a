"""Knowing the server (issue 16): name and version read once per client on every engine, a
server lacking a command relayctl needs refused in one line before any write, and RESP2 where
the server offers no HELLO."""

from __future__ import annotations

import hashlib

import pytest
import redis

from relayctl.core.connection import connect
from relayctl.core.engine_version import (
    ServerIdentity,
    identity_from_info,
    missing_commands,
    parse_version,
    require_commands,
    server_identity,
)
from relayctl.core.errors import UsageError
from relayctl.core.jobs import JobStore
from relayctl.core.metrics import Metrics

EXPECTED = {"redis7": ("redis", (7,)), "redis62": ("redis", (6, 2)), "valkey": ("valkey", ())}


def keyspace_digest(client: redis.Redis) -> str:
    """SHA-256 over every key's name and DUMP, in key order (SCAN, never KEYS)."""
    h = hashlib.sha256()
    for key in sorted(client.scan_iter(count=500)):
        h.update(key + b"\0" + (client.dump(key) or b"") + b"\0")
    return h.hexdigest()


@pytest.mark.engines()
def test_each_engine_is_named_and_versioned_once_per_client(redis_url, engine, r):
    client = connect(redis_url)
    before = int(r.info("commandstats").get("cmdstat_info", {}).get("calls", 0))
    first = server_identity(client)
    again = server_identity(client)
    after = int(r.info("commandstats").get("cmdstat_info", {}).get("calls", 0))
    name, prefix = EXPECTED[engine]
    assert first is again and first is not None
    assert first.name == name and first.version[:len(prefix)] == prefix
    assert after - before == 1  # read once, then kept with the client
    # connect() already checked every needed command on this engine
    assert require_commands(client, redis_url, cluster=False) == first
    client.close()


def test_identity_from_info_tells_valkey_from_redis():
    valkey = identity_from_info({"server_name": "valkey", "valkey_version": "9.1.2",
                                 "redis_version": "7.2.4"})
    assert valkey == ServerIdentity("valkey", (9, 1, 2)) and valkey.label == "Valkey 9.1.2"
    assert identity_from_info({"redis_version": "6.2.14"}).label == "Redis 6.2.14"


def test_versions_given_by_hand_parse_or_fail_in_one_line():
    assert parse_version("6.2") == ServerIdentity("redis", (6, 2, 0))
    assert parse_version("valkey-9.1") == ServerIdentity("valkey", (9, 1, 0))
    assert parse_version("redis-7.0.15").version == (7, 0, 15)
    with pytest.raises(UsageError) as info:
        parse_version("seven")
    assert "\n" not in str(info.value)


def test_the_minimum_is_6_2_standalone_and_7_0_on_a_cluster():
    five = ServerIdentity("redis", (5, 0, 14))
    assert missing_commands(five, None, cluster=False) == [("copy", (6, 2)), ("zmscore", (6, 2))]
    six = ServerIdentity("redis", (6, 2, 14))
    assert missing_commands(six, None, cluster=False) == []
    assert missing_commands(six, None, cluster=True) == [("pexpiretime", (7, 0))]
    assert missing_commands(ServerIdentity("valkey", (7, 2, 0)), None, cluster=True) == []
    # a renamed command is missing whatever the version says
    assert missing_commands(ServerIdentity("redis", (7, 0, 15)),
                            {"copy": False, "zmscore": True}, cluster=False) == [("copy", (6, 2))]


def test_a_server_with_copy_renamed_away_is_refused_before_any_write(make_engine_server,
                                                                     capsys):
    from relayctl.cli import main

    server = make_engine_server("redis7", "--rename-command", "COPY", "")
    admin = redis.Redis(port=server.port, protocol=2)
    for i in range(50):
        admin.hset(f"ai:jobs:job-{i}", mapping={"workspace_id": "ws-a", "status": "pending",
                                                "enqueued_at": "2024-01-01T00:00:00Z"})
    digest = keyspace_digest(admin)
    for args in (("backfill", "--execute"), ("verify", "--repair", "--reason", "test", "--yes"),
                 ("flags", "set", "AI_JOBS_NEW_SCHEMA", "on", "--reason", "x", "--yes"),
                 ("census",), ("status",)):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["--redis-url", server.url, *args])
        err = capsys.readouterr().err
        assert exited.value.code == 2, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "no COPY command" in err and "Redis >= 6.2" in err, err
    assert keyspace_digest(admin) == digest
    with pytest.raises(UsageError, match="COPY"):
        connect(server.url)
    admin.close()


def test_without_hello_the_client_speaks_resp2_and_the_store_works(make_engine_server):
    server = make_engine_server("redis7", "--rename-command", "HELLO", "")
    client = connect(server.url)
    assert client.connection_pool.connection_kwargs["protocol"] == 2
    store = JobStore(client, background=False, pins={}, metrics=Metrics())
    try:
        res = store.enqueue("ws-a", action_provider="openai", action_name="draft",
                            params={"n": 1}, request_id="req-1")
        assert store.get_job("ws-a", res.job_id).status == "pending"
        assert [j.job_id for j in store.list_jobs("ws-a").jobs] == [res.job_id]
    finally:
        store.close()
    client.close()
    with_hello = connect(f"redis://127.0.0.1:{make_engine_server().port}/0")
    assert with_hello.connection_pool.connection_kwargs.get("protocol") != 2
    with_hello.close()
