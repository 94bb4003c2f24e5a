"""Checklist writes with their audit entries, on a standalone server and on a real Redis
Cluster, where relay:checklist, relay:flags and relay:audit live in different slots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from relayctl.core.checklist import advance, apply, mark, read_checklist
from relayctl.core.cluster import is_cluster, key_slot
from relayctl.core.connection import connect
from relayctl.core.evaluation import GateConfig, gate_context
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW, read_flags
from relayctl.core.keys import AUDIT_KEY, CHECKLIST_KEY
from relayctl.core.phases import phase


@dataclass
class Deployment:
    client: redis.Redis
    url: str


@pytest.fixture(params=["standalone", "cluster"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    url = request.getfixturevalue("redis_url" if request.param == "standalone"
                                  else "cluster_url")
    client = connect(url)
    assert is_cluster(client) == (request.param == "cluster")
    yield Deployment(client, url)
    client.close()


def audit_log(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(AUDIT_KEY)]


def test_the_checklist_and_the_audit_stream_are_in_different_slots_on_a_cluster():
    assert key_slot(CHECKLIST_KEY) != key_slot(AUDIT_KEY)


def test_mark_checks_items_off_with_actor_and_time_and_one_audit_entry(dep):
    mark(dep.client, ["env-example", "sec-secrets"], actor="alice", reason="reviewed",
         now=1000.0)
    state = read_checklist(dep.client)
    assert state.done("env-example") and state.done("sec-secrets")
    assert state.items["env-example"] == {"state": "done", "actor": "alice", "ts": 1000.0}
    assert audit_log(dep.client) == [{
        "ts": "1000.000", "actor": "alice", "action": "checklist.mark",
        "target": "env-example,sec-secrets", "before": "", "after": "done",
        "reason": "reviewed"}]
    mark(dep.client, ["sec-secrets"], actor="bob", undo=True, now=1001.0)
    assert not read_checklist(dep.client).done("sec-secrets")
    assert [(e["actor"], e["after"]) for e in audit_log(dep.client)] == [
        ("alice", "done"), ("bob", "open")]


def test_apply_sets_the_phase_flags_each_audited_and_records_when(dep):
    dep.client.hset(CHECKLIST_KEY, "phase", "1")
    applied, changes = apply(dep.client, actor="alice", reason="step 1", metrics_urls=[],
                             now=2000.0)
    assert applied.number == 1
    assert [(c.name, c.before, c.after) for c in changes] == [
        (DUAL_WRITE, "off", "off"), (PREFERS_NEW, "off", "on"), (FALLBACK_OLD, "on", "on")]
    flags = read_flags(dep.client, pins={})
    assert (flags.dual_write, flags.read_prefers_new, flags.read_fallback_old) == (
        False, True, True)
    state = read_checklist(dep.client)
    assert state.applied == {1: 2000.0} and state.memory[1] > 0  # the memory gate's baseline
    log = audit_log(dep.client)
    assert [(e["action"], e["target"]) for e in log] == [
        ("checklist.apply", "phase 1"), ("flag.set", DUAL_WRITE), ("flag.set", PREFERS_NEW),
        ("flag.set", FALLBACK_OLD)]
    assert json.loads(log[0]["after"]) == {DUAL_WRITE: False, PREFERS_NEW: True,
                                           FALLBACK_OLD: True}
    assert {e["reason"] for e in log[1:]} == {"phase 1: step 1"}
    ids = [i for i, _ in dep.client.xrange(AUDIT_KEY)]
    assert [c.audit_id for c in changes] == ids[1:]


def test_advance_is_refused_with_nothing_written_then_moves_on_with_override_entries(dep):
    def ctx():
        return gate_context(GateConfig(redis_url=dep.url), dep.client,
                            read_checklist(dep.client), 0)

    refused = advance(dep.client, ctx(), actor="alice", overrides={}, now=lambda: 3000.0)
    assert not refused.advanced and refused.blocking == ["new_keys_present"]
    assert dep.client.exists(CHECKLIST_KEY, AUDIT_KEY) == 0
    manual = [i.id for i in phase(0).items if i.manual]
    mark(dep.client, manual, actor="alice", now=3000.0)
    result = advance(dep.client, ctx(), actor="alice",
                     overrides={"new_keys_present": "census runs after the deploy"},
                     now=lambda: 3001.0)
    assert result.advanced and (result.phase_from, result.phase_to) == (0, 1)
    assert read_checklist(dep.client).phase == 1
    override, moved = audit_log(dep.client)[1:]
    assert (override["action"], override["target"], override["before"], override["after"],
            override["reason"]) == ("gate.override", "phase 0/new_keys_present", "WAIT",
                                    "PASS", "census runs after the deploy")
    assert (moved["action"], moved["before"], moved["after"], moved["ts"]) == (
        "checklist.advance", "0", "1", "3001.000")


def test_on_a_standalone_server_each_checklist_write_is_one_transaction(r, monitor):
    r.ping()  # connect first: the handshake is not part of the write
    with monitor() as rec:
        mark(r, ["env-example"], actor="alice")
    # one read (the phase the operator sees), then one script: phase check, write, entry
    assert [c.split(" ", 1)[0] for c in rec.commands] == ["HGETALL", "EVAL", "HGET", "HSET",
                                                          "XADD"]


def test_on_a_standalone_server_an_advance_and_its_entries_are_one_transaction(r, redis_url,
                                                                              monitor):
    mark(r, [i.id for i in phase(0).items if i.manual], actor="alice")
    ctx = gate_context(GateConfig(redis_url=redis_url), r, read_checklist(r), 0)
    r.ping()
    with monitor() as rec:
        result = advance(r, ctx, actor="alice", overrides={"new_keys_present": "later"})
    assert result.advanced
    writes = [c.split(" ", 1)[0] for c in rec.commands if c.split(" ", 1)[0] in
              ("EVAL", "MULTI", "HSET", "XADD", "EXEC")]
    assert writes == ["EVAL", "HSET", "XADD", "XADD"]
