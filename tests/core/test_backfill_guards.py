"""The backfill never harms the server it migrates (issue 12): preflight, memory / eviction /
replica guards, fenced state, dead engines, live retune. Every server here is a real
redis-server with the option under test (maxmemory, a policy, --replicaof)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis
from backfill_kit import (
    SCHEMA,
    WORKSPACES,
    assert_all_copied,
    cli_env,
    counters,
    dual_write_on,
    run_relayctl,
    seed_jobs,
    spawn_backfill,
    wait_lease_gone,
)

from relayctl.core.backfill import BackfillKeys, read_state, run_health
from relayctl.core.gates import GateContext, evaluate
from relayctl.core.jobs import JobStore
from relayctl.core.metrics import Metrics
from tests.conftest import RedisServer, wait_for

KEYS = BackfillKeys()
Factory = Callable[..., RedisServer]


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True)


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def evicted(r: redis.Redis) -> int:
    return int(r.info("stats")["evicted_keys"])


@dataclass
class Traffic:
    """Live application traffic through JobStore (dual-write on): enqueues and updates,
    every failure counted by its message."""

    client: redis.Redis
    rate: float = 50.0
    enqueued: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        store = JobStore(self.client, metrics=Metrics(), background=False, pins={})
        i = 0
        while not self._stop.is_set():
            ws = WORKSPACES[i % len(WORKSPACES)]
            try:
                res = store.enqueue(ws, action_provider="p", action_name="a",
                                    params={"n": i}, actor_id="app")
                self.enqueued.append((ws, res.job_id))
                store.update_status(ws, res.job_id, "running")
            except Exception as exc:  # every failure counts, whatever its type
                self.errors.append(str(exc).splitlines()[0][:120])
            i += 1
            self._stop.wait(1 / self.rate)

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def assert_no_job_lost(r: redis.Redis, seeded: list[tuple[str, str]],
                       enqueued: list[tuple[str, str]]) -> None:
    pipe = r.pipeline(transaction=False)
    for ws, job_id in [*seeded, *enqueued]:
        pipe.exists(SCHEMA.old_key(job_id), SCHEMA.new_key(ws, job_id))
    lost = [job for job, n in zip([*seeded, *enqueued], pipe.execute(), strict=True) if n == 0]
    assert not lost, f"{len(lost)} jobs have neither copy, e.g. {lost[:3]}"


def wait_state(r: redis.Redis, predicate: Callable[[dict[str, str]], bool], timeout: float,
               what: str) -> dict[str, str]:
    found: dict[str, str] = {}

    def check() -> bool:
        found.update(read_state(r))
        return predicate(found)

    wait_for(check, timeout, what)
    return dict(found)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_an_evicting_policy_is_refused_at_preflight_and_nothing_is_written(
        redis_factory: Factory) -> None:
    server = redis_factory("--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru")
    r = client_of(server)
    seed_jobs(r, 3000)
    dual_write_on(r)
    before = r.dbsize()
    out = run_relayctl(server.url, "backfill", "--execute")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "allkeys-lru" in lines[0], out.stderr
    assert "--allow-evicting-policy" in lines[0] and "noeviction" in lines[0]
    assert r.dbsize() == before and not r.exists(KEYS.state)
    dry = run_relayctl(server.url, "backfill", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    summary = json.loads(dry.stdout)
    assert any("allkeys-lru" in line for line in summary["refusals"])
    assert summary["preflight"][0].startswith("server: used")


def test_volatile_policy_is_refused_only_while_job_keys_carry_ttls(
        redis_factory: Factory) -> None:
    server = redis_factory("--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru")
    r = client_of(server)
    seed_jobs(r, 2000, ttl_share=0.5)
    dual_write_on(r)
    out = run_relayctl(server.url, "backfill", "--execute")
    assert out.returncode == 2 and "volatile-lru" in out.stderr and "TTL" in out.stderr
    r.flushall()
    seed_jobs(r, 2000, ttl_share=0.0)
    dual_write_on(r)
    out = run_relayctl(server.url, "backfill", "--execute", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["migrated"] == 2000


def test_a_run_that_cannot_fit_is_refused_with_its_numbers(redis_factory: Factory) -> None:
    server = redis_factory("--maxmemory-policy", "noeviction")
    r = client_of(server)
    seed_jobs(r, 20_000, invalid=False)
    dual_write_on(r)
    r.config_set("maxmemory", int(used(r) * 1.3))
    before = r.dbsize()
    out = run_relayctl(server.url, "backfill", "--execute")
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and "exceeds 85% of maxmemory" in line and "MiB" in line, line
    assert "raise maxmemory" in line and "--workspace" in line and "archive" in line
    assert r.dbsize() == before
    # the projection is in the right range: the copy roughly doubles the legacy data
    dry = json.loads(run_relayctl(server.url, "backfill", "--dry-run", "--json").stdout)
    assert "of ~" in dry["preflight"][0]


def _throttle_then_raise(r: redis.Redis, url: str, n_jobs: int, *extra: str
                         ) -> tuple[int, str, dict[str, str], dict[str, str]]:
    """Start a backfill, squeeze maxmemory to 88% of what is used once it is under way,
    hold it there while the application writes, then raise it; returns the engine's exit
    code, stderr, the state seen while throttled and the final state."""
    proc = spawn_backfill(url, "--execute", "--batch", "200", "--rps", "4000", *extra)
    try:
        wait_state(r, lambda s: int(s.get("scanned", 0)) >= n_jobs // 5, 60, "the run")
        r.config_set("maxmemory", int(used(r) / 0.88))
        held = wait_state(r, lambda s: s.get("status") == "throttled", 15, "the memory throttle")
        time.sleep(2.0)  # the application keeps writing meanwhile
        assert read_state(r)["status"] == "throttled"
        r.config_set("maxmemory", used(r) * 4)
        code, _out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return code, err, held, read_state(r)


def test_noeviction_live_traffic_sees_no_oom_while_the_run_throttles_then_completes(
        redis_factory: Factory) -> None:
    server = redis_factory("--maxmemory-policy", "noeviction")
    r = client_of(server)
    seeded = seed_jobs(r, 20_000, invalid=False)
    dual_write_on(r)
    r.config_set("maxmemory", used(r) * 3)
    with Traffic(client_of(server)) as app:
        code, err, held, final = _throttle_then_raise(r, server.url, 20_000)
    assert code == 0, err
    assert held["throttle_kind"] == "memory" and "≥ 85%" in held["throttle_reason"]
    assert [e for e in app.errors if "OOM" in e] == [] and app.errors == []
    assert len(app.enqueued) > 50
    assert final["status"] == "completed" and float(final["throttled_s"]) >= 2.0
    assert final["throttle_reason"] == ""
    assert_no_job_lost(r, seeded.jobs, app.enqueued)
    assert_all_copied(r, minimum=20_000)
    assert evicted(r) == 0


def test_allkeys_lru_live_traffic_loses_no_job_and_no_control_key(
        redis_factory: Factory) -> None:
    server = redis_factory("--maxmemory-policy", "allkeys-lru")
    r = client_of(server)
    seeded = seed_jobs(r, 20_000, invalid=False)
    dual_write_on(r)
    store = JobStore(r, metrics=Metrics(), background=False, pins={})
    store.list_jobs(WORKSPACES[0], limit=2)  # creates relay:cursor:secret
    r.config_set("maxmemory", used(r) * 3)
    with Traffic(client_of(server)) as app:
        code, err, held, final = _throttle_then_raise(
            r, server.url, 20_000, "--allow-evicting-policy")
    assert code == 0, err
    assert held["throttle_kind"] == "memory"
    assert evicted(r) == 0, "a throttled run leaves the evicting policy nothing to evict"
    assert final["status"] == "completed"
    assert r.exists("relay:audit") and r.exists("relay:cursor:secret") and r.exists("relay:flags")
    assert_no_job_lost(r, seeded.jobs, app.enqueued)
    assert app.errors == []


def test_an_eviction_during_the_run_stops_it_and_it_never_reports_completed(
        redis_factory: Factory) -> None:
    server = redis_factory("--maxmemory-policy", "volatile-lru")
    r = client_of(server)
    seeded = seed_jobs(r, 20_000, invalid=False, ttl_share=0.0)  # jobs cannot be evicted
    dual_write_on(r)
    r.config_set("maxmemory", used(r) * 3)
    proc = spawn_backfill(server.url, "--execute", "--batch", "200", "--rps", "4000")
    try:
        wait_state(r, lambda s: int(s.get("scanned", 0)) >= 4000, 60, "the run")
        r.config_set("maxmemory", used(r) + 2 * 1024 * 1024)
        pipe = r.pipeline(transaction=False)
        for i in range(12_000):  # 6 MB of cache entries with a TTL: some must go
            pipe.set(f"cache:{i}", "x" * 500, ex=3600)
        pipe.execute()
        assert evicted(r) > 0
        code, _out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 1, err
    state = read_state(r)
    assert state["status"] == "failed" and state["stop_reason"] == "evictions"
    assert "evicted" in state["message"] and "keys since the run started" in state["message"]
    assert_no_job_lost(r, seeded.jobs, [])
    r.config_set("maxmemory", 0)
    resumed = run_relayctl(server.url, "backfill", "--execute", "--resume", "--json")
    # the resumed run finishes its walk, but a run that saw evictions is never clean
    assert resumed.returncode == 1, resumed.stderr
    state = read_state(r)
    assert state["status"] == "completed_with_errors", state
    assert "evicted during this run" in state["message"]


def _stop_replica_mid_run(redis_factory: Factory, *, jobs: int, limit: str, stop_s: float,
                          extra: tuple[str, ...] = ()) -> tuple[int, int, set[str], str]:
    """A primary with a small replica output-buffer limit and a real replica; SIGSTOP the
    replica for stop_s once the run is under way. Returns full resyncs during the run, the
    engine's exit code, the throttle kinds seen while stopped, and the primary's log."""
    primary = redis_factory("--maxmemory-policy", "noeviction")
    r = client_of(primary)
    r.config_set("client-output-buffer-limit", f"replica {limit}")
    replica = redis_factory("--replicaof", "127.0.0.1", str(primary.port))
    wait_for(lambda: client_of(replica).info("replication")["master_link_status"] == "up",
             10, "the replica link")
    seed_jobs(r, jobs, invalid=False)
    dual_write_on(r)
    wait_for(lambda: r.info("replication")["slave0"]["offset"]
             >= r.info("replication")["master_repl_offset"], 30, "the replica to catch up")
    full_syncs = int(r.info("stats")["sync_full"])
    proc = spawn_backfill(primary.url, "--execute", "--batch", "500", *extra)
    kinds: set[str] = set()
    assert replica.proc is not None
    try:
        wait_state(r, lambda s: int(s.get("scanned", 0)) >= 4000, 60, "the run")
        os.kill(replica.proc.pid, signal.SIGSTOP)
        running = read_state(r)
        assert running["status"] == "running" and int(running["scanned"]) < jobs // 2, (
            "the run must still have most of its work when the replica stops", running)
        t_end = time.monotonic() + stop_s
        while time.monotonic() < t_end:
            kinds.add(read_state(r).get("throttle_kind", ""))
            time.sleep(0.05)
        os.kill(replica.proc.pid, signal.SIGCONT)
        code, _out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.kill(replica.proc.pid, signal.SIGCONT)
    assert code == 0, err
    resyncs = int(r.info("stats")["sync_full"]) - full_syncs
    if not resyncs:
        assert r.info()["connected_slaves"] == 1
        wait_for(lambda: client_of(replica).dbsize() == r.dbsize(), 30, "the replica")
        state = read_state(r)
        assert state["status"] == "completed"
    return resyncs, code, kinds, (primary.workdir / "redis.log").read_text(errors="replace")


def test_a_replica_stopped_for_3s_is_never_disconnected_and_the_run_throttles(
        redis_factory: Factory) -> None:
    # capped at 15,000 keys/s: uncapped, the engine copies 60k jobs in about 1.5 s, before
    # the stopped replica's lag can build
    resyncs, _code, kinds, log = _stop_replica_mid_run(
        redis_factory, jobs=60_000, limit="8388608 2097152 2", stop_s=3.0,
        extra=("--rps", "15000"))
    assert resyncs == 0 and "output buffer limits" not in log
    assert "replica_lag" in kinds, kinds


@pytest.mark.slow
@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded-control"])
def test_a_replica_stopped_for_10s_behind_a_1mb_buffer_keeps_its_link_only_when_guarded(
        redis_factory: Factory, guarded: bool) -> None:
    """The control run (guards effectively off) shows the hazard is real here: the kernel's
    socket buffers absorb 3 s of backfill traffic on loopback, 10 s overflow a 1 MB buffer."""
    off = ("--max-replica-lag-bytes", "262144") if guarded else (
        "--max-replica-lag-s", "100000", "--max-replica-lag-bytes", "1000000000")
    resyncs, _code, kinds, log = _stop_replica_mid_run(
        redis_factory, jobs=100_000, limit="2097152 1048576 1", stop_s=10.0, extra=off)
    if guarded:
        assert resyncs == 0 and "output buffer limits" not in log
        assert "replica_lag" in kinds, kinds
    else:
        assert resyncs >= 1 and "output buffer limits" in log


def test_a_stalled_engine_past_its_lease_never_overwrites_the_run_another_completed(
        redis_factory: Factory) -> None:
    server = redis_factory()
    r = client_of(server)
    seed_jobs(r, 8000, invalid=False)
    dual_write_on(r)
    env = cli_env(RELAYCTL_BACKFILL_LEASE_MS="1500")
    first = spawn_backfill(server.url, "--execute", "--rps", "2000", "--batch", "100",
                           env=env)
    try:
        wait_state(r, lambda s: int(s.get("scanned", 0)) >= 1000, 30, "the first engine")
        os.kill(first.pid, signal.SIGSTOP)
        stalled = wait_state(r, lambda s: run_health(s, True, time.time()).health == "stalled",
                             15, "the stalled health")
        assert "no heartbeat" in run_health(stalled, True, time.time()).detail
        wait_lease_gone(r, timeout=10)
        dead = run_relayctl(server.url, "backfill", "status")
        assert dead.returncode == 1 and "DEAD" in dead.stdout and "--resume" in dead.stdout
        as_json = json.loads(run_relayctl(server.url, "backfill", "status", "--json").stdout)
        assert as_json["health"] == "dead" and "lease expired" in as_json["detail"]
        (gate,) = evaluate(GateContext(client=r), ["backfill_complete"])
        assert (gate.status, gate.value) == ("FAIL", "dead") and "--resume" in gate.detail
        second = run_relayctl(server.url, "backfill", "--execute", "--resume", "--json",
                              env=env)
        assert second.returncode == 0, second.stderr
        done = read_state(r)
        assert done["status"] == "completed"
        os.kill(first.pid, signal.SIGCONT)
        code, _out, err = finish(first)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.communicate()
    assert code == 4, err
    assert "lease lost to" in err and err.strip().count("\n") == 0, err
    after = read_state(r)
    assert after["status"] == "completed" and counters(after) == counters(done)
    assert after["owner"] == done["owner"] and after["finished"] == done["finished"]
    assert run_relayctl(server.url, "backfill", "status").returncode == 0


def test_backfill_set_rps_changes_the_measured_rate_within_two_batches(
        redis_factory: Factory) -> None:
    server = redis_factory()
    r = client_of(server)
    seed_jobs(r, 30_000, invalid=False)
    dual_write_on(r)
    proc = spawn_backfill(server.url, "--execute", "--rps", "300", "--batch", "100")

    def rate(seconds: float) -> float:
        a = int(read_state(r)["scanned"])
        time.sleep(seconds)
        return (int(read_state(r)["scanned"]) - a) / seconds

    try:
        wait_state(r, lambda s: int(s.get("scanned", 0)) >= 300, 30, "the run")
        slow = rate(2.0)
        at_set = int(read_state(r)["scanned"])
        out = run_relayctl(server.url, "backfill", "set", "--rps", "3000", "--reason",
                           "off-peak: speed up")
        assert out.returncode == 0, out.stderr
        tuned = wait_state(r, lambda s: s.get("rps") == "3000", 10, "the retune")
        fast = rate(2.0)
        run_relayctl(server.url, "backfill", "stop", "--reason", "test done")
        finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert 200 <= slow <= 400, slow
    assert fast >= 5 * slow, (slow, fast)
    # the set command itself takes a process start; the engine applied it at once
    assert int(tuned["scanned"]) - at_set <= 300 + 2 * 100 + slow * 3
    entries = r.xrevrange("relay:audit", count=5)
    assert any(f.get("action") == "backfill.set" and "rps=3000" in f.get("after", "")
               for _id, f in entries)


@pytest.mark.parametrize("bad", [["--rps", "-1"], ["--batch", "0"], ["--max-memory-pct", "0"]])
def test_backfill_set_refuses_bad_values_and_no_engine_in_one_line(
        redis_factory: Factory, bad: list[str]) -> None:
    server = redis_factory()
    out = run_relayctl(server.url, "backfill", "set", *bad, "--reason", "x")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    out = run_relayctl(server.url, "backfill", "set", "--rps", "10", "--reason", "x")
    assert out.returncode == 2 and "no backfill engine is running" in out.stderr


def test_a_fast_writer_with_a_tight_replica_limit_is_sampled_every_batch_not_every_250ms():
    """At 25 MB/s a 256 KiB lag limit fills in 10 ms: a quarter of it may pass unobserved,
    so the next full sample is due in 2.6 ms; with no replica, or a slow writer, 250 ms."""
    from relayctl.core.backfill.guards import (
        SAMPLE_EVERY_S,
        GuardLimits,
        Guards,
        Replica,
        ServerSample,
    )

    def sample(at: float, offset: int, replicas: int = 1) -> ServerSample:
        return ServerSample(at=at, run_id="r", full=True, master_offset=offset,
                            replicas=[Replica("127.0.0.1:1", "online", offset, 0.0)] * replicas)

    guards = Guards(GuardLimits(max_replica_lag_bytes=262_144))
    guards.judge("0", sample(0.0, 0))
    guards.judge("0", sample(0.25, 6_250_000))  # 25 MB/s
    assert guards.sample_interval("0") == pytest.approx(262_144 / 4 / 25_000_000)
    guards.judge("slow", sample(0.0, 0))
    guards.judge("slow", sample(0.25, 25_000))  # 100 kB/s
    assert guards.sample_interval("slow") == SAMPLE_EVERY_S
    guards.judge("alone", sample(0.0, 0, replicas=0))
    guards.judge("alone", sample(0.25, 6_250_000, replicas=0))
    assert guards.sample_interval("alone") == SAMPLE_EVERY_S
