"""Slot layout of one dual-write: what the templates' hash tags guarantee, and sample slots
that must equal what a real Redis Cluster computes (CLUSTER KEYSLOT)."""

from __future__ import annotations

import json
import string
from itertools import product

import pytest
import redis

from relayctl.core.cluster import key_slot
from relayctl.core.errors import ValidationError
from relayctl.core.keys import KeySchema
from relayctl.core.layout import (
    ALWAYS,
    CHANCE,
    NEVER,
    Sample,
    SlotLayout,
    hash_tagged,
    hashed_part,
    slot_layout,
)

SEED = KeySchema()
TAGGED = KeySchema(new_job="ai:job:{<ws>}:<job_id>", index="ai:jobidx:{<ws>}",
                   idempotency="ai:idempotency:{<ws>}:<request_id>")
ALL_AI = KeySchema(old_job="{ai}:jobs:<job_id>", new_job="{ai}:job:<ws>:<job_id>",
                   index="{ai}:jobidx:<ws>", queue="{ai}:queue:pending",
                   idempotency="{ai}:idempotency:<ws>:<request_id>")
# `{}` first: Redis hashes the whole key and never looks at the later {<ws>}
EMPTY_TAG = KeySchema(new_job="{}ai:job:{<ws>}:<job_id>", index="ai:jobidx:{<ws>}",
                      idempotency="ai:idempotency:{<ws>}:<request_id>")
ONE_TAGGED = KeySchema(new_job="ai:job:{<ws>}:<job_id>")
SCHEMAS = {"seed": SEED, "tagged": TAGGED, "all_ai": ALL_AI, "empty_tag": EMPTY_TAG,
           "one_tagged": ONE_TAGGED}


def cluster_slots(layout: SlotLayout) -> dict[str, int]:
    return {r.name: r.slot for r in layout.records}


def test_the_seed_templates_leave_every_record_of_a_dual_write_on_its_own():
    layout = slot_layout(SEED, cluster=True)
    assert layout.names == ("old_job", "new_job", "index", "idempotency", "queue")
    assert layout.groups == (("old_job",), ("new_job",), ("index",), ("idempotency",),
                             ("queue",))
    assert layout.split == layout.groups and not layout.atomic
    # legacy by job id, index by workspace: nothing in common to hash
    assert layout.relation("old_job", "index") == NEVER
    assert layout.relation("new_job", "index") == CHANCE  # both use <ws>, hashed differently
    assert all(layout.relation("queue", n) == NEVER for n in layout.names if n != "queue")
    assert not layout.together("new_job", "index")
    assert [r.hashed for r in layout.records] == [SEED.old_job, SEED.new_job, SEED.index,
                                                  SEED.idempotency, SEED.queue]
    assert not any(r.tagged for r in layout.records)


def test_hash_tagged_templates_group_new_record_index_and_idempotency_key():
    layout = slot_layout(TAGGED, cluster=True)
    assert layout.groups == (("old_job",), ("new_job", "index", "idempotency"), ("queue",))
    assert layout.split == layout.groups
    for a, b in (("new_job", "index"), ("new_job", "idempotency"), ("index", "idempotency")):
        assert layout.relation(a, b) == ALWAYS
        assert layout.together(a, b)
    assert layout.relation("old_job", "new_job") == NEVER
    assert layout.relation("queue", "index") == NEVER
    assert layout.record("index").hashed_display == "{<ws>}"
    assert len({layout.record(n).slot for n in ("new_job", "index", "idempotency")}) == 1


def test_a_constant_tag_shared_by_all_templates_puts_the_whole_dual_write_in_one_slot():
    layout = slot_layout(ALL_AI, cluster=True)
    assert layout.groups == (layout.names,)
    assert layout.atomic and layout.split == ()
    assert {r.slot for r in layout.records} == {key_slot("ai")}
    assert {p.relation for p in layout.pairs} == {ALWAYS}


def test_an_empty_tag_means_the_whole_key_is_hashed_and_later_braces_do_not_count():
    assert hashed_part("{}ai:job:{<ws>}:<job_id>") == ("{}ai:job:{<ws>}:<job_id>", False)
    layout = slot_layout(EMPTY_TAG, cluster=True)
    assert not layout.record("new_job").tagged
    assert layout.relation("new_job", "index") == CHANCE
    assert layout.relation("index", "idempotency") == ALWAYS
    assert layout.groups == (("old_job",), ("new_job",), ("index", "idempotency"), ("queue",))


def test_a_tag_in_only_one_template_guarantees_nothing():
    layout = slot_layout(ONE_TAGGED, cluster=True)
    assert layout.record("new_job").tagged and not layout.record("index").tagged
    assert layout.relation("new_job", "index") == CHANCE
    assert not layout.together("new_job", "index")


