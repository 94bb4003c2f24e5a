"""Flags: one audited way to change them, env pins, live propagation, fleet report (SPEC §2)."""

from __future__ import annotations

import time

import pytest
import redis

from relayctl.core import fleet
from relayctl.core.audit import recent
from relayctl.core.cluster import is_cluster, key_slot
from relayctl.core.connection import connect
from relayctl.core.errors import UsageError
from relayctl.core.flags import (
    DEFAULTS,
    DUAL_WRITE,
    FALLBACK_OLD,
    FLAG_NAMES,
    PREFERS_NEW,
    FlagChange,
    env_pins,
    read_flags,
    set_flag,
)
from relayctl.core.keys import AUDIT_KEY, FLAGS_KEY


def test_unset_flags_mean_the_pre_migration_state(r):
    state = read_flags(r, pins={})
    assert (state.dual_write, state.read_prefers_new, state.read_fallback_old) == (
        False, False, True)
    assert DEFAULTS == {DUAL_WRITE: False, PREFERS_NEW: False, FALLBACK_OLD: True}


def test_set_flag_writes_the_flag_and_one_audit_entry_with_actor_reason_before_after(r):
    change = set_flag(r, PREFERS_NEW, "on", actor="alice", reason="phase 1 go", now=1000.5)
    assert r.hget(FLAGS_KEY, PREFERS_NEW) == "on"
    assert (change.before, change.after) == ("off", "on")
    entries = r.xrange(AUDIT_KEY)
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert entry_id == change.audit_id
    assert fields == {
        "ts": "1000.500", "actor": "alice", "action": "flag.set", "target": PREFERS_NEW,
        "before": "off", "after": "on", "reason": "phase 1 go",
    }
    change = set_flag(r, PREFERS_NEW, "off", actor="bob", reason="rollback")
    assert (change.before, change.after) == ("on", "off")
    newest = recent(r, 1)[0]
    assert (newest.actor, newest.before, newest.after, newest.reason) == (
        "bob", "on", "off", "rollback")


def test_set_flag_is_one_atomic_script_on_the_server(r, monitor):
    with monitor() as rec:
        set_flag(r, DUAL_WRITE, "on", actor="alice", reason="phase 3")
    top_level = [c for c in rec.commands if c.split(" ", 1)[0] in ("EVAL", "EVALSHA")]
    assert len(top_level) == 1
    hsets = [c for c in rec.commands if c.startswith("HSET")]
    xadds = [c for c in rec.commands if c.startswith("XADD")]
    assert len(hsets) == 1 and len(xadds) == 1
    # the flag write and the audit append happen inside the script, nothing outside it
    assert rec.commands.index(top_level[0]) < rec.commands.index(hsets[0])


def test_a_flag_change_that_cannot_be_audited_changes_nothing(r):
    r.set(AUDIT_KEY, "not a stream")
    with pytest.raises(redis.ResponseError):
        set_flag(r, PREFERS_NEW, "on", actor="alice", reason="phase 1")
    assert r.hget(FLAGS_KEY, PREFERS_NEW) is None


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_an_empty_reason_is_refused_and_nothing_is_written(r, reason):
    with pytest.raises(UsageError, match="reason"):
        set_flag(r, DUAL_WRITE, "on", actor="alice", reason=reason)
    assert r.exists(FLAGS_KEY, AUDIT_KEY) == 0


def test_an_empty_actor_is_refused(r):
    with pytest.raises(UsageError, match="actor"):
        set_flag(r, DUAL_WRITE, "on", actor=" ", reason="x")
    assert r.exists(FLAGS_KEY, AUDIT_KEY) == 0


@pytest.mark.parametrize("name,value", [("NOPE", "on"), (DUAL_WRITE, "maybe")])
def test_unknown_flags_and_values_are_refused(r, name, value):
    with pytest.raises(UsageError):
        set_flag(r, name, value, actor="alice", reason="x")
    assert r.exists(FLAGS_KEY, AUDIT_KEY) == 0


def test_an_explicit_pin_overrides_the_stored_value(r, make_store):
    set_flag(r, PREFERS_NEW, "off", actor="a", reason="x")
    set_flag(r, DUAL_WRITE, "on", actor="a", reason="x")
    store = make_store(pins={PREFERS_NEW: True})
    assert store.flags.read_prefers_new is True
    assert store.flags.dual_write is True  # unpinned flags follow Redis
    set_flag(r, PREFERS_NEW, "off", actor="a", reason="x")
    assert store.refresh_flags().read_prefers_new is True
    assert store.flags.pinned == {PREFERS_NEW: True}


def test_an_environment_variable_pins_the_flag_in_this_process(r, make_store, monkeypatch):
    monkeypatch.setenv(FALLBACK_OLD, "off")
    monkeypatch.setenv(DUAL_WRITE, "true")
    assert env_pins() == {FALLBACK_OLD: False, DUAL_WRITE: True}
    set_flag(r, FALLBACK_OLD, "on", actor="a", reason="x")
    set_flag(r, DUAL_WRITE, "off", actor="a", reason="x")
    store = make_store(pins=None)
    assert store.flags.read_fallback_old is False
    assert store.flags.dual_write is True


