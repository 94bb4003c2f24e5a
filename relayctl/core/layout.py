"""Which records of one dual-write Redis Cluster can write atomically, from the key templates.

A script or MULTI on a cluster may only touch keys of one slot. Redis hashes the content of a
key's first `{...}` when that content is non-empty (an empty `{}` means the whole key), so two
templates share a slot for every job exactly when they hash the same expression. Placeholder
values never hold braces (they are validated), so the templates alone decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from relayctl.core.cluster import key_slot
from relayctl.core.keys import KeySchema
from relayctl.core.validate import validate_job_id, validate_request_id, validate_workspace_id

ALWAYS, CHANCE, NEVER = "always", "chance", "never"
RECORDS = ("old_job", "new_job", "index", "idempotency", "queue")
RECORD_TITLES = {
    "old_job": "legacy record", "new_job": "new record", "index": "workspace index",
    "idempotency": "idempotency key", "queue": "pending queue",
}
_PLACEHOLDER = re.compile(r"<(?:ws|job_id|request_id)>")


def hashed_part(template: str) -> tuple[str, bool]:
    """What Redis hashes for keys of this template: (a tag's content, True) or (template, False)."""
    start = template.find("{")
    if start >= 0:
        end = template.find("}", start + 1)
        if end > start + 1:
            return template[start + 1:end], True
    return template, False


def hash_tagged(template: str) -> str:
    """The template with `<ws>` as its only hash tag: what keeps a workspace's keys together."""
    return template.replace("{", "").replace("}", "").replace("<ws>", "{<ws>}")


@dataclass(frozen=True)
class Sample:
    """One write's identifiers; without a request id the idempotency key is not written."""

    ws: str = "ws-a"
    job_id: str = "job-1"
    request_id: str | None = "req-1"

    def __post_init__(self) -> None:
        validate_workspace_id(self.ws)
        validate_job_id(self.job_id)
        if self.request_id is not None:
            validate_request_id(self.request_id)


@dataclass(frozen=True)
class LayoutRecord:
    name: str
    template: str
    hashed: str
    tagged: bool
    key: str
    slot: int

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_PLACEHOLDER.findall(self.hashed))

    @property
    def hashed_display(self) -> str:
        return f"{{{self.hashed}}}" if self.tagged else self.hashed

    def as_dict(self) -> dict[str, Any]:
        return {"record": self.name, "title": RECORD_TITLES[self.name],
                "template": self.template, "hashed": self.hashed, "tagged": self.tagged,
                "key": self.key, "slot": self.slot}


@dataclass(frozen=True)
class LayoutPair:
    """always: same hashed expression; chance: they hash a shared value differently (a tag on
    it would tie them); never: nothing in common to hash, or two constants in other slots."""

    a: str
    b: str
    relation: str
    sample_same_slot: bool

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "relation": self.relation,
                "sample_same_slot": self.sample_same_slot}


@dataclass(frozen=True)
class SlotLayout:
    cluster: bool
    sample: Sample
    records: tuple[LayoutRecord, ...]
    pairs: tuple[LayoutPair, ...]
    slot_groups: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.records)

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """Records written atomically together: all of them in one script when standalone."""
        return self.slot_groups if self.cluster else (self.names,)

    @property
    def split(self) -> tuple[tuple[str, ...], ...]:
        """The separate steps a dual-write becomes, not atomic with each other (none if one)."""
        return self.groups if len(self.groups) > 1 else ()

    @property
    def atomic(self) -> bool:
        return len(self.groups) == 1

    def record(self, name: str) -> LayoutRecord:
        return next(r for r in self.records if r.name == name)

    def relation(self, a: str, b: str) -> str:
        if a == b:
            return ALWAYS
        return next(p.relation for p in self.pairs if {p.a, p.b} == {a, b})

    def together(self, a: str, b: str) -> bool:
        """Whether one atomic step writes both here (by construction, not by sample luck)."""
        return any(a in g and b in g for g in self.groups)

    def groups_text(self, groups: tuple[tuple[str, ...], ...] | None = None) -> str:
        return " | ".join("+".join(g) for g in (self.groups if groups is None else groups))

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "atomic": self.atomic,
            "sample": {"ws": self.sample.ws, "job_id": self.sample.job_id,
                       "request_id": self.sample.request_id},
            "records": [r.as_dict() for r in self.records],
            "pairs": [p.as_dict() for p in self.pairs],
            "slot_groups": [list(g) for g in self.slot_groups],
            "groups": [list(g) for g in self.groups],
            "split": [list(g) for g in self.split],
        }


def _relation(a: LayoutRecord, b: LayoutRecord) -> str:
    if a.hashed == b.hashed:
        return ALWAYS
    if not a.placeholders and not b.placeholders:
        return ALWAYS if a.slot == b.slot else NEVER  # two constants: their slots are fixed
    return CHANCE if a.placeholders & b.placeholders else NEVER


def slot_layout(schema: KeySchema, *, cluster: bool, sample: Sample | None = None) -> SlotLayout:
    """The records one dual-write touches, how their slots relate, and the atomic groups."""
    sample = sample or Sample()
    keys = {
        "old_job": schema.old_key(sample.job_id),
        "new_job": schema.new_key(sample.ws, sample.job_id),
        "index": schema.index_key(sample.ws),
        "queue": schema.queue,
    }
    if sample.request_id is not None:
        keys["idempotency"] = schema.idempotency_key(sample.ws, sample.request_id)
    records = tuple(
        LayoutRecord(name, getattr(schema, name), *hashed_part(getattr(schema, name)),
                     key=keys[name], slot=key_slot(keys[name]))
        for name in RECORDS if name in keys)
    pairs = tuple(LayoutPair(a.name, b.name, _relation(a, b), a.slot == b.slot)
                  for a, b in combinations(records, 2))
    groups: list[list[LayoutRecord]] = []
    for rec in records:
        home = next((g for g in groups if _relation(g[0], rec) == ALWAYS), None)
        if home is None:
            groups.append([rec])
        else:
            home.append(rec)
    return SlotLayout(cluster=cluster, sample=sample, records=records, pairs=pairs,
                      slot_groups=tuple(tuple(r.name for r in g) for g in groups))
