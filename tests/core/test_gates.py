"""Gates (SPEC §6): each family FAILs (or WAITs) before its condition holds and PASSes after,
driven by real traffic through JobStore, a served /metrics registry and the private Redis.
Time-based gates use an injected clock, never a wait."""

from __future__ import annotations

import http.server
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from relayctl.core.backfill import Backfill, BackfillKeys, BackfillOptions
from relayctl.core.census import run_census
from relayctl.core.connection import connect
from relayctl.core.demo import legacy_record, seed_pre_migration
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW, set_flag
from relayctl.core.gates import (
    FAIL,
    GATES,
    PASS,
    UNKNOWN,
    WAIT,
    GateContext,
    GateResult,
    evaluate,
    evaluate_phase,
    overall,
    poisson_tail,
)
from relayctl.core.jobs import JobStore, iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.phases import PHASES, phase
from relayctl.core.scrape import MAX_BODY, scrape
from relayctl.core.verify import run_verify

SCHEMA = KeySchema()
DAY = 86400.0

# Every gate this module drives to its outcomes; the last test checks nothing is left out.
COVERED: set[str] = set()


def covers(*gate_ids: str) -> Callable:
    COVERED.update(gate_ids)
    return lambda fn: fn


def one(ctx: GateContext, gid: str) -> GateResult:
    (result,) = evaluate(ctx, [gid])
    assert result.gate == gid
    return result


def statuses(ctx: GateContext, *gids: str) -> dict[str, str]:
    return {g.gate: g.status for g in evaluate(ctx, list(gids))}


# ---------------------------------------------------------------------------------------------
# an application instance with live traffic and a /metrics endpoint


@dataclass
class App:
    r: redis.Redis
    store: JobStore
    metrics: Metrics
    url: str
    new_job: str = "job-new"
    old_job: str = "job-old"
    ws: str = "ws-a"

    def reads(self, new: int = 0, old: int = 0, miss: int = 0) -> None:
        for _ in range(new):
            assert self.store.get_job(self.ws, self.new_job).source == "new"
        for _ in range(old):
            assert self.store.get_job(self.ws, self.old_job).source == "old"
        for i in range(miss):
            assert self.store.get_job(self.ws, f"absent-{i}") is None

    def writes(self, ok: int = 0, failed: int = 0) -> None:
        for _ in range(ok):
            self.store.enqueue(self.ws, action_provider="openai", action_name="draft")
        if failed:
            queue = SCHEMA.queue
            saved = self.r.lrange(queue, 0, -1)
            self.r.delete(queue)
            self.r.set(queue, "not a list")  # the enqueue script refuses: a real failure
            for _ in range(failed):
                with pytest.raises(redis.ResponseError, match="pending queue"):
                    self.store.enqueue(self.ws, action_provider="openai", action_name="draft")
            self.r.delete(queue)
            if saved:
                self.r.rpush(queue, *saved)

    def ctx(self, **kwargs: object) -> GateContext:
        return GateContext(client=self.r, metrics_urls=[self.url], **kwargs)  # type: ignore


def _put_job(r: redis.Redis, ws: str, job_id: str, *, new: bool) -> None:
    import random

    record = legacy_record(random.Random(job_id), ws, job_id, time.time() - 60)
    r.hset(SCHEMA.old_key(job_id), mapping=record)
    if new:
        r.hset(SCHEMA.new_key(ws, job_id), mapping=record)
        r.zadd(SCHEMA.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})


def _close_later(server: object) -> None:
    """http.server's shutdown waits out its 0.5 s poll; do not make every test pay for it."""
    threading.Thread(target=server.close, daemon=True).start()  # type: ignore[attr-defined]


@pytest.fixture
def app(r: redis.Redis) -> Iterator[App]:
    """Read-routing with fallback and dual-write on; one job in both schemas, one legacy-only."""
    for name, value in ((PREFERS_NEW, True), (FALLBACK_OLD, True), (DUAL_WRITE, True)):
        set_flag(r, name, value, actor="test", reason="gate test setup")
    _put_job(r, "ws-a", "job-new", new=True)
    _put_job(r, "ws-a", "job-old", new=False)
    metrics = Metrics(labelled_workspaces=["ws-a"])
    server = metrics.serve(0)
    store = JobStore(r, background=False, pins={}, metrics=metrics)
    try:
        yield App(r=r, store=store, metrics=metrics, url=server.url)
    finally:
        store.close()
        _close_later(server)


