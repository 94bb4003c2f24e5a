"""Metrics failures never break a request; a request failure is never hidden (SPEC §3)."""

from __future__ import annotations

import time

import pytest
import redis
from jobstore_kit import ALL_COMBOS, Combo, apply_flags, paginate
from redis.backoff import NoBackoff
from redis.retry import Retry

from relayctl.core.jobs import JobStore
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics

SCHEMA = KeySchema()
pytestmark = [pytest.mark.backends("standalone", "cluster"), pytest.mark.engines()]


class Exploding:
    """Stands in for a Counter/Gauge/Histogram: every use raises."""

    calls = 0

    def labels(self, *args, **kwargs):
        Exploding.calls += 1
        raise RuntimeError("metrics backend is broken")

    def inc(self, *args, **kwargs):
        Exploding.calls += 1
        raise RuntimeError("metrics backend is broken")

    observe = set = inc


class BrokenMetrics(Metrics):
    """Every metric of the store raises on use."""

    def __init__(self) -> None:
        super().__init__(labelled_workspaces=["ws-a"])
        for name in ("read_path", "list_read_path", "dual_write", "dual_write_seconds",
                     "workspace_mismatch", "requests", "flag_state", "deserialize_errors"):
            setattr(self, name, Exploding())


@pytest.mark.parametrize("combo", ALL_COMBOS, ids=lambda c: c.id)
def test_broken_metrics_never_break_enqueue_get_list_or_update(r, make_store, combo):
    Exploding.calls = 0
    store = make_store(metrics=BrokenMetrics())
    apply_flags(r, combo, store)
    res = store.enqueue("ws-a", action_provider="p", action_name="n", request_id="rq")
    assert res.created
    assert store.enqueue("ws-a", action_provider="p", action_name="n",
                         request_id="rq").job_id == res.job_id
    # readable unless it exists only in the legacy schema and the flags read only the new one
    visible = combo.dual or not combo.prefers_new or combo.fallback
    job = store.get_job("ws-a", res.job_id)
    assert (job is not None and job.status == "pending") if visible else job is None
    listed = [j.job_id for page in paginate(store, "ws-a", limit=1) for j in page]
    assert listed == ([res.job_id] if visible else [])
    store.update_status("ws-a", res.job_id, "completed", result={"n": 1})
    assert r.hget(SCHEMA.old_key(res.job_id), "status") == "completed"
    if visible:
        assert store.get_job("ws-a", res.job_id).status == "completed"
    # a foreign record read (mismatch counter) does not break the request either
    r.hset(SCHEMA.old_key("foreign"), mapping={"job_id": "foreign", "workspace_id": "ws-b"})
    assert store.get_job("ws-a", "foreign") is None
    assert Exploding.calls > 0, "the broken metrics were really used"


def test_broken_metrics_never_break_construction_or_flag_refresh(r, make_store):
    store = make_store(metrics=BrokenMetrics())
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=False), store)
    assert store.flags.dual_write and store.flags.read_prefers_new


def test_broken_metrics_do_not_stop_the_background_flag_refresh(r, make_store):
    store = make_store(metrics=BrokenMetrics(), background=True, refresh_interval=0.05)
    apply_flags(r, Combo(dual=True, prefers_new=False, fallback=True))
    deadline = time.monotonic() + 2
    while not store.flags.dual_write and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.flags.dual_write


@pytest.mark.parametrize("combo", ALL_COMBOS, ids=lambda c: c.id)
def test_a_failing_enqueue_is_raised_even_with_broken_metrics(r, make_store, combo):
    store = make_store(metrics=BrokenMetrics())
    apply_flags(r, combo, store)
    r.set(SCHEMA.queue, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.enqueue("ws-a", action_provider="p", action_name="n")


def test_a_failing_update_is_raised_even_with_broken_metrics(r, make_store):
    store = make_store(metrics=BrokenMetrics())
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
    r.delete(SCHEMA.index_key("ws-a"))
    r.set(SCHEMA.index_key("ws-a"), "not a zset")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.update_status("ws-a", jid, "running")


def test_a_broken_index_key_fails_the_listing_loudly(r, make_store):
    store = make_store(metrics=BrokenMetrics())
    apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), store)
    r.set(SCHEMA.index_key("ws-a"), "not a zset")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.list_jobs("ws-a")