def test_a_garbage_environment_pin_is_refused(monkeypatch):
    monkeypatch.setenv(PREFERS_NEW, "perhaps")
    with pytest.raises(UsageError):
        env_pins()


def test_a_garbage_stored_value_falls_back_to_the_default(r):
    r.hset(FLAGS_KEY, mapping={PREFERS_NEW: "perhaps", FALLBACK_OLD: "off"})
    state = read_flags(r, pins={})
    assert state.read_prefers_new is False and state.read_fallback_old is False


def _wait_for(predicate, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def test_a_toggle_by_another_client_reaches_a_running_store_within_a_second_and_a_half(
    r, redis_url, make_store
):
    app_client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = make_store(app_client, background=True)
    assert store.flags.read_prefers_new is False
    set_flag(r, PREFERS_NEW, "on", actor="operator", reason="phase 1")
    assert _wait_for(lambda: store.flags.read_prefers_new, 1.5) <= 1.5
    set_flag(r, PREFERS_NEW, "off", actor="operator", reason="rollback")
    assert _wait_for(lambda: not store.flags.read_prefers_new, 1.5) <= 1.5
    store.close()
    app_client.close()


def test_the_fleet_heartbeat_shows_the_instance_with_effective_flags_and_pins(
    r, make_store
):
    set_flag(r, DUAL_WRITE, "on", actor="a", reason="x")
    store = make_store(background=True, pins={FALLBACK_OLD: False}, instance="app-1")

    def seen():
        return [i for i in fleet.live_instances(r) if i.instance == "app-1"]

    _wait_for(lambda: bool(seen()), 2.0)
    inst = seen()[0]
    assert inst.flags == {DUAL_WRITE: "on", PREFERS_NEW: "off", FALLBACK_OLD: "off"}
    assert inst.pinned == (FALLBACK_OLD,)
    assert inst.pid > 0 and inst.version
    # a later toggle shows up in the next heartbeat
    set_flag(r, PREFERS_NEW, "on", actor="a", reason="x")
    store.refresh_flags()
    store.heartbeat()
    assert seen()[0].flags[PREFERS_NEW] == "on"
    store.close()
    assert seen() == []


def test_every_flag_name_is_covered():
    assert set(FLAG_NAMES) == {DUAL_WRITE, PREFERS_NEW, FALLBACK_OLD}


@pytest.fixture
def rc(cluster_url):
    """A cluster client: relay:flags and relay:audit live in different slots there."""
    client = connect(cluster_url)
    assert is_cluster(client)
    assert key_slot(FLAGS_KEY) != key_slot(AUDIT_KEY)
    yield client
    client.close()


def test_on_a_cluster_set_flag_writes_the_flag_and_one_audit_entry(rc):
    change = set_flag(rc, PREFERS_NEW, "on", actor="alice", reason="phase 1 go", now=1000.5)
    assert rc.hget(FLAGS_KEY, PREFERS_NEW) == "on"
    assert change == FlagChange(PREFERS_NEW, "off", "on", change.audit_id)
    assert rc.xrange(AUDIT_KEY) == [(change.audit_id, {
        "ts": "1000.500", "actor": "alice", "action": "flag.set", "target": PREFERS_NEW,
        "before": "off", "after": "on", "reason": "phase 1 go",
    })]
    change = set_flag(rc, PREFERS_NEW, "off", actor="bob", reason="rollback")
    assert (change.before, change.after) == ("on", "off")
    newest = recent(rc, 1)[0]
    assert (newest.id, newest.actor, newest.before, newest.after, newest.reason) == (
        change.audit_id, "bob", "on", "off", "rollback")
    assert read_flags(rc, pins={}).read_prefers_new is False


def test_on_a_cluster_the_audit_entry_lands_before_the_flag_changes(rc, monkeypatch):
    """A failure between the two steps leaves an entry for a change that did not happen,
    never a change without its entry."""
    def lost(*args, **kwargs):
        raise redis.ConnectionError("lost the node")

    monkeypatch.setattr(rc, "hset", lost)
    with pytest.raises(redis.ConnectionError):
        set_flag(rc, DUAL_WRITE, "on", actor="alice", reason="phase 3")
    monkeypatch.undo()
    assert rc.hget(FLAGS_KEY, DUAL_WRITE) is None
    assert [f["target"] for _, f in rc.xrange(AUDIT_KEY)] == [DUAL_WRITE]


@pytest.mark.parametrize("deployment", ["standalone", "cluster"])
@pytest.mark.parametrize("key,message", [
    (AUDIT_KEY, "WRONGTYPE relay:audit is not a stream; the change cannot be audited"),
    (FLAGS_KEY, "WRONGTYPE relay:flags is not a hash"),
])
def test_a_wrong_typed_key_refuses_the_change_with_the_same_line_on_either_deployment(
        request, deployment, key, message):
    client = request.getfixturevalue("r" if deployment == "standalone" else "rc")
    client.set(key, "not what it should be")
    with pytest.raises(redis.ResponseError) as err:
        set_flag(client, PREFERS_NEW, "on", actor="alice", reason="phase 1")
    assert str(err.value) == message
    assert client.get(key) == "not what it should be"
    other = FLAGS_KEY if key == AUDIT_KEY else AUDIT_KEY
    assert client.exists(other) == 0