# ---------------------------------------------------------------------------------------------
# read-path shares


def _new_reads_to_reach(new: int, total: int, limit: float) -> int:
    """How many more new reads lift new/total to at least `limit`."""
    return max(0, math.ceil((limit * total - new) / (1 - limit))) + 1


@covers("new_read_share_50", "new_read_share_60", "new_read_share_80", "new_read_share_98")
@pytest.mark.parametrize("gid,limit", [("new_read_share_50", 0.50), ("new_read_share_60", 0.60),
                                       ("new_read_share_80", 0.80),
                                       ("new_read_share_98", 0.98)])
def test_new_read_share_gate_fails_below_its_threshold_and_passes_above(app, gid, limit):
    new = round(limit * 100) - 5
    app.reads(new=new, old=100 - new)
    before = one(app.ctx(), gid)
    assert before.status == FAIL
    assert before.value == f"{new:.2f}%"
    more = _new_reads_to_reach(new, 100, limit)
    app.reads(new=more)
    after = one(app.ctx(), gid)
    assert after.status == PASS, after
    assert (new + more) / (100 + more) >= limit


@covers("old_read_share_2")
def test_old_read_share_2_fails_at_five_percent_fallback_reads_and_passes_below_two(app):
    app.reads(new=95, old=5)
    assert one(app.ctx(), "old_read_share_2").status == FAIL
    app.reads(new=160)  # 5 of 260 = 1.9%
    result = one(app.ctx(), "old_read_share_2")
    assert result.status == PASS and result.value == "1.92%"


@covers("old_read_share_0")
def test_old_read_share_0_fails_on_any_old_read_and_passes_once_none_since_the_baseline(app):
    app.reads(new=99, old=1)
    assert one(app.ctx(), "old_read_share_0").status == FAIL
    baseline = scrape([app.url])  # what `checklist apply` records
    app.reads(new=60)
    result = one(app.ctx(baseline=baseline), "old_read_share_0")
    assert result.status == PASS, result


def test_share_gates_wait_until_enough_reads_are_seen(app):
    app.reads(new=49)
    assert one(app.ctx(), "new_read_share_80").status == WAIT
    app.reads(new=1)
    assert one(app.ctx(), "new_read_share_80").status == PASS


def test_metrics_window_counts_only_the_traffic_between_two_scrapes(app):
    app.reads(new=10, old=90)
    assert one(app.ctx(), "new_read_share_80").status == FAIL
    slept: list[float] = []

    def during_window(seconds: float) -> None:
        slept.append(seconds)
        app.reads(new=100)  # traffic arriving while the gate waits

    ctx = app.ctx(window_s=30.0, sleep=during_window)
    assert one(ctx, "new_read_share_80").status == PASS
    assert one(ctx, "new_read_share_98").status == PASS  # one window for every gate
    assert slept == [30.0]


def test_counters_are_summed_across_several_endpoints(app, r):
    other = Metrics(labelled_workspaces=["ws-a"])
    server = other.serve(0)
    try:
        with JobStore(r, background=False, pins={}, metrics=other) as second:
            for _ in range(60):
                second.get_job("ws-a", "job-old")
        app.reads(new=40)
        ctx = app.ctx()
        ctx.metrics_urls = [app.url, server.url]
        result = one(ctx, "new_read_share_50")
        assert (result.status, result.value) == (FAIL, "40.00%")
    finally:
        _close_later(server)


# ---------------------------------------------------------------------------------------------
# misses against a baseline


@covers("miss_increase")
def test_miss_increase_waits_without_baseline_passes_when_flat_and_fails_on_a_jump(app):
    app.reads(new=490, miss=10)  # 2% misses before the phase
    assert one(app.ctx(), "miss_increase").status == WAIT
    baseline = scrape([app.url])
    app.reads(new=196, miss=4)  # still 2%
    flat = one(app.ctx(baseline=baseline), "miss_increase")
    assert flat.status == PASS, flat
    app.reads(new=150, miss=50)  # 54 of 400 = 13.5% since the baseline
    jump = one(app.ctx(baseline=baseline), "miss_increase")
    assert jump.status == FAIL, jump


# ---------------------------------------------------------------------------------------------
# dual-write