def test_a_non_hash_value_at_a_job_key_is_a_miss_not_a_job(r, make_store, combo):
    store = make_store()
    apply_flags(r, combo, store)
    r.set(SCHEMA.old_key("strjob"), "not a hash")
    r.set(SCHEMA.new_key("ws-a", "strjob"), "not a hash")
    r.zadd(SCHEMA.index_key("ws-a"), {"strjob": 1})
    assert store.get_job("ws-a", "strjob") is None
    assert [j for page in paginate(store, "ws-a", limit=5) for j in page] == []


@pytest.fixture
def denied_client(r, redis_url):
    """A client whose ACL user may run every command but not touch job records: reads of
    ai:jobs:* and ai:job:* fail with NOPERM (flags, index and SCAN still work)."""
    r.acl_setuser("nojobs", enabled=True, passwords=["+pw"], keys=["relay:*", "ai:jobidx:*"],
                  channels=["*"], commands=["+@all"], reset=True)
    client = redis.Redis.from_url(redis_url, username="nojobs", password="pw",
                                  decode_responses=True)
    yield client
    client.close()
    r.acl_deluser("nojobs")


@pytest.mark.standalone_only("creates an ACL user on the one server it talks to")
def test_get_job_raises_a_permission_error_instead_of_reporting_a_miss(
    r, make_store, denied_client, combo
):
    setup = make_store()
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), setup)
    jid = setup.enqueue("ws-a", action_provider="p", action_name="n").job_id
    store = make_store(denied_client, metrics=BrokenMetrics())
    apply_flags(r, combo, store)
    with pytest.raises(redis.exceptions.NoPermissionError):
        store.get_job("ws-a", jid)


@pytest.mark.standalone_only("creates an ACL user on the one server it talks to")
def test_list_jobs_raises_a_permission_error_instead_of_returning_an_empty_page(
    r, make_store, denied_client, combo
):
    setup = make_store()
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), setup)
    setup.enqueue("ws-a", action_provider="p", action_name="n")
    apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), setup)
    setup.enqueue("ws-a", action_provider="p", action_name="n")
    store = make_store(denied_client)
    apply_flags(r, combo, store)
    with pytest.raises(redis.exceptions.NoPermissionError):
        paginate(store, "ws-a", limit=5)


@pytest.mark.standalone_only("kills a private redis-server of its own")
def test_an_unreachable_redis_is_an_error_not_an_empty_result(backend, redis_server, tmp_path):
    """A second, private redis-server is stopped under a live store: every call raises."""
    own = type(redis_server)(binary=redis_server.binary, port=_free_port(), workdir=tmp_path)
    own.start()
    client = redis.Redis(host="127.0.0.1", port=own.port, decode_responses=True,
                         socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = JobStore(client, background=False, pins={})
    try:
        own.stop(kill=True)
        for call in (
            lambda: store.get_job("ws-a", "j1"),
            lambda: store.list_jobs("ws-a"),
            lambda: store.enqueue("ws-a", action_provider="p", action_name="n"),
            lambda: store.update_status("ws-a", "j1", "running"),
        ):
            with pytest.raises((redis.ConnectionError, OSError)):
                call()
    finally:
        store.close()
        client.close()
        own.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.standalone_only(
    "a redis.Redis subclass talks to one server; every cluster test already reads through "
    "read_many's pipeline fallback (RedisCluster is not a plain redis.Redis)")
def test_the_store_works_with_a_plain_pipeline_client_subclass(r, redis_url):
    """read_many falls back to a pipeline for Redis subclasses: still one answer per read."""

    class MyRedis(redis.Redis):
        pass

    client = MyRedis.from_url(redis_url, decode_responses=True)
    with JobStore(client, background=False, pins={}) as store:
        apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), store)
        jid = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
        assert store.get_job("ws-a", jid).job_id == jid
        assert [j.job_id for p in paginate(store, "ws-a", limit=1) for j in p] == [jid]
    client.close()
