"""The job store on a real Redis Cluster: the order of the one-slot steps that replace the
standalone scripts, what a crash between them leaves (and that verify repairs it), the
idempotency race, the hash-tagged single script, and listing across every shard."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator

import pytest
import redis
from jobstore_kit import Combo, apply_flags, job_keys, metric, monitored, paginate
from redis.cluster import RedisCluster

from relayctl.core import fleet
from relayctl.core.cluster import close_shards, key_slot, shards
from relayctl.core.jobs import JobStore, iso_to_ms
from relayctl.core.verify import run_verify

# every test runs with the seed's templates ([cluster]) and the hash-tagged ones
pytestmark = [pytest.mark.backends("cluster"), pytest.mark.tagged_layout]

DUAL_ON = Combo(dual=True, prefers_new=True, fallback=True)
LEGACY_ONLY = Combo(dual=False, prefers_new=False, fallback=True)
ATTEMPTS = "relay_dual_write_attempt_total"


class Crash(BaseException):
    """The process dies here: no except clause of the store runs (unlike an Exception)."""


def _crash(*args, **kwargs):
    raise Crash


def test_the_fixtures_give_a_cluster_and_the_layout_decides_the_slots(r, schema, layout):
    assert isinstance(r, RedisCluster)
    new, index = schema.new_key("ws-a", "job-1"), schema.index_key("ws-a")
    idem = schema.idempotency_key("ws-a", "req-1")
    together = key_slot(new) == key_slot(index) == key_slot(idem)
    assert together is (layout == "tagged")
    assert key_slot(schema.old_key("job-1")) != key_slot(new)


def test_a_crash_after_the_legacy_step_leaves_a_legacy_only_record_that_verify_repairs(
    r, make_store, schema, monkeypatch
):
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    monkeypatch.setattr(store, "_enqueue_new_step", _crash)
    with pytest.raises(Crash):
        store.enqueue("ws-a", action_provider="p", action_name="n", job_id="job-1",
                      request_id="req-1", now=1_714_557_600.5)
    old, new = schema.old_key("job-1"), schema.new_key("ws-a", "job-1")
    assert r.hget(old, "workspace_id") == "ws-a" and r.hget(old, "status") == "pending"
    assert r.exists(new) == 0
    assert r.zscore(schema.index_key("ws-a"), "job-1") is None
    assert r.llen(schema.queue) == 0
    assert r.exists(schema.idempotency_key("ws-a", "req-1")) == 0

    report = run_verify(r, schema, store=False)
    assert report.counts["missing"] == 1 and report.examples["missing"] == [new]
    repaired = run_verify(r, schema, repair=True, store=False)
    assert repaired.repaired == 1
    assert r.hgetall(new) == r.hgetall(old)
    assert r.zscore(schema.index_key("ws-a"), "job-1") == 1_714_557_600_500
    assert run_verify(r, schema, store=False).clean


def test_a_crash_between_the_update_steps_leaves_a_stale_copy_that_verify_repairs(
    r, make_store, schema, monkeypatch
):
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    store.enqueue("ws-a", action_provider="p", action_name="n", job_id="job-1")
    monkeypatch.setattr(store, "_update_new_step", _crash)
    with pytest.raises(Crash):
        store.update_status("ws-a", "job-1", "completed", result={"ok": 1})
    old, new = schema.old_key("job-1"), schema.new_key("ws-a", "job-1")
    assert r.hget(old, "status") == "completed"  # the legacy record is written first
    assert r.hget(new, "status") == "pending"

    report = run_verify(r, schema, store=False)
    assert report.counts["field_mismatch"] == 1
    assert run_verify(r, schema, repair=True, store=False).repaired == 1
    assert r.hgetall(new) == r.hgetall(old)
    assert run_verify(r, schema, store=False).clean


@pytest.mark.parametrize("broken", ["index-after-legacy-step", "queue-after-claim"])
def test_a_step_failing_after_the_precheck_undoes_every_write_of_the_call(
    r, make_store, schema, monkeypatch, broken
):
    """Another client breaks a key between the pre-read and the step that writes it: the
    call raises, and what it already wrote (legacy, new, index entry, idempotency key) is
    removed again, so the caller's failure is not an orphan pending job in listings."""
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    index = schema.index_key("ws-a")
    if broken == "index-after-legacy-step":
        step, planted = "_enqueue_legacy_step", index
    else:
        step, planted = "_claim_request", schema.queue
    real = getattr(store, step)

    def then_break(*args, **kwargs):
        value = real(*args, **kwargs)
        r.set(planted, "oops")
        return value

    monkeypatch.setattr(store, step, then_break)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.enqueue("ws-a", action_provider="p", action_name="n", job_id="job-1",
                      request_id="req-1")
    assert set(r.scan_iter(count=1000)) == {planted, "relay:flags", "relay:audit",
                                            "relay:cursor:secret"}
    assert metric(store, ATTEMPTS, result="failed", workspace_id="ws-a") == 1
    assert metric(store, ATTEMPTS, result="succeeded", workspace_id="ws-a") == 0