@covers("dual_write_failure_1", "dual_write_failure_5", "dual_write_success")
def test_dual_write_gates_follow_real_enqueue_failures(app):
    gates = ("dual_write_failure_1", "dual_write_failure_5", "dual_write_success")
    app.writes(ok=30)
    assert statuses(app.ctx(), *gates) == dict.fromkeys(gates, WAIT)
    app.writes(ok=70)
    assert statuses(app.ctx(), *gates) == dict.fromkeys(gates, PASS)
    app.writes(failed=10)  # 10 of 110 = 9.1%: above the 5% rollback line
    failing = {g.gate: g for g in evaluate(app.ctx(), list(gates))}
    assert {g: r.status for g, r in failing.items()} == dict.fromkeys(gates, FAIL)
    assert failing["dual_write_failure_5"].value == "9.09%"
    app.writes(ok=200)  # 10 of 310 = 3.2%: below the rollback line, above 1%
    assert statuses(app.ctx(), *gates) == {"dual_write_failure_1": FAIL,
                                           "dual_write_failure_5": PASS,
                                           "dual_write_success": FAIL}


@covers("error_rate")
def test_error_rate_fails_on_failing_calls_and_passes_on_a_clean_window(app):
    app.writes(ok=60, failed=5)
    assert one(app.ctx(), "error_rate").status == FAIL
    baseline = scrape([app.url])
    app.writes(ok=60)
    assert one(app.ctx(baseline=baseline), "error_rate").status == PASS


@covers("dual_write_on")
def test_dual_write_on_follows_the_stored_flag(r):
    assert one(GateContext(client=r), "dual_write_on").status == FAIL
    set_flag(r, DUAL_WRITE, True, actor="t", reason="phase 3")
    assert one(GateContext(client=r), "dual_write_on").status == PASS


# ---------------------------------------------------------------------------------------------
# isolation and corruption counters


@covers("workspace_mismatch")
def test_workspace_mismatch_fails_after_one_cross_workspace_read(app):
    app.reads(new=10)
    assert one(app.ctx(), "workspace_mismatch").status == PASS
    assert app.store.get_job("ws-b", "job-old") is None  # ws-a's job asked for by ws-b
    result = one(app.ctx(), "workspace_mismatch")
    assert (result.status, result.value) == (FAIL, "1")


@covers("deserialize_errors")
def test_deserialize_errors_fail_above_one_hundred(app):
    app.metrics.deserialize_errors.inc(99)
    assert one(app.ctx(), "deserialize_errors").status == PASS
    app.metrics.deserialize_errors.inc(2)
    assert one(app.ctx(), "deserialize_errors").status == FAIL


# ---------------------------------------------------------------------------------------------
# sources down or lying: UNKNOWN, never PASS

METRIC_GATES = ("new_read_share_80", "old_read_share_2", "dual_write_failure_5",
                "workspace_mismatch", "error_rate", "deserialize_errors")


