"""Key names and values are bytes (issue 14): a legacy key whose name is not UTF-8 is counted
invalid and shown escaped, and never stops a run or its resume; non-UTF-8 values are copied
byte-exact."""

from __future__ import annotations

import json

import redis
from backfill_kit import (
    SCHEMA,
    assert_counters_add_up,
    dual_write_on,
    run_relayctl,
    seed_jobs,
)

from relayctl.core.backfill import read_state

BAD_NAMES = (b"ai:jobs:\xff\xfe", b"ai:jobs:caf\xe9", b"ai:jobs:\x80job")


def seed_bad(raw: redis.Redis) -> None:
    for name in BAD_NAMES:
        raw.hset(name, mapping={b"workspace_id": b"ws-a", b"job_id": name[8:]})


def test_keys_that_are_not_utf8_are_counted_invalid_and_never_stop_a_run_or_its_resume(
        redis_url: str, r: redis.Redis) -> None:
    raw = redis.Redis.from_url(redis_url)
    seed_jobs(r, 5000, invalid=False)
    seed_bad(raw)
    dual_write_on(r)
    partial = run_relayctl(redis_url, "backfill", "--execute", "--batch", "500",
                           "--max-keys", "2000", "--json")
    assert partial.returncode == 0, partial.stderr
    assert json.loads(partial.stdout)["status"] == "partial"
    resumed = run_relayctl(redis_url, "backfill", "--execute", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert "Traceback" not in resumed.stderr + partial.stderr
    state = read_state(r)
    c = assert_counters_add_up(state)
    assert state["status"] == "completed"
    assert c["migrated"] == 5000 and c["skipped_invalid"] == len(BAD_NAMES)
    assert c["scanned"] == 5000 + len(BAD_NAMES)
    shown = partial.stdout + resumed.stdout
    assert any(e in shown for e in ("\\\\xff\\\\xfe", "\\\\xe9")), shown[-500:]
    assert "invalid_examples" in summary or "invalid_examples" in json.loads(partial.stdout)
    for name in BAD_NAMES:  # untouched
        assert raw.exists(name)
    assert sum(1 for _ in r.scan_iter(match=SCHEMA.new_pattern)) == 5000
    dry = run_relayctl(redis_url, "backfill", "--dry-run", "--json")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr


def test_values_that_are_not_utf8_are_copied_byte_exact(redis_url: str, r: redis.Redis) -> None:
    raw = redis.Redis.from_url(redis_url)
    seeded = seed_jobs(r, 200, invalid=False)
    dual_write_on(r)
    ws, job_id = seeded.jobs[7]
    raw.hset(SCHEMA.old_key(job_id), b"params", b'{"doc": "\xff\xfe\x00"}')
    out = run_relayctl(redis_url, "backfill", "--execute", "--json")
    assert out.returncode == 0, out.stderr
    assert raw.hgetall(SCHEMA.new_key(ws, job_id)) == raw.hgetall(SCHEMA.old_key(job_id))
    assert raw.hget(SCHEMA.new_key(ws, job_id), b"params") == b'{"doc": "\xff\xfe\x00"}'