def test_an_update_never_recreates_a_legacy_record_deleted_after_the_precheck(
    r, make_store, schema, monkeypatch
):
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    store.enqueue("ws-a", action_provider="p", action_name="n", job_id="job-1")
    old = schema.old_key("job-1")
    real = store._update_legacy_step

    def delete_first(*args, **kwargs):
        r.delete(old)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_update_legacy_step", delete_first)
    assert store.update_status("ws-a", "job-1", "running") == "new"
    assert r.exists(old) == 0
    assert r.hget(schema.new_key("ws-a", "job-1"), "status") == "running"


@pytest.mark.parametrize("combo", [DUAL_ON, Combo(False, False, True)], ids=lambda c: c.id)
def test_the_idempotency_race_leaves_exactly_one_job_and_cleans_up_the_losers(
    r, new_client, schema, combo
):
    """8 requests with one request id, held until all 8 have written their own job (legacy,
    new, index): one wins the SET NX, the 7 losers remove everything they wrote and return
    the winner's id."""
    threads = 8
    stores = [JobStore(new_client(), background=False, pins={}, schema=schema)
              for _ in range(threads)]
    try:
        apply_flags(r, combo, *stores)
        written = threading.Barrier(threads)
        counted = threading.Barrier(threads)
        peak: list[int] = []

        def gate(real):
            def claim(*args, **kwargs):
                if written.wait(timeout=20) == 0:
                    peak.append(len(job_keys(r, schema.old_pattern)))
                counted.wait(timeout=20)
                return real(*args, **kwargs)
            return claim

        for s in stores:
            s._claim_request = gate(s._claim_request)
        results: list = [None] * threads
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                results[i] = stores[i].enqueue("ws-a", action_provider="p", action_name="n",
                                               request_id="same")
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(30)
        assert errors == []
        assert peak == [threads], "every request wrote its own job before the claims"
        winner = {res.job_id for res in results}
        assert len(winner) == 1 and sum(res.created for res in results) == 1
        jid = winner.pop()
        assert job_keys(r, schema.old_pattern) == [schema.old_key(jid)]
        assert job_keys(r, schema.new_pattern) == (
            [schema.new_key("ws-a", jid)] if combo.dual else [])
        assert r.zrange(schema.index_key("ws-a"), 0, -1) == ([jid] if combo.dual else [])
        assert r.lrange(schema.queue, 0, -1) == [jid]
        assert r.get(schema.idempotency_key("ws-a", "same")) == jid
    finally:
        for s in stores:
            s.close()


@contextlib.contextmanager
def node_monitor(address: str) -> Iterator[list[dict]]:
    """MONITOR on one node ('host:port'): each command with its client_type ('lua' for a
    command a script ran)."""
    host, _, port = address.rpartition(":")
    seen: list[dict] = []
    with monitored(lambda **kw: redis.Redis(host=host, port=int(port), **kw), seen.append):
        yield seen


def test_the_index_entry_is_written_by_the_new_records_script_when_they_share_a_slot(
    r, make_store, schema, layout
):
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    new, index = schema.new_key("ws-a", "job-1"), schema.index_key("ws-a")
    with node_monitor(r.nodes_manager.get_node_from_slot(key_slot(index)).name) as seen:
        store.enqueue("ws-a", action_provider="p", action_name="n", job_id="job-1")
    zadds = [c for c in seen if c["command"].split()[0].upper() == "ZADD"]
    assert len(zadds) == 1 and zadds[0]["command"].split()[1] == index
    if layout == "tagged":
        assert zadds[0]["client_type"] == "lua"
        # apart from the pre-read's TYPE, the one client command on the new record is the
        # script that also holds the index
        touching = [c["command"].split() for c in seen
                    if c["client_type"] != "lua" and new in c["command"].split()]
        assert [(w[0].upper(), w[2:5]) for w in touching] == [
            ("TYPE", []), ("EVALSHA", ["2", new, index])]
    else:
        assert zadds[0]["client_type"] != "lua"  # a command of its own, after the script
    assert r.zscore(index, "job-1") is not None and r.exists(new) == 1


