"""get_job costs one round trip whatever the flags (SPEC §3), counted on both ends: sends on
the client's connection and commands executed by the server."""

from __future__ import annotations

import pytest
from jobstore_kit import apply_flags, set_dual_write, stats_delta

from relayctl.core.keys import KeySchema

SCHEMA = KeySchema()
pytestmark = [pytest.mark.backends("standalone", "cluster"), pytest.mark.engines()]
ROUND_TRIPS = "counts sends on one connection and INFO commandstats of one server"


def _seed(r, store) -> dict[str, str]:
    """One job in both schemas, one legacy-only, one new-only."""
    set_dual_write(r, True, store)
    both = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
    new_only = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
    r.delete(SCHEMA.old_key(new_only))
    set_dual_write(r, False, store)
    old_only = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
    return {"both": both, "new_only": new_only, "old_only": old_only}


@pytest.fixture
def counted_store(r, make_store, counting_client):
    client, trips = counting_client
    store = make_store(client)
    return store, trips, _seed(r, store)


@pytest.fixture
def seeded_store(r, make_store):
    store = make_store()
    return store, _seed(r, store)


def expected_hgetalls(combo) -> int:
    return 2 if combo.prefers_new and combo.fallback else 1


@pytest.mark.standalone_only(ROUND_TRIPS)
def test_get_job_is_one_round_trip_and_the_expected_reads_under_every_flag_combination(
    r, counted_store, commandstats, combo
):
    store, trips, ids = counted_store
    apply_flags(r, combo, store)
    for kind in ("both", "new_only", "old_only", "missing"):
        jid = ids.get(kind, "no-such-job")
        before = commandstats()
        trips.reset()
        job = store.get_job("ws-a", jid)
        assert trips.count == 1, f"{combo.id} {kind}: {trips.count} round trips"
        delta = stats_delta(before, commandstats())
        assert delta == {"hgetall": expected_hgetalls(combo)}, f"{combo.id} {kind}: {delta}"
        found = {
            "both": True,
            "new_only": combo.prefers_new,
            "old_only": not combo.prefers_new or combo.fallback,
            "missing": False,
        }[kind]
        assert (job is not None) is found, f"{combo.id} {kind}"


@pytest.mark.standalone_only("MONITOR records the commands of one server")
def test_get_job_reads_exactly_the_keys_the_flags_name(r, counted_store, monitor, combo):
    store, _, ids = counted_store
    apply_flags(r, combo, store)
    jid = ids["both"]
    with monitor() as rec:
        store.get_job("ws-a", jid)
    reads = [c for c in rec.commands if c.upper().startswith("HGETALL")]
    new_read = f"HGETALL {SCHEMA.new_key('ws-a', jid)}"
    old_read = f"HGETALL {SCHEMA.old_key(jid)}"
    if not combo.prefers_new:
        assert reads == [old_read]
    elif combo.fallback:
        assert reads == [new_read, old_read]
    else:
        assert reads == [new_read]
    assert len(rec.commands) == len(reads), rec.commands


def test_a_new_copy_found_is_reported_on_the_new_path(r, seeded_store, combo):
    store, ids = seeded_store
    apply_flags(r, combo, store)
    job = store.get_job("ws-a", ids["both"])
    assert job is not None
    assert job.source == ("new" if combo.prefers_new else "old")
    path = store.metrics.registry.get_sample_value(
        "relay_job_read_path_total", {"path": job.source, "workspace_id": "ws-a"})
    assert path == 1
