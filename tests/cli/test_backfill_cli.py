"""`relayctl backfill` as operators run it: real subprocesses against a real redis-server.

Dry-run writes nothing; pause / resume / stop act from other processes; a second engine is
refused naming the owner; dual-write off is refused unless --force; the metrics endpoint and
the non-TTY JSON lines output.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request

import redis

from relayctl.core.backfill import BackfillKeys, read_state
from relayctl.core.demo import legacy_record
from relayctl.core.flags import DUAL_WRITE, set_flag
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import KeySchema
from tests.conftest import wait_for

RELAYCTL = [sys.executable, "-m", "relayctl"]
SCHEMA = KeySchema()
KEYS = BackfillKeys()
ACTOR = "pytest-operator"
INVALID = 3


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AI_JOBS_NEW_SCHEMA", "READ_PREFERS_NEW",
                        "READ_FALLBACK_OLD", "RELAYCTL_BACKFILL_LEASE_MS")}
    out.update(PYTHONUNBUFFERED="1", RELAYCTL_ACTOR=ACTOR, **extra)
    return out


def relayctl(url: str, *args: str, timeout: float = 120, **extra: str):
    return subprocess.run([*RELAYCTL, "--redis-url", url, *args], capture_output=True,
                          text=True, timeout=timeout, env=env(**extra))


def spawn(url: str, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([*RELAYCTL, "--redis-url", url, "backfill", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(**extra))




def seed(client: redis.Redis, n: int, *, ttl_share: float = 1 / 3, existing: int = 0,
         seed_value: int = 3) -> list[tuple[str, str]]:
    """n legacy jobs over four workspaces, a third with TTLs, `existing` of them already
    copied, and three invalid records."""
    rng = random.Random(seed_value)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    jobs = []
    for i in range(n):
        ws = f"ws-{'abcd'[i % 4]}"
        job_id = f"c{i:06d}"
        record = legacy_record(rng, ws, job_id, now - rng.uniform(0, 86400 * 30))
        pipe.hset(SCHEMA.old_key(job_id), mapping=record)
        ttl = rng.randint(2, 20) * 86_400_000 if rng.random() < ttl_share else 0
        if ttl:
            pipe.pexpire(SCHEMA.old_key(job_id), ttl)
        if i < existing:
            pipe.hset(SCHEMA.new_key(ws, job_id), mapping=record)
            if ttl:
                pipe.pexpire(SCHEMA.new_key(ws, job_id), ttl)
            pipe.zadd(SCHEMA.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})
        jobs.append((ws, job_id))
        if i % 1000 == 999:
            pipe.execute()
    pipe.set("ai:jobs:bad-string", "x")
    pipe.hset("ai:jobs:bad-nows", mapping={"job_id": "bad-nows"})
    pipe.hset("ai:jobs:bad-ws", mapping={"job_id": "bad-ws", "workspace_id": "Bad:WS*"})
    pipe.execute()
    return jobs


def dual_write(client: redis.Redis, value: str = "on") -> None:
    set_flag(client, DUAL_WRITE, value, actor="pytest", reason="backfill cli test")


def digest(raw: redis.Redis) -> dict[bytes, tuple]:
    """Every key: type, serialized value, remaining TTL in whole seconds and the absolute
    expiry (exact, so the comparison does not depend on how long the run took)."""
    keys = list(raw.scan_iter(count=1000))
    pipe = raw.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.dump(key)
        pipe.pexpiretime(key)
        pipe.pttl(key)
    got = pipe.execute()
    return {key: (got[4 * i], got[4 * i + 1], got[4 * i + 2], got[4 * i + 3] > 0)
            for i, key in enumerate(keys)}


def changes(raw: redis.Redis) -> int:
    """Writes to the dataset counted by the server itself (saving is off in the fixture)."""
    return int(raw.info("persistence")["rdb_changes_since_last_save"])


def counters(state: dict[str, str]) -> dict[str, int]:
    names = ("scanned", "migrated", "skipped_exists", "skipped_invalid", "skipped_filtered",
             "errors")
    c = {n: int(state.get(n, 0)) for n in names}
    assert c["scanned"] == sum(v for k, v in c.items() if k != "scanned"), c
    return c


def status_json(url: str) -> tuple[int, dict]:
    out = relayctl(url, "backfill", "status", "--json")
    return out.returncode, json.loads(out.stdout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# =============================================================================================


def test_dry_run_writes_nothing_at_all_keyspace_digest_identical(redis_url, r):
    seed(r, 3000, existing=500)
    dual_write(r)
    raw = redis.Redis.from_url(redis_url)
    before, dirty = digest(raw), changes(raw)
    out = relayctl(redis_url, "backfill", "--dry-run", "--batch", "300", "--json")
    assert out.returncode == 0, out.stderr
    assert changes(raw) == dirty, "the server counted a write"
    assert digest(raw) == before
    assert not list(r.scan_iter(match="relay:backfill:*"))
    summary = json.loads(out.stdout)
    assert summary["mode"] == "dry-run" and summary["status"] == "completed"
    assert summary["scanned"] == 3000 + INVALID
    assert summary["migrated"] == 2500, "what an execute run would copy"
    assert summary["skipped"] == {"exists": 500, "invalid": INVALID, "filtered": 0, "error": 0}
    # with --max-keys and a workspace filter too: still nothing
    out = relayctl(redis_url, "backfill", "--dry-run", "--workspace", "ws-a",
                   "--max-keys", "1000", "--json")
    assert out.returncode == 0, out.stderr
    assert changes(raw) == dirty and digest(raw) == before
    raw.close()


def test_a_stop_is_obeyed_during_a_slow_rps_wait_not_after_it(redis_url, r):
    """At --rps 5 a batch of 500 is followed by a 100 s wait; the engine slept through it in
    one call, deaf to stop, pause and its Redis going away (seen by hand in the demo)."""
    seed(r, 3000)
    dual_write(r)
    engine = spawn(redis_url, "--execute", "--rps", "5", "--batch", "500", "--json")
    try:
        wait_for(lambda: int(read_state(r).get("scanned", 0)) >= 400, 20, "the first batch")
        time.sleep(0.5)  # inside the schedule's wait now
        t0 = time.monotonic()
        stopped = relayctl(redis_url, "backfill", "stop", "--reason", "too slow")
        assert stopped.returncode == 0, stopped.stderr
        out, err = engine.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.communicate()
    assert engine.returncode == 3, err
    assert json.loads(out)["status"] == "stopped"
    assert took < 5, f"the stop took {took:.1f}s"


def test_pause_resume_and_stop_from_other_processes_take_effect_and_show_in_state(
        redis_url, r):
    seed(r, 20_000)
    dual_write(r)
    engine = spawn(redis_url, "--execute", "--rps", "2000", "--batch", "100", "--json")
    try:
        wait_for(lambda: int(read_state(r).get("scanned", 0)) >= 600, 20, "progress")

        paused = relayctl(redis_url, "backfill", "pause", "--reason", "peak traffic")
        assert paused.returncode == 0, paused.stderr
        wait_for(lambda: read_state(r).get("status") == "paused", 1.0, "paused in state")
        code, data = status_json(redis_url)
        assert code == 3 and data["state"]["status"] == "paused" and data["engine_alive"]
        held = read_state(r)["scanned"]
        time.sleep(0.8)
        assert read_state(r)["scanned"] == held, "no batch while paused"
        assert engine.poll() is None and r.get(KEYS.lease), "the paused engine keeps its lease"

        resumed = relayctl(redis_url, "backfill", "resume")
        assert resumed.returncode == 0, resumed.stderr
        wait_for(lambda: read_state(r).get("status") == "running", 1.0, "running again")
        s0, t0 = int(read_state(r)["scanned"]), time.monotonic()
        time.sleep(0.5)
        s1, t1 = int(read_state(r)["scanned"]), time.monotonic()
        assert s1 > s0 >= int(held), "progress resumed"
        # --rps stays a ceiling after a pause: no burst to catch up on the paused time
        assert s1 - s0 <= 2000 * (t1 - t0) + 400, (s0, s1, t1 - t0)
        code, data = status_json(redis_url)
        assert code == 0 and data["state"]["status"] == "running"

        stopped = relayctl(redis_url, "backfill", "stop", "--reason", "maintenance")
        assert stopped.returncode == 0, stopped.stderr
        out, err = engine.communicate(timeout=10)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.communicate()
    assert engine.returncode == 3, err
    assert json.loads(out)["status"] == "stopped"
    state = read_state(r)
    assert state["status"] == "stopped" and state["cursor"] != "0"
    stopped_at = int(state["scanned"])
    assert stopped_at < 20_000
    assert not r.exists(KEYS.lease), "a stopped engine releases its lease"
    code, data = status_json(redis_url)
    assert code == 3 and not data["engine_alive"]
    # steering needs a running engine
    late = relayctl(redis_url, "backfill", "pause")
    assert late.returncode == 2 and "no backfill engine is running" in late.stderr

    done = relayctl(redis_url, "backfill", "--execute", "--resume", "--json")
    assert done.returncode == 0, done.stderr
    final = read_state(r)
    c = counters(final)
    assert final["status"] == "completed" and final["run_id"] == state["run_id"]
    assert c["scanned"] == 20_000 + INVALID and c["migrated"] == 20_000

    entries = r.xrange("relay:audit")
    actions = [(f["action"], f["actor"], f["target"], f["after"]) for _, f in entries
               if f["action"].startswith("backfill.")]
    # the CLI's start is audited too, once the engine holds the lease (issue 17)
    starts = [a for a in actions if a[0] == "backfill.start"]
    assert starts and all(a[3].endswith(f"run {state['run_id']})") for a in starts)
    actions = [a for a in actions if a[0] != "backfill.start"]
    assert actions == [("backfill.pause", ACTOR, "backfill", "pause"),
                       ("backfill.resume", ACTOR, "backfill", "run"),
                       ("backfill.stop", ACTOR, "backfill", "stop")]
    reasons = [f["reason"] for _, f in entries
               if f["action"].startswith("backfill.") and f["action"] != "backfill.start"]
    assert reasons == ["peak traffic", "operator resume", "maintenance"]


def test_execute_is_refused_while_dual_write_is_off_unless_forced(redis_url, r):
    seed(r, 800)
    raw = redis.Redis.from_url(redis_url)
    before, dirty = digest(raw), changes(raw)
    out = relayctl(redis_url, "backfill", "--execute")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "dual-write" in lines[0] and "--force" in lines[0], out.stderr
    assert out.stdout == ""
    assert changes(raw) == dirty and digest(raw) == before
    dual_write(r, "off")  # explicitly off: still refused
    dirty = changes(raw)
    assert relayctl(redis_url, "backfill", "--execute").returncode == 2
    assert changes(raw) == dirty
    forced = relayctl(redis_url, "backfill", "--execute", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["migrated"] == 800
    assert sum(1 for _ in r.scan_iter(match=SCHEMA.new_pattern)) == 800
    raw.close()


def test_second_execute_is_refused_naming_the_owner_and_takes_over_after_lease_expiry(
        redis_url, r):
    seed(r, 8000)
    dual_write(r)
    first = spawn(redis_url, "--execute", "--rps", "2000", "--batch", "100", "--json",
                  RELAYCTL_BACKFILL_LEASE_MS="1500")
    try:
        wait_for(lambda: int(read_state(r).get("scanned", 0)) >= 400, 20, "first engine")
        second = relayctl(redis_url, "backfill", "--execute", "--json")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        line = lines[0]
        assert f"{socket.gethostname()}:{first.pid}" in line, line
        started = time.strftime("%Y-%m-%d", time.gmtime(float(read_state(r)["started"])))
        assert "since " + started in line and "already running" in line
        assert first.poll() is None, "the refused run did not disturb the owner"
        first.kill()
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    state = read_state(r)
    assert state["status"] == "running" and int(r.pttl(KEYS.lease)) > 0
    wait_for(lambda: not r.exists(KEYS.lease), 5, "the dead owner's lease to expire")
    takeover = relayctl(redis_url, "backfill", "--execute", "--json")
    assert takeover.returncode == 0, takeover.stderr
    final = read_state(r)
    c = counters(final)
    assert final["run_id"] == state["run_id"], "the new owner resumed the same run"
    assert final["owner"] != state["owner"] and final["status"] == "completed"
    assert c["scanned"] == 8000 + INVALID and c["migrated"] == 8000


def test_metrics_port_serves_the_five_backfill_metrics_while_running(redis_url, r):
    seed(r, 4000, existing=1000)
    dual_write(r)
    port = free_port()
    proc = spawn(redis_url, "--execute", "--rps", "2000", "--batch", "100", "--json",
                 "--metrics-port", str(port))
    text = ""
    try:
        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=2) as resp:
                    body = resp.read().decode()
            except OSError:
                return ""
            moving = any(line.startswith("relay_backfill_scanned_total{")
                         and float(line.rsplit(" ", 1)[1]) > 0 for line in body.splitlines())
            return body if moving else ""

        text = wait_for(scrape, 20, "the metrics endpoint")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    for name in ("relay_backfill_scanned_total", "relay_backfill_migrated_total",
                 "relay_backfill_skipped_total", "relay_backfill_errors_total",
                 "relay_backfill_duration_seconds"):
        assert f"# HELP {name} " in text, name
    scanned = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("relay_backfill_scanned_total{"))
    assert 0 < scanned <= json.loads(out)["scanned"]
    # the endpoint goes away with the engine
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
        raise AssertionError("metrics endpoint still up after the run")
    except OSError:
        pass


def test_non_tty_output_is_json_lines_with_a_checkpoint_every_5000_keys(redis_url, r):
    seed(r, 11_000, ttl_share=0)
    dual_write(r)
    out = relayctl(redis_url, "backfill", "--execute", "--batch", "500")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-2:] == ["done", "summary"]
    checkpoints = [e["scanned"] for e in events if e["event"] == "checkpoint"]
    assert len(checkpoints) == 2
    assert 5000 <= checkpoints[0] < 6000 and 10_000 <= checkpoints[1] < 11_000 + INVALID
    assert events[-1]["scanned"] == 11_000 + INVALID and events[-1]["status"] == "completed"
    for e in events:
        assert {"rate", "eta_s", "fraction", "skipped", "cursor"} <= e.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]), e["time"]


def test_backfill_usage_errors_exit_2_with_one_line(redis_url, r):
    neither = relayctl(redis_url, "backfill")
    assert neither.returncode == 2 and len(neither.stderr.strip().splitlines()) == 1
    bad_ws = relayctl(redis_url, "backfill", "--dry-run", "--workspace", "Bad:WS*")
    assert bad_ws.returncode == 2 and "invalid workspace id" in bad_ws.stderr
    nothing = relayctl(redis_url, "backfill", "--execute", "--resume", "--force")
    assert nothing.returncode == 2 and "no unfinished backfill" in nothing.stderr
    assert not r.exists(KEYS.lease) and not r.exists(KEYS.state)
    both = relayctl(redis_url, "backfill", "--execute", "--fresh", "--resume", "--force")
    assert both.returncode == 2 and not r.exists(KEYS.state)


def test_status_json_has_numbers_as_numbers_times_as_iso_and_no_lease_token(redis_url, r):
    seed(r, 600, existing=100)
    dual_write(r)
    assert relayctl(redis_url, "backfill", "--execute", "--json").returncode == 0
    code, data = status_json(redis_url)
    state = data["state"]
    assert code == 0 and state["status"] == "completed"
    assert isinstance(state["scanned"], int) and state["scanned"] >= 600, state
    assert isinstance(state["migrated"], int) and isinstance(state["rps"], (int, float))
    for when in ("started", "heartbeat", "finished"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", state[when]), (when, state)
    assert "token" not in state and isinstance(state["run_id"], str)
    overview = json.loads(relayctl(redis_url, "status", "--json").stdout)["backfill"]
    assert overview["scanned"] == state["scanned"] and overview["run_id"] == state["run_id"]
    text = relayctl(redis_url, "backfill", "status").stdout
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", text), f"a raw epoch in: {text}"