def _shard_of(cursor: str) -> tuple[str, str]:
    body = json.loads(base64.urlsafe_b64decode(cursor.split(".")[0] + "=="))
    return body["phase"], body.get("shard", "0")


def test_a_legacy_listing_scans_every_shard_once_in_slot_order(r, make_store):
    store = make_store()
    apply_flags(r, LEGACY_ONLY, store)
    ids = {store.enqueue("ws-a", action_provider="p", action_name="n").job_id
           for _ in range(40)}
    for _ in range(10):
        store.enqueue("ws-b", action_provider="p", action_name="n")
    found = shards(r)
    close_shards(found, r)
    names = [s.name for s in found]
    assert len(names) == 3
    served = {s.name for s in found for k in ids
              if r.nodes_manager.get_node_from_slot(key_slot(store.schema.old_key(k))).name
              == s.address}
    assert served == set(names), "the jobs must live on every shard for this test to mean it"

    visited: list[str] = []
    listed: list[str] = []
    cursor = None
    while True:
        page = store.list_jobs("ws-a", cursor=cursor, limit=3)
        listed += [j.job_id for j in page.jobs]
        cursor = page.cursor
        if cursor is None:
            break
        phase, shard = _shard_of(cursor)
        assert phase == "legacy"
        if not visited or visited[-1] != shard:
            visited.append(shard)
    assert sorted(listed) == sorted(ids)
    assert visited == names  # each shard once, in slot order


@pytest.mark.parametrize("combo", [LEGACY_ONLY, DUAL_ON], ids=lambda c: c.plan)
def test_a_listing_scans_only_the_legacy_pattern_on_every_primary(r, make_store, schema,
                                                                   combo):
    """SPEC §3: listing never walks the new keyspace; on a cluster the legacy part SCANs
    each primary (and only with the legacy pattern)."""
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    for i in range(20):
        store.enqueue("ws-a" if i % 2 else "ws-b", action_provider="p", action_name="n")
    apply_flags(r, LEGACY_ONLY, store)
    for _ in range(20):
        store.enqueue("ws-a", action_provider="p", action_name="n")
    apply_flags(r, combo, store)
    found = shards(r)
    close_shards(found, r)
    with contextlib.ExitStack() as stack:
        seen = {s.address: stack.enter_context(node_monitor(s.address)) for s in found}
        listed = [j for page in paginate(store, "ws-a", limit=3) for j in page]
    assert len(listed) == 30 and len({j.job_id for j in listed}) == 30
    for address, commands in seen.items():
        scans = [c["command"].split() for c in commands
                 if c["command"].split()[0].upper() in ("SCAN", "KEYS")]
        assert scans, f"{address} was not scanned"
        assert {w[0].upper() for w in scans} == {"SCAN"}
        assert {w[w.index("MATCH") + 1] for w in scans} == {schema.old_pattern}
        reads = [c["command"] for c in commands if " ai:job:" in c["command"]]
        assert all(" ai:job:ws-a:" in c or " ai:job:{ws-a}:" in c for c in reads)


def test_heartbeats_are_published_and_withdrawn_on_a_cluster(r, make_store):
    store = make_store()
    store.heartbeat()
    live = fleet.live_instances(r)
    assert [i.instance for i in live] == [store.instance]
    assert live[0].flags == store.flags.as_dict()
    store.close()
    assert fleet.live_instances(r) == []
    assert r.exists(fleet.FLEET_PREFIX + store.instance) == 0


def test_get_and_list_read_both_schemas_on_a_cluster(r, make_store, schema):
    store = make_store()
    apply_flags(r, DUAL_ON, store)
    both = store.enqueue("ws-a", action_provider="p", action_name="n", now=1_700_000_000)
    apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), store)
    legacy = store.enqueue("ws-a", action_provider="p", action_name="n", now=1_700_000_001)
    assert store.get_job("ws-a", both.job_id).source == "new"
    assert store.get_job("ws-a", legacy.job_id).source == "old"
    pages = paginate(store, "ws-a", limit=1)
    assert [(j.job_id, j.source) for p in pages for j in p] == [
        (both.job_id, "new"), (legacy.job_id, "old")]
    assert iso_to_ms(store.get_job("ws-a", both.job_id).enqueued_at) == 1_700_000_000_000
