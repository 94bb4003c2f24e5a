"""Exactly-once pagination over both schemas, under every flag combination (SPEC §3)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from jobstore_kit import ALL_COMBOS, Combo, apply_flags, job_keys, paginate, set_dual_write

from relayctl.core.errors import ValidationError
from relayctl.core.jobs import STATUSES, JobStore
from relayctl.core.keys import KeySchema

SCHEMA = KeySchema()
# standalone, cluster, and cluster with hash-tagged templates (see tests/core/conftest.py)
pytestmark = [pytest.mark.backends("standalone", "cluster"), pytest.mark.tagged_layout,
              pytest.mark.engines()]
BASE = 1_714_557_600.0  # 2024-05-01T10:00:00Z
# (workspace, legacy-only, both schemas, new-only); 430 jobs in all. Every indexed job of
# ws-d has the same enqueued_at: a tie longer than one index batch (16).
LAYOUT = [("ws-a", 70, 70, 70), ("ws-b", 40, 40, 40), ("ws-c", 20, 20, 20), ("ws-d", 10, 15, 15)]
ALL_TIED = "ws-d"
LIMITS_ALL = (7, 50)
LIMIT_ONE_WS = ("ws-c", "ws-d")  # limit=1 pages one job per request: kept to the small ones


@dataclass
class Dataset:
    old_only: dict[str, dict[str, str]] = field(default_factory=dict)  # ws -> {job_id: status}
    both: dict[str, dict[str, str]] = field(default_factory=dict)
    new_only: dict[str, dict[str, str]] = field(default_factory=dict)

    def expected(self, ws: str, plan: str, status: str | None) -> set[str]:
        groups = {
            "old": (self.old_only, self.both),
            "new": (self.both, self.new_only),
            "new+old": (self.old_only, self.both, self.new_only),
        }[plan]
        return {
            jid for group in groups for jid, st in group.get(ws, {}).items()
            if status is None or st == status
        }


def _moment(i: int, ws: str) -> float:
    # groups of four jobs share one enqueued_at: ties in the index score
    return BASE if ws == ALL_TIED else BASE + (i // 4) * 0.5


def build_dataset(r, store: JobStore, schema) -> Dataset:
    """Jobs legacy-only (dual-write off), in both schemas (on), new-only (legacy deleted),
    with every status, shared timestamps, and noise no listing may return."""
    data = Dataset()
    counter = 0
    set_dual_write(r, False, store)
    for ws, n_old, _, _ in LAYOUT:
        group = data.old_only.setdefault(ws, {})
        for _ in range(n_old):
            counter += 1
            jid = store.enqueue(ws, action_provider="p", action_name="n",
                                now=_moment(counter, ws)).job_id
            status = STATUSES[counter % 4]
            if status != "pending":
                store.update_status(ws, jid, status)
            group[jid] = status
    set_dual_write(r, True, store)
    for ws, _, n_both, n_new in LAYOUT:
        both = data.both.setdefault(ws, {})
        new_only = data.new_only.setdefault(ws, {})
        for k in range(n_both + n_new):
            counter += 1
            jid = store.enqueue(ws, action_provider="p", action_name="n",
                                now=_moment(counter, ws)).job_id
            status = STATUSES[counter % 4]
            if status != "pending":
                store.update_status(ws, jid, status)
            if k < n_both:
                both[jid] = status
            else:
                r.delete(schema.old_key(jid))
                new_only[jid] = status
    # noise: a non-hash legacy key, a legacy record without a valid job id, an index entry
    # with no record at all, and a job id in the index that is not a valid id
    r.set(schema.old_key("garbage"), "not a hash")
    r.hset(schema.old_key("badid"), mapping={"job_id": "Bad Id", "workspace_id": "ws-a",
                                              "status": "pending"})
    r.zadd(schema.index_key("ws-a"), {"ghost": BASE * 1000, "Not*Valid": BASE * 1000})
    return data


@pytest.fixture
def dataset(r, make_store, schema):
    store = make_store()
    data = build_dataset(r, store, schema)
    sizes = {len(g[ws]) for g in (data.old_only, data.both, data.new_only) for ws, *_ in LAYOUT}
    assert sum(a + b + c for _, a, b, c in LAYOUT) == 430 and min(sizes) >= 10
    # sanity: the layout is what the flags will route on
    assert r.zcard(schema.index_key("ws-a")) == 70 + 70 + 2
    assert len(set(r.zrange(schema.index_key(ALL_TIED), 0, -1, withscores=True))) == 30
    tied = r.zrange(schema.index_key(ALL_TIED), 0, -1, withscores=True)
    assert len({s for _, s in tied}) == 1
    legacy = 140 + 2 + sum(a + b for _, a, b, _ in LAYOUT[1:])
    assert len(job_keys(r, schema.old_pattern)) == legacy
    return data


def check_full_pagination(store: JobStore, data: Dataset, combo: Combo, ws: str, *,
                          limit: int, status: str | None) -> None:
    pages = paginate(store, ws, limit=limit, status=status)
    seen = [job.job_id for page in pages for job in page]
    where = f"{combo.id} ws={ws} limit={limit} status={status}"
    assert all(len(page) <= limit for page in pages), where
    assert len(seen) == len(set(seen)), f"duplicates in {where}"
    assert set(seen) == data.expected(ws, combo.plan, status), where
    for page in pages:
        for job in page:
            assert job.workspace_id == ws
            assert status is None or job.status == status


def test_every_job_is_listed_exactly_once_and_pages_never_exceed_the_limit(
    r, make_store, dataset, combo
):
    store = make_store()
    apply_flags(r, combo, store)
    for ws, *_ in LAYOUT:
        for status in (None, "completed", "pending"):
            for limit in LIMITS_ALL:
                check_full_pagination(store, dataset, combo, ws, limit=limit, status=status)
    for ws in LIMIT_ONE_WS:
        for status in (None, "failed"):
            check_full_pagination(store, dataset, combo, ws, limit=1, status=status)


def test_the_index_part_comes_newest_first_with_ties_broken_by_job_id(
    r, make_store, dataset, schema
):
    store = make_store()
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=False), store)
    for ws, *_ in LAYOUT:
        listed = [j for page in paginate(store, ws, limit=7) for j in page]
        order = [(r.zscore(schema.index_key(ws), j.job_id), j.job_id) for j in listed]
        assert len(order) > 10
        ties = 0
        for (s1, id1), (s2, id2) in itertools.pairwise(order):
            assert s1 > s2 or (s1 == s2 and id1 > id2), (s1, id1, s2, id2)
            ties += s1 == s2
        assert ties, "the dataset must contain equal scores"


def test_with_fallback_indexed_jobs_come_before_legacy_only_jobs(r, make_store, dataset):
    store = make_store()
    apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), store)
    listed = [j.job_id for page in paginate(store, "ws-b", limit=50) for j in page]
    indexed = set(dataset.both["ws-b"]) | set(dataset.new_only["ws-b"])
    boundary = len(indexed)
    assert set(listed[:boundary]) == indexed
    assert set(listed[boundary:]) == set(dataset.old_only["ws-b"])


def test_one_maximal_page_holds_the_whole_expected_set(r, make_store, dataset, combo):
    store = make_store()
    apply_flags(r, combo, store)
    pages = paginate(store, "ws-a", limit=1000)
    seen = [j.job_id for page in pages for j in page]
    assert sorted(seen) == sorted(dataset.expected("ws-a", combo.plan, None))


def test_an_empty_workspace_lists_nothing_and_ends_at_once(r, make_store, combo):
    store = make_store()
    apply_flags(r, combo, store)
    store.enqueue("ws-b", action_provider="p", action_name="n")
    assert paginate(store, "ws-empty", limit=5) == [[]]


def test_a_legacy_record_whose_new_copy_expired_is_still_listed_once_with_fallback(
    r, make_store, schema
):
    store = make_store()
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), store)
    jid = store.enqueue("ws-a", action_provider="p", action_name="n").job_id
    r.delete(schema.new_key("ws-a", jid))  # index entry and legacy record remain
    listed = [j for page in paginate(store, "ws-a", limit=1) for j in page]
    assert [(j.job_id, j.source) for j in listed] == [(jid, "old")]
    apply_flags(r, Combo(dual=True, prefers_new=True, fallback=False), store)
    assert [j for page in paginate(store, "ws-a", limit=1) for j in page] == []


@pytest.mark.parametrize("limit", [0, -1, 1001, 2.5, "7", None])
def test_a_limit_outside_1_to_1000_is_a_validation_error(store, limit):
    with pytest.raises(ValidationError):
        store.list_jobs("ws-a", limit=limit)


def test_an_unknown_status_filter_is_a_validation_error(store):
    with pytest.raises(ValidationError):
        store.list_jobs("ws-a", status="done")


def _scan_patterns(commands: list[str]) -> list[str]:
    patterns = []
    for cmd in commands:
        words = cmd.split()
        if words and words[0].upper() in ("SCAN", "KEYS"):
            upper = [w.upper() for w in words]
            if words[0].upper() == "KEYS":
                patterns.append(words[1])
            elif "MATCH" in upper:
                patterns.append(words[upper.index("MATCH") + 1])
            else:
                patterns.append("*")
    return patterns


@pytest.mark.parametrize(
    "combo", [Combo(True, False, True), Combo(True, True, False), Combo(True, True, True)],
    ids=lambda c: c.plan,
)
@pytest.mark.standalone_only("MONITOR records the commands of one server")
def test_listing_never_walks_the_new_keyspace(r, make_store, monitor, combo):
    store = make_store()
    apply_flags(r, combo, store)
    for i in range(30):
        store.enqueue("ws-a" if i % 2 else "ws-b", action_provider="p", action_name="n")
    set_dual_write(r, False, store)
    for _ in range(10):
        store.enqueue("ws-a", action_provider="p", action_name="n")
    with monitor() as rec:
        for status in (None, "pending"):
            paginate(store, "ws-a", limit=3, status=status)
    patterns = _scan_patterns(rec.commands)
    assert SCHEMA.new_pattern == "ai:job:*:*"
    assert SCHEMA.new_pattern not in patterns
    assert set(patterns) <= {SCHEMA.old_pattern}, patterns
    assert not rec.named("KEYS")
    if combo.plan == "new":
        assert patterns == []  # without fallback the index alone drives the listing
    else:
        assert patterns, "the legacy part is listed by SCAN over the legacy pattern"
    # and the new records it reads are only ws-a's, never another workspace's
    touched_new = [c for c in rec.commands if " ai:job:" in c]
    if combo.plan == "old":
        assert touched_new == []
    else:
        assert touched_new and all(" ai:job:ws-a:" in c for c in touched_new)


def test_all_eight_combinations_are_exercised():
    assert len({c.id for c in ALL_COMBOS}) == 8