def test_a_sample_that_shares_a_slot_by_luck_is_reported_but_never_grouped():
    lucky = next(ws for ws in ("".join(t) for t in product(string.ascii_lowercase, repeat=4))
                 if key_slot(SEED.new_key(ws, "job-1")) == key_slot(SEED.index_key(ws)))
    layout = slot_layout(SEED, cluster=True, sample=Sample(ws=lucky))
    pair = next(p for p in layout.pairs if {p.a, p.b} == {"new_job", "index"})
    assert pair.sample_same_slot and pair.relation == CHANCE
    assert not layout.together("new_job", "index")


def test_a_bare_workspace_key_hashes_like_a_workspace_tag():
    layout = slot_layout(KeySchema(new_job="ai:job:{<ws>}:<job_id>", index="<ws>"),
                         cluster=True)
    assert layout.record("index").hashed == layout.record("new_job").hashed == "<ws>"
    assert layout.relation("new_job", "index") == ALWAYS


def test_two_constants_share_a_slot_exactly_when_their_slots_are_equal():
    same = next(t for t in (f"q{i}" for i in range(200_000)) if key_slot(t) == key_slot("x")
                and t != "x")
    together = slot_layout(KeySchema(index="{x}:idx:<ws>", queue=f"{{{same}}}:queue"),
                           cluster=True)
    assert together.relation("index", "queue") == ALWAYS
    apart = slot_layout(KeySchema(index="{x}:idx:<ws>", queue="{y}:queue"), cluster=True)
    assert key_slot("x") != key_slot("y")
    assert apart.relation("index", "queue") == NEVER


def test_on_a_standalone_server_everything_is_one_atomic_script():
    layout = slot_layout(SEED, cluster=False)
    assert layout.groups == (layout.names,)
    assert layout.atomic and layout.split == ()
    assert layout.together("old_job", "queue")
    # the slot analysis is still there, for a later move to a cluster
    assert len(layout.slot_groups) == 5
    assert layout.as_dict()["cluster"] is False


def test_without_a_request_id_the_idempotency_key_is_not_touched():
    layout = slot_layout(TAGGED, cluster=True, sample=Sample(request_id=None))
    assert "idempotency" not in layout.names
    assert layout.groups == (("old_job",), ("new_job", "index"), ("queue",))


def test_sample_identifiers_are_validated_before_any_key_is_built():
    with pytest.raises(ValidationError):
        Sample(ws="Bad{ws}")
    with pytest.raises(ValidationError):
        Sample(job_id="a*b")
    with pytest.raises(ValidationError):
        Sample(request_id="")


def test_the_report_is_plain_json():
    data = json.loads(json.dumps(slot_layout(TAGGED, cluster=True).as_dict()))
    assert data["groups"] == [["old_job"], ["new_job", "index", "idempotency"], ["queue"]]
    assert data["split"] == data["groups"] and data["atomic"] is False
    index = next(r for r in data["records"] if r["record"] == "index")
    assert index == {"record": "index", "title": "workspace index",
                     "template": "ai:jobidx:{<ws>}", "hashed": "<ws>", "tagged": True,
                     "key": "ai:jobidx:{ws-a}", "slot": key_slot("ws-a")}
    assert len(data["pairs"]) == 10


def test_hash_tagged_suggests_a_workspace_tag_in_place_of_any_other():
    assert hash_tagged(SEED.new_job) == "ai:job:{<ws>}:<job_id>"
    assert hash_tagged(SEED.index) == "ai:jobidx:{<ws>}"
    assert hash_tagged("{ai}:jobidx:<ws>") == "ai:jobidx:{<ws>}"


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sample_slots_equal_what_the_cluster_computes(redis_cluster, name):
    layout = slot_layout(SCHEMAS[name], cluster=True,
                         sample=Sample(ws="ws-7f3a", job_id="job.42", request_id="Req-9"))
    node = redis_cluster.node_client(redis_cluster.ports[0], decode_responses=True)
    try:
        server = {r.name: int(node.execute_command("CLUSTER KEYSLOT", r.key))
                  for r in layout.records}
    finally:
        node.close()
    assert cluster_slots(layout) == server
    for group in layout.slot_groups:
        assert len({server[n] for n in group}) == 1, group


def test_a_cluster_refuses_a_transaction_over_records_the_layout_keeps_apart(cluster_url):
    """The report's premise, checked on the server: MULTI over two of its groups fails."""
    from relayctl.core.connection import connect

    layout = slot_layout(SEED, cluster=True)
    new, index = layout.record("new_job"), layout.record("index")
    assert new.slot != index.slot
    client = connect(cluster_url)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.hset(new.key, "job_id", "job-1")
        pipe.zadd(index.key, {"job-1": 1})
        with pytest.raises(redis.exceptions.CrossSlotTransactionError):
            pipe.execute()
        tagged = slot_layout(TAGGED, cluster=True)
        pipe = client.pipeline(transaction=True)
        pipe.hset(tagged.record("new_job").key, "job_id", "job-1")
        pipe.zadd(tagged.record("index").key, {"job-1": 1})
        assert pipe.execute() == [1, 1]
    finally:
        client.close()
