"""HELLO disabled (issue 16): against a server with `rename-command HELLO ""` (no RESP3, like
some proxies) every operator command works, over a RESP2 client."""

from __future__ import annotations

import json
import random
import time

import pytest
import redis

from relayctl.core.demo import legacy_record

pytestmark = pytest.mark.engines("redis7-nohello")


def test_every_operator_command_works_without_hello(run_cli, redis_url, r, tmp_path):
    with pytest.raises(redis.ResponseError, match="HELLO"):
        redis.Redis.from_url(redis_url, protocol=3).ping()
    rng = random.Random(5)
    for i in range(60):
        r.hset(f"ai:jobs:job-{i}", mapping=legacy_record(rng, ("ws-a", "ws-b")[i % 2],
                                                          f"job-{i}", time.time() - 3600))
    base = ("--redis-url", redis_url, "--actor", "oncall")

    def ok(*args: str, codes=(0,)) -> str:
        res = run_cli(*base, *args)
        assert res.code in codes, (args, res.code, res.err)
        assert "Traceback" not in res.err and "HELLO" not in res.err
        return res.out

    ok("flags", "set", "AI_JOBS_NEW_SCHEMA", "on", "--reason", "resp2", "--yes")
    assert json.loads(ok("status", "--json", codes=(0, 1, 3)))["server"]["name"] == "redis"
    ok("backfill", "--dry-run", "--json")
    ok("backfill", "--execute", "--json")
    ok("backfill", "status", "--json", codes=(0, 3))
    census = json.loads(ok("census", "--json"))
    assert census["old"] == 60 and census["new"] == 60
    assert json.loads(ok("verify", "--json"))["clean"]
    ok("check", "--json", codes=(0, 1, 3))
    ok("checklist", "show", "--json", codes=(0, 1, 3))
    ok("acl", "--json")
    path = str(tmp_path / "legacy.jsonl.gz")
    ok("archive", "export", path, "--json")
    ok("flags", "set", "READ_PREFERS_NEW", "on", "--reason", "resp2", "--yes")
    ok("flags", "set", "READ_FALLBACK_OLD", "off", "--reason", "resp2", "--yes")
    assert json.loads(ok("verify", "--json"))["clean"]  # delete needs a verify after the flags
    ok("archive", "delete", "--from", path, "--reason", "resp2", "--yes", "--json")
    ok("archive", "restore", path, "--reason", "resp2", "--yes", "--json")
    assert len(list(r.scan_iter(match="ai:jobs:*"))) == 60