class _Handler(http.server.BaseHTTPRequestHandler):
    body: bytes = b""
    delay: float = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(self.body)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bad_endpoint() -> Iterator[Callable[..., str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(body: bytes, delay: float = 0.0) -> str:
        handler = type("H", (_Handler,), {"body": body, "delay": delay})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def _assert_unknown(r: redis.Redis, urls: list[str], why: str) -> None:
    results = evaluate(GateContext(client=r, metrics_urls=urls, baseline=None), METRIC_GATES)
    assert {x.status for x in results} == {UNKNOWN}, results
    assert all(why in x.detail for x in results), results


def test_metric_gates_are_unknown_when_the_endpoint_is_down(r):
    _assert_unknown(r, [_closed_port_url()], "unreachable")


def test_metric_gates_are_unknown_when_no_endpoint_is_given(r):
    _assert_unknown(r, [], "no /metrics endpoint")


def test_metric_gates_are_unknown_when_the_endpoint_returns_garbage(r, bad_endpoint):
    _assert_unknown(r, [bad_endpoint(b"<html>this is not prometheus</html>\n")], "malformed")


def test_metric_gates_are_unknown_when_the_endpoint_returns_a_huge_body(r, bad_endpoint):
    _assert_unknown(r, [bad_endpoint(b"# x\n" * (MAX_BODY // 4 + 10))], "more than")


def test_metric_gates_are_unknown_when_the_endpoint_is_too_slow(r, bad_endpoint):
    t0 = time.monotonic()
    _assert_unknown(r, [bad_endpoint(b"relay_x_total 1\n", delay=4.0)], "unreachable")
    assert time.monotonic() - t0 < 4.0  # one bounded timeout, scraped once for every gate


def test_one_bad_endpoint_among_good_ones_makes_the_sum_unknown_not_partial(app):
    app.reads(new=100)
    ctx = app.ctx()
    ctx.metrics_urls = [app.url, _closed_port_url()]
    assert one(ctx, "new_read_share_80").status == UNKNOWN


def test_redis_gates_are_unknown_when_redis_is_unreachable():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(port=1, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0),
                       decode_responses=True)
    gates = ["dual_write_on", "flags_converged", "census_fresh", "verify_clean",
             "backfill_errors", "redis_memory", "read_routing_days_7"]
    for ctx in (GateContext(client=dead), GateContext(client=None)):
        assert statuses(ctx, *gates) == dict.fromkeys(gates, UNKNOWN)


# ---------------------------------------------------------------------------------------------
# a Prometheus server's HTTP API


def test_a_prometheus_that_answers_garbage_makes_its_gates_unknown(r, bad_endpoint):
    """Real-server behaviour is in tests/core/test_prometheus.py; this is the hostile one."""
    junk = GateContext(client=r, prometheus_url=bad_endpoint(b"{not json").rsplit("/", 1)[0])
    result = one(junk, "new_read_share_50")
    assert result.status == UNKNOWN and "garbage" in result.detail, result


# ---------------------------------------------------------------------------------------------
# census


CENSUS_GATES = ("census_fresh", "new_keys_present", "new_keys_1000", "census_equal",
                "census_coverage_98")


@covers(*CENSUS_GATES)
def test_census_gates_wait_without_census_fail_before_backfill_and_pass_after(r):
    assert statuses(GateContext(client=r), *CENSUS_GATES) == dict.fromkeys(CENSUS_GATES, WAIT)
    seed_pre_migration(r, SCHEMA, ["ws-a", "ws-b"], jobs=1500, recent_share=0.0, invalid=0)
    run_census(r, SCHEMA)
    assert statuses(GateContext(client=r), *CENSUS_GATES) == {
        "census_fresh": PASS, "new_keys_present": FAIL, "new_keys_1000": FAIL,
        "census_equal": FAIL, "census_coverage_98": FAIL}
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    census = run_census(r, SCHEMA)
    assert (census.old, census.new) == (1500, 1500)
    results = {g.gate: g for g in evaluate(GateContext(client=r), CENSUS_GATES)}
    assert {g: x.status for g, x in results.items()} == dict.fromkeys(CENSUS_GATES, PASS)
    assert results["census_coverage_98"].value == "100.00%"


def test_census_gates_wait_when_the_census_is_stale(r):
    seed_pre_migration(r, SCHEMA, ["ws-a"], jobs=20, recent_share=1.0, invalid=0)
    census = run_census(r, SCHEMA)
    fresh = GateContext(client=r, now=lambda: census.ts + 3600)
    assert one(fresh, "census_fresh").status == PASS
    stale = GateContext(client=r, now=lambda: census.ts + 2 * DAY)
    results = evaluate(stale, CENSUS_GATES)
    assert {x.status for x in results} == {WAIT}
    assert all("2.0d old" in x.value for x in results)  # one age style: formatting.duration


def test_new_keys_1000_needs_more_than_a_thousand_new_keys(r):
    seed_pre_migration(r, SCHEMA, ["ws-a"], jobs=1000, recent_share=1.0, invalid=0)
    run_census(r, SCHEMA)
    assert one(GateContext(client=r), "new_keys_1000").status == FAIL
    seed_pre_migration(r, SCHEMA, ["ws-a"], jobs=1, recent_share=1.0, invalid=0, seed=99)
    run_census(r, SCHEMA)
    assert one(GateContext(client=r), "new_keys_1000").status == PASS


# ---------------------------------------------------------------------------------------------
# verify


@covers("verify_clean")
def test_verify_gates_wait_fail_and_pass_with_the_stored_summary(r):
    seeded = seed_pre_migration(r, SCHEMA, ["ws-a"], jobs=60, recent_share=0.0, invalid=0)
    gates = ("verify_clean",)
    assert statuses(GateContext(client=r), *gates) == dict.fromkeys(gates, WAIT)
    run_verify(r, SCHEMA)  # before the backfill: every legacy job is missing its copy
    failing = {g.gate: g for g in evaluate(GateContext(client=r), gates)}
    assert {g: x.status for g, x in failing.items()} == dict.fromkeys(gates, FAIL)
    assert failing["verify_clean"].detail == "missing 60"
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    run_verify(r, SCHEMA, sample=10)
    # a sample does not satisfy the full-verification gate
    assert statuses(GateContext(client=r), *gates) == {"verify_clean": WAIT}
    report = run_verify(r, SCHEMA)
    assert report.clean
    assert statuses(GateContext(client=r), *gates) == dict.fromkeys(gates, PASS)
    stale = GateContext(client=r, now=lambda: report.ts + 2 * DAY)
    assert statuses(stale, *gates) == dict.fromkeys(gates, WAIT)
    r.hset(SCHEMA.new_key(*seeded.jobs[0]), "status", "tampered")
    run_verify(r, SCHEMA)
    assert one(GateContext(client=r), "verify_clean").status == FAIL


# ---------------------------------------------------------------------------------------------
# backfill


@covers("backfill_complete", "backfill_errors")
def test_backfill_gates_wait_before_a_run_fail_on_errors_and_pass_on_a_clean_run(r):
    gates = ("backfill_complete", "backfill_errors")
    assert statuses(GateContext(client=r), *gates) == dict.fromkeys(gates, WAIT)
    seed_pre_migration(r, SCHEMA, ["ws-a", "ws-b"], jobs=200, recent_share=0.0, invalid=0)
    assert Backfill(r, BackfillOptions(execute=True, force=True, max_keys=50,
                                       batch=25)).run() == 0
    assert statuses(GateContext(client=r), *gates) == {"backfill_complete": WAIT,
                                                       "backfill_errors": PASS}
    r.set(SCHEMA.index_key("ws-b"), "not a zset")  # every ws-b copy now errors
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 1
    results = {g.gate: g for g in evaluate(GateContext(client=r), gates)}
    assert results["backfill_errors"].status == FAIL
    assert int(results["backfill_errors"].value) > 0
    assert results["backfill_complete"].value == "completed_with_errors"
    r.delete(SCHEMA.index_key("ws-b"))
    assert Backfill(r, BackfillOptions(execute=True, force=True, fresh=True)).run() == 0
    assert statuses(GateContext(client=r), *gates) == dict.fromkeys(gates, PASS)


def test_backfill_complete_fails_when_the_engine_recorded_a_lost_run(r):
    # the engine writes status "lost" when Redis goes away for longer than --retry-for
    r.hset(BackfillKeys().state, mapping={"status": "lost", "message": "lost Redis"})
    result = one(GateContext(client=r), "backfill_complete")
    assert (result.status, result.detail) == (FAIL, "lost Redis")


# ---------------------------------------------------------------------------------------------
# fleet convergence

PHASE1 = phase(1).target_flags


@covers("flags_converged")
def test_flags_converged_fails_until_applied_waits_for_instances_then_passes(r):
    ctx = lambda: GateContext(client=r, target_flags=PHASE1)  # noqa: E731
    result = one(ctx(), "flags_converged")
    assert result.status == FAIL and "READ_PREFERS_NEW" in result.detail
    for name, value in PHASE1.items():
        set_flag(r, name, value, actor="t", reason="phase 1")
    assert one(ctx(), "flags_converged").status == WAIT  # nobody reports yet
    with JobStore(r, background=False, pins={}, instance="web-1") as web:
        web.heartbeat()
        result = one(ctx(), "flags_converged")
        assert (result.status, result.value) == (PASS, "1/1 instances")


def test_flags_converged_names_a_lagging_and_a_pinned_instance(r):
    with JobStore(r, background=False, pins={}, instance="web-slow") as slow, \
            JobStore(r, background=False, pins={PREFERS_NEW: False},
                     instance="web-pinned") as pinned:
        slow.heartbeat()  # reports the flags from before the change
        for name, value in PHASE1.items():
            set_flag(r, name, value, actor="t", reason="phase 1")
        pinned.refresh_flags()
        pinned.heartbeat()
        result = one(GateContext(client=r, target_flags=PHASE1), "flags_converged")
        assert result.status == FAIL
        assert result.value == "0/2 instances"
        assert "web-pinned (pinned)" in result.detail
        assert "web-slow" in result.detail and "web-slow (pinned)" not in result.detail
        slow.refresh_flags()
        slow.heartbeat()
        result = one(GateContext(client=r, target_flags=PHASE1), "flags_converged")
        assert result.status == FAIL and result.detail == "lagging: web-pinned (pinned)"


# ---------------------------------------------------------------------------------------------
# time since a flag change, from the audit stream, with an injected clock


@covers("read_routing_days_7", "dual_write_days_14", "fallback_off_days_30")
@pytest.mark.parametrize("gid,flag,value,days", [
    ("read_routing_days_7", PREFERS_NEW, True, 7),
    ("dual_write_days_14", DUAL_WRITE, True, 14),
    ("fallback_off_days_30", FALLBACK_OLD, False, 30),
])
def test_time_gate_fails_off_waits_while_young_and_passes_after_its_days(r, gid, flag, value,
                                                                         days):
    assert one(GateContext(client=r), gid).status == FAIL  # pre-migration defaults
    set_flag(r, flag, value, actor="t", reason="enter the phase")
    real = time.time()
    young = one(GateContext(client=r, now=lambda: real + (days - 1) * DAY), gid)
    assert young.status == WAIT and young.value == f"{days - 1:.1f} days"
    old = one(GateContext(client=r, now=lambda: real + (days + 1) * DAY), gid)
    assert old.status == PASS, old
    # flipping the flag away and back restarts the clock
    set_flag(r, flag, not value, actor="t", reason="rollback")
    assert one(GateContext(client=r, now=lambda: real + (days + 1) * DAY), gid).status == FAIL
    set_flag(r, flag, value, actor="t", reason="again", now=real + days * DAY)
    assert one(GateContext(client=r, now=lambda: real + (days + 1) * DAY), gid).status == WAIT
    assert one(GateContext(client=r, now=lambda: real + (2 * days + 1) * DAY),
               gid).status == PASS


def test_time_gate_waits_when_the_flag_was_set_without_an_audit_entry(r):
    r.hset("relay:flags", PREFERS_NEW, "on")
    result = one(GateContext(client=r, now=lambda: time.time() + 30 * DAY),
                 "read_routing_days_7")
    assert (result.status, result.value) == (WAIT, "no audit entry")


# ---------------------------------------------------------------------------------------------
# Redis memory and TLS


@covers("redis_memory")
def test_redis_memory_waits_without_baseline_and_fails_on_a_fifty_percent_spike(r):
    assert one(GateContext(client=r), "redis_memory").status == WAIT
    baseline = int(r.info("memory")["used_memory"])
    assert one(GateContext(client=r, baseline_memory=baseline), "redis_memory").status == PASS
    pipe = r.pipeline(transaction=False)
    for i in range(64):
        pipe.set(f"blob:{i}", "x" * max(baseline // 40, 32_000))
    pipe.execute()
    result = one(GateContext(client=r, baseline_memory=baseline), "redis_memory")
    assert result.status == FAIL, result
    r.delete(*[f"blob:{i}" for i in range(64)])


@covers("redis_tls")
def test_redis_tls_passes_for_rediss_and_loopback_and_fails_for_remote_plaintext():
    def tls(url: str) -> str:
        return one(GateContext(client=None, redis_url=url), "redis_tls").status

    assert tls("rediss://cache.example.com:6380/0") == PASS
    assert tls("redis://127.0.0.1:7000/0") == PASS
    assert tls("redis://10.1.2.3:6379/0") == FAIL


# ---------------------------------------------------------------------------------------------
# slot layout (Redis Cluster)


TAGGED = KeySchema(new_job="ai:job:{<ws>}:<job_id>", index="ai:jobidx:{<ws>}")


@covers("slot_layout")
def test_slot_layout_passes_standalone_and_on_a_cluster_only_with_hash_tagged_templates(
        r, cluster_url):
    standalone = one(GateContext(client=r), "slot_layout")
    assert (standalone.status, standalone.value) == (PASS, "standalone")
    client = connect(cluster_url)
    try:
        seed = one(GateContext(client=client), "slot_layout")
        assert seed.status == FAIL
        assert seed.threshold == ('[keys] new_job = "ai:job:{<ws>}:<job_id>", '
                                  'index = "ai:jobidx:{<ws>}"')
        tagged = one(GateContext(client=client, schema=TAGGED), "slot_layout")
        assert (tagged.status, tagged.value) == (PASS, "both hash {<ws>}")
        assert "old_job | new_job+index | idempotency | queue" in tagged.detail
        half = KeySchema(new_job="ai:job:{<ws>}:<job_id>")
        assert one(GateContext(client=client, schema=half), "slot_layout").status == FAIL
    finally:
        client.close()
    assert one(GateContext(client=None), "slot_layout").status == UNKNOWN


def test_slot_layout_is_checked_before_dual_write_is_turned_on():
    first = next(p for p in PHASES if (p.target_flags or {}).get(DUAL_WRITE))
    assert "slot_layout" in [i.gate for i in first.prerequisites]


# ---------------------------------------------------------------------------------------------
# phase evaluation


def test_evaluate_phase_uses_the_phase_target_flags_and_overall_maps_exit_codes(r):
    ctx = GateContext(client=r, redis_url="redis://127.0.0.1:1/0")
    results = evaluate_phase(ctx, phase(0))
    assert [x.gate for x in results] == list(phase(0).gates)
    assert ctx.target_flags is None
    assert overall(results) == 3  # no census yet: WAIT
    evaluate_phase(ctx, phase(1))
    assert ctx.target_flags == PHASE1
    assert overall([GateResult("a", "", PASS, "", "")]) == 0
    assert overall([GateResult("a", "", WAIT, "", ""), GateResult("b", "", FAIL, "", "")]) == 1
    assert overall([GateResult("a", "", UNKNOWN, "", "")]) == 3


def test_every_registered_gate_is_driven_by_this_module():
    assert set(GATES) == COVERED


def test_metrics_names_maps_the_dual_write_gates_to_a_fleets_own_counter(r, tmp_path):
    """The seed's application exports `ai_jobs_dual_write_total`: mapped, the gates read it
    (and report that name); unmapped, they say the checklist's name is absent."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    from relayctl.core.config import load_config
    from relayctl.core.evaluation import gate_config, gate_context

    registry = CollectorRegistry()
    seed = Counter("ai_jobs_dual_write", "the seed app's counter", ["result"], registry=registry)
    seed.labels("succeeded").inc(1445)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    config = tmp_path / "relayctl.toml"
    config.write_text('[metrics.names]\ndual_write = "ai_jobs_dual_write_total"\n')
    try:
        for cfg, want in ((load_config(config), (PASS, "100.00%")),
                          (load_config(None), (UNKNOWN, "-"))):
            ctx = gate_context(gate_config(cfg, metrics_urls=[url]), r, None, 3)
            result = one(ctx, "dual_write_success")
            assert (result.status, result.value) == want, result
        assert ctx.shared["names_read"] == {"relay_dual_write_attempt_total"}
    finally:
        server.shutdown()
        server.server_close()


def test_an_unknown_metrics_names_entry_is_a_one_line_usage_error(tmp_path):
    from relayctl.core.config import load_config
    from relayctl.core.errors import UsageError
    from relayctl.core.evaluation import gate_config

    config = tmp_path / "relayctl.toml"
    config.write_text('[metrics.names]\ndual_writes = "ai_jobs_dual_write_total"\n')
    with pytest.raises(UsageError, match=r"unknown metric\(s\) in \[metrics.names\]: "
                                         "dual_writes"):
        gate_config(load_config(config))


def _server_ctx(server, number: int = 3, **kwargs) -> tuple[redis.Redis, GateContext]:
    client = redis.Redis(port=server.port, decode_responses=True)
    return client, GateContext(client=client, **kwargs)


@covers("memory_headroom")
def test_memory_headroom_projects_the_copy_against_maxmemory(redis_factory):
    server = redis_factory("--maxmemory-policy", "noeviction")
    client, ctx = _server_ctx(server)
    seed_pre_migration(client, KeySchema(), ["ws-a", "ws-b"], jobs=3000, recent_share=0.0)
    assert one(ctx, "memory_headroom").status == WAIT  # the projection needs a census
    run_census(client, KeySchema())
    ctx = GateContext(client=client)
    assert one(ctx, "memory_headroom").status == PASS  # maxmemory 0: no limit to run into
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", int(used * 1.3))
    tight = one(GateContext(client=client), "memory_headroom")
    assert tight.status == FAIL and "projected" in tight.detail, tight
    assert float(tight.value.rstrip("%")) > 100  # the copy cannot fit in 1.3x of what is used
    client.config_set("maxmemory", used * 10)
    assert one(GateContext(client=client), "memory_headroom").status == PASS


@covers("eviction_policy_safe")
def test_eviction_policy_safe_fails_for_policies_that_can_delete_a_job(redis_factory):
    server = redis_factory("--maxmemory", "512mb", "--maxmemory-policy", "allkeys-lfu")
    client, ctx = _server_ctx(server)
    seed_pre_migration(client, KeySchema(), ["ws-a", "ws-b"], jobs=500, ttl_share=0.0)
    result = one(ctx, "eviction_policy_safe")
    assert (result.status, result.value) == (FAIL, "allkeys-lfu")
    client.config_set("maxmemory-policy", "volatile-ttl")
    for key in list(client.scan_iter(match="ai:jobs:*", count=1000))[:300]:
        client.expire(key, 86400)
    assert one(GateContext(client=client), "eviction_policy_safe").status == FAIL
    client.config_set("maxmemory-policy", "noeviction")
    assert one(GateContext(client=client), "eviction_policy_safe").status == PASS


@covers("no_evictions_since_phase")
def test_no_evictions_since_phase_compares_with_evicted_keys_at_apply(redis_factory):
    from relayctl.core.checklist import apply, read_checklist
    from relayctl.core.config import load_config
    from relayctl.core.evaluation import gate_config, gate_context

    server = redis_factory("--maxmemory-policy", "volatile-lru")
    client, ctx = _server_ctx(server)
    assert one(ctx, "no_evictions_since_phase").status == WAIT
    apply(client, actor="pytest", reason="phase 0", metrics_urls=[])
    state = read_checklist(client)
    check = gate_context(gate_config(load_config(None)), client, state, 0)
    assert one(check, "no_evictions_since_phase").status == PASS
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 1_000_000)
    pipe = client.pipeline(transaction=False)
    for i in range(6000):
        pipe.set(f"cache:{i}", "x" * 500, ex=600)
    pipe.execute()
    assert int(client.info("stats")["evicted_keys"]) > 0
    check = gate_context(gate_config(load_config(None)), client, state, 0)
    result = one(check, "no_evictions_since_phase")
    assert result.status == FAIL and "jobs may be lost" in result.detail, result


@covers("replicas_in_sync")
def test_replicas_in_sync_fails_while_a_replica_is_stopped(redis_factory):
    import os
    import signal

    primary = redis_factory()
    client, ctx = _server_ctx(primary)
    assert one(ctx, "replicas_in_sync").value == "no replicas"
    replica = redis_factory("--replicaof", "127.0.0.1", str(primary.port))
    wait = time.monotonic() + 10
    while client.info("replication").get("slave0", {}).get("state") != "online":
        assert time.monotonic() < wait, "the replica never came online"
        time.sleep(0.05)
    assert one(GateContext(client=client), "replicas_in_sync").status == PASS
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while True:
            client.set("tick", time.time())
            result = one(GateContext(client=client), "replicas_in_sync")
            if result.status == FAIL or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.status == FAIL and "last acked" in result.detail, result
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)


@covers("verify_fresh", "index_orphans")
def test_the_stored_verify_gates_wait_until_a_full_verify_ran(r):
    """Their PASS/FAIL cases are in test_verify_gates.py; without any verify both WAIT."""
    ctx = GateContext(client=r)
    assert one(ctx, "verify_fresh").status == WAIT
    assert one(ctx, "index_orphans").status == WAIT
    run_verify(r, KeySchema())
    assert one(GateContext(client=r), "index_orphans").status == PASS


@covers("miss_increase")
def test_miss_increase_ignores_a_chance_window_and_fails_a_real_spike(app):
    """7 misses where 2 are expected is chance (p 0.005, a normal 3-sigma rule failed it);
    30 is not."""
    app.reads(new=990, miss=10)  # 1% misses before the phase
    baseline = scrape([app.url])
    app.reads(new=193, miss=7)
    chance = one(app.ctx(baseline=baseline), "miss_increase")
    assert chance.status == PASS, chance
    app.reads(new=170, miss=30)  # 37 of 400 where 4 are expected
    spike = one(app.ctx(baseline=baseline), "miss_increase")
    assert spike.status == FAIL, spike


def test_poisson_tail_matches_the_closed_form_and_sums_far_tails():
    assert poisson_tail(0, 3.0) == 1.0
    assert poisson_tail(2, 3.0) == 1.0  # at or below the mean: never significant
    assert math.isclose(poisson_tail(7, 2.0), 1 - sum(
        math.exp(-2.0) * 2.0 ** i / math.factorial(i) for i in range(7)), rel_tol=1e-9)
    assert 0 < poisson_tail(3000, 2000.0) < 1e-90
