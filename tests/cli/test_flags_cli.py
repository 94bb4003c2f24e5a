from __future__ import annotations

import json
import time

import redis

from relayctl.core.keys import AUDIT_KEY, FLAGS_KEY


def test_flags_set_writes_flag_and_audit_entry_with_actor_and_reason(run_cli, redis_url, r):
    res = run_cli("--redis-url", redis_url, "--actor", "alice", "flags", "set",
                  "read_prefers_new", "on", "--reason", "phase 1 read-routing", "--yes", "--json")
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out == {"flag": "READ_PREFERS_NEW", "before": "off", "after": "on",
                   "actor": "alice", "audit_id": out["audit_id"]}
    assert r.hget(FLAGS_KEY, "READ_PREFERS_NEW") == "on"
    (entry_id, fields), = r.xrange(AUDIT_KEY)
    assert entry_id == out["audit_id"]
    assert fields["actor"] == "alice"
    assert fields["reason"] == "phase 1 read-routing"
    assert (fields["before"], fields["after"], fields["target"]) == ("off", "on",
                                                                     "READ_PREFERS_NEW")


def test_flags_set_without_yes_off_a_tty_is_refused_and_writes_nothing(run_cli, redis_url, r):
    res = run_cli("--redis-url", redis_url, "flags", "set", "AI_JOBS_NEW_SCHEMA", "on",
                  "--reason", "x")
    assert res.code == 2
    assert "--yes" in res.err and len(res.err.strip().splitlines()) == 1
    assert r.exists(FLAGS_KEY, AUDIT_KEY) == 0


def test_flags_set_rejects_unknown_flag_and_blank_reason(run_cli, redis_url, r):
    bad = run_cli("--redis-url", redis_url, "flags", "set", "NOPE", "on", "--reason", "x",
                  "--yes")
    assert bad.code == 2 and "unknown flag" in bad.err
    blank = run_cli("--redis-url", redis_url, "flags", "set", "READ_FALLBACK_OLD", "off",
                    "--reason", "  ", "--yes")
    assert blank.code == 2 and "reason" in blank.err
    assert r.exists(FLAGS_KEY, AUDIT_KEY) == 0


def test_flags_show_reports_stored_value_who_and_defaults(run_cli, redis_url):
    run_cli("--redis-url", redis_url, "--actor", "bob", "flags", "set", "AI_JOBS_NEW_SCHEMA",
            "on", "--reason", "dual-write", "--yes")
    res = run_cli("--redis-url", redis_url, "flags", "--json")
    assert res.code == 0, res.err
    rows = {row["flag"]: row for row in json.loads(res.out)["flags"]}
    assert rows["AI_JOBS_NEW_SCHEMA"]["stored"] == "on"
    assert rows["AI_JOBS_NEW_SCHEMA"]["changed_by"] == "bob"
    assert time.strftime("%Y-%m-%dT", time.gmtime()) in rows["AI_JOBS_NEW_SCHEMA"]["changed_at"]
    assert rows["AI_JOBS_NEW_SCHEMA"]["changed_at"].endswith("Z")
    assert rows["READ_FALLBACK_OLD"]["stored"] is None
    assert rows["READ_FALLBACK_OLD"]["effective_here"] == "on"


def test_unreachable_redis_exits_4_with_one_line_and_no_password(run_cli):
    res = run_cli("--redis-url", "redis://admin:hunter2@127.0.0.1:1/0", "flags")
    assert res.code == 4
    assert res.err.count("\n") == 1
    assert "hunter2" not in res.err and "admin" not in res.err
    assert "127.0.0.1:1" in res.err


def test_plaintext_to_non_loopback_host_is_refused_without_allow_plaintext(run_cli):
    res = run_cli("--redis-url", "redis://:hunter2@10.255.0.1:6379/0", "flags")
    assert res.code == 2
    assert "rediss://" in res.err and "--allow-plaintext" in res.err
    assert "hunter2" not in res.err


def test_malformed_url_is_a_usage_error(run_cli):
    res = run_cli("--redis-url", "http://127.0.0.1:6379", "flags")
    assert res.code == 2 and "scheme" in res.err
    res = run_cli("--redis-url", "redis://127.0.0.1:notaport", "flags")
    assert res.code == 2 and "invalid Redis URL" in res.err


def test_redis_url_comes_from_environment(run_cli, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    res = run_cli("flags", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["redis"] == redis_url


def test_fleet_column_counts_live_instances_and_names_pins(run_cli, redis_url):
    from relayctl.core.jobs import JobStore

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = JobStore(client, background=False, pins={"READ_FALLBACK_OLD": False})
    store.heartbeat()
    try:
        rows = {row["flag"]: row for row in
                json.loads(run_cli("--redis-url", redis_url, "flags", "--json").out)["flags"]}
        assert rows["READ_FALLBACK_OLD"]["fleet_pinned"] == [store.instance]
        assert rows["READ_FALLBACK_OLD"]["fleet_agree"] == 0
        assert rows["AI_JOBS_NEW_SCHEMA"]["fleet_agree"] == 1
    finally:
        store.close()
        client.close()
