"""List cursors are tamper-evident: anything but an untouched cursor of the same query is a
CursorError, never a silent first page (SPEC §3)."""

from __future__ import annotations

import base64
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobstore_kit import Combo, apply_flags, paginate

from relayctl.core.cursor import MAX_CURSOR_LENGTH, CursorCodec, CursorState
from relayctl.core.errors import CursorError, ValidationError
from relayctl.core.keys import CURSOR_SECRET_KEY

B64URL = string.ascii_letters + string.digits + "-_"
BOTH = Combo(dual=True, prefers_new=True, fallback=True)
pytestmark = pytest.mark.backends("standalone", "cluster")


@pytest.fixture
def listing(r, make_store):
    """A store with ws-a (index + legacy-only jobs), ws-b, and a mid-listing cursor of ws-a."""
    store = make_store()
    apply_flags(r, BOTH, store)
    for i in range(12):
        store.enqueue("ws-a", action_provider="p", action_name="n", now=1_700_000_000 + i)
        store.enqueue("ws-b", action_provider="p", action_name="n", now=1_700_000_000 + i)
    apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), store)
    for i in range(12):
        store.enqueue("ws-a", action_provider="p", action_name="n", now=1_700_000_100 + i)
    page = store.list_jobs("ws-a", limit=5)
    assert page.cursor is not None and len(page.jobs) == 5
    return store, page.cursor


def _legacy_phase_cursor(store) -> str:
    cursor = None
    while True:
        page = store.list_jobs("ws-a", cursor=cursor, limit=5)
        cursor = page.cursor
        assert cursor is not None
        body = json.loads(base64.urlsafe_b64decode(cursor.split(".")[0] + "=="))
        if body["phase"] == "legacy":
            return cursor


def test_an_untouched_cursor_continues_where_the_page_stopped(listing):
    store, cursor = listing
    first = store.list_jobs("ws-a", limit=5)
    second = store.list_jobs("ws-a", cursor=cursor, limit=5)
    assert not {j.job_id for j in first.jobs} & {j.job_id for j in second.jobs}


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.text(max_size=300) | st.text(alphabet=B64URL + ".=", min_size=1,
                                                  max_size=300))
def test_random_garbage_is_a_cursor_error(listing, garbage):
    store, _ = listing
    with pytest.raises(CursorError):
        store.list_jobs("ws-a", cursor=garbage, limit=5)


@pytest.mark.parametrize("bad", [
    "", ".", "..", "a.b", "not-a-cursor", "x" * (MAX_CURSOR_LENGTH + 1), "e30.", ".AAAA",
])
def test_malformed_cursors_are_cursor_errors(listing, bad):
    store, _ = listing
    with pytest.raises(CursorError):
        store.list_jobs("ws-a", cursor=bad, limit=5)


@pytest.mark.parametrize("bad", [b"abc.def", 123, ["a"]], ids=repr)
def test_a_cursor_that_is_not_a_string_is_a_cursor_error(listing, bad):
    store, _ = listing
    with pytest.raises(CursorError):
        store.list_jobs("ws-a", cursor=bad, limit=5)


def test_every_truncation_of_a_valid_cursor_is_rejected(listing):
    store, cursor = listing
    for cut in range(len(cursor)):
        with pytest.raises(CursorError):
            store.list_jobs("ws-a", cursor=cursor[:cut], limit=5)
    for cut in range(1, len(cursor)):
        with pytest.raises(CursorError):
            store.list_jobs("ws-a", cursor=cursor[cut:], limit=5)


@pytest.mark.parametrize("phase", ["index", "legacy"])
def test_every_single_character_change_in_body_or_mac_is_rejected(listing, phase):
    """Including changes to the last base64 character, whose low bits a lenient decoder
    ignores, and '-'/'+' or '_'/'/' swaps: a cursor is accepted only byte for byte."""
    store, cursor = listing
    if phase == "legacy":
        cursor = _legacy_phase_cursor(store)
    accepted = []
    for pos, char in enumerate(cursor):
        if char == ".":
            continue
        for repl in B64URL + "+/=":
            if repl == char:
                continue
            forged = cursor[:pos] + repl + cursor[pos + 1:]
            try:
                store.list_jobs("ws-a", cursor=forged, limit=5)
            except CursorError:
                continue
            accepted.append((pos, char, repl))
    assert accepted == []


def test_junk_added_anywhere_in_a_cursor_is_rejected(listing):
    store, cursor = listing
    body, _, mac = cursor.partition(".")
    for forged in (cursor + "=", cursor + "$", "$" + cursor, f"{body}=.{mac}",
                   f"{body}.{mac}==", f"{body}.={mac}", f"{body}\n.{mac}", cursor + " "):
        with pytest.raises(CursorError):
            store.list_jobs("ws-a", cursor=forged, limit=5)


def test_a_cursor_signed_with_another_secret_is_rejected(listing):
    store, cursor = listing
    body = json.loads(base64.urlsafe_b64decode(cursor.split(".")[0] + "=="))
    body.pop("v")
    forged = CursorCodec(b"another-deployment-secret-0123456789").encode(CursorState(**body))
    with pytest.raises(CursorError, match="signature"):
        store.list_jobs("ws-a", cursor=forged, limit=5)


def test_a_cursor_of_workspace_b_is_rejected_for_workspace_a(listing):
    store, _ = listing
    cursor_b = store.list_jobs("ws-b", limit=5).cursor
    assert cursor_b is not None
    with pytest.raises(CursorError, match="another workspace"):
        store.list_jobs("ws-a", cursor=cursor_b, limit=5)


def test_a_cursor_of_an_unfiltered_listing_is_rejected_with_a_status_filter(listing):
    store, cursor = listing
    with pytest.raises(CursorError, match="status"):
        store.list_jobs("ws-a", status="completed", cursor=cursor, limit=5)
    pending = store.list_jobs("ws-a", status="pending", limit=2).cursor
    with pytest.raises(CursorError, match="status"):
        store.list_jobs("ws-a", status=None, cursor=pending, limit=5)
    with pytest.raises(CursorError, match="status"):
        store.list_jobs("ws-a", status="running", cursor=pending, limit=5)


@pytest.mark.parametrize("change", [
    Combo(dual=True, prefers_new=False, fallback=True),
    Combo(dual=True, prefers_new=True, fallback=False),
    Combo(dual=True, prefers_new=False, fallback=False),
], ids=lambda c: c.id)
def test_a_cursor_is_rejected_after_the_read_flags_changed(r, listing, change):
    store, cursor = listing
    apply_flags(r, change, store)
    with pytest.raises(CursorError, match="different read flags"):
        store.list_jobs("ws-a", cursor=cursor, limit=5)


def test_a_dual_write_toggle_alone_keeps_the_cursor_valid_and_the_listing_exact(r, listing):
    store, _ = listing
    expected = {j.job_id for page in paginate(store, "ws-a", limit=100) for j in page}
    first = store.list_jobs("ws-a", limit=5)
    apply_flags(r, Combo(dual=False, prefers_new=True, fallback=True), store)
    rest = [j for page in [first.jobs] for j in page]
    cursor = first.cursor
    while cursor is not None:
        page = store.list_jobs("ws-a", cursor=cursor, limit=5)
        rest += page.jobs
        cursor = page.cursor
    ids = [j.job_id for j in rest]
    assert len(ids) == len(set(ids)) and set(ids) == expected


def test_a_cursor_from_another_store_instance_on_the_same_redis_is_accepted(
    listing, make_store
):
    """The signing key lives in Redis, so any instance of the fleet continues any listing."""
    _, cursor = listing
    other = make_store()
    other.refresh_flags()
    page = other.list_jobs("ws-a", cursor=cursor, limit=5)
    assert len(page.jobs) == 5


def test_a_validly_signed_but_invalid_payload_is_rejected(r, listing):
    """Even with the signing key, payloads the store never issues are refused."""
    store, _ = listing
    codec = CursorCodec(r.get(CURSOR_SECRET_KEY).encode())

    def signed(payload: dict) -> str:
        body = json.dumps(payload, separators=(",", ":")).encode()
        mac = codec._mac(body)
        enc = base64.urlsafe_b64encode
        return f"{enc(body).rstrip(b'=').decode()}.{enc(mac).rstrip(b'=').decode()}"

    good = {"v": 1, "ws": "ws-a", "status": "", "plan": "new+old", "phase": "index"}
    assert store.list_jobs("ws-a", cursor=signed(good), limit=5).jobs
    for bad in (
        {**good, "v": 2},
        {k: v for k, v in good.items() if k != "v"},
        {**good, "phase": "scan"},
        {**good, "surprise": 1},
        # the shard of the legacy SCAN: a slot number in canonical form, of a real shard
        {**good, "shard": 5461},
        {**good, "shard": ""},
        {**good, "shard": "05"},
        {**good, "shard": "-1"},
        {**good, "shard": "16384"},
        {**good, "shard": "\u0661"},
        {**good, "phase": "legacy", "scan": 0, "shard": "1"},
        {k: v for k, v in good.items() if k != "ws"},
        [1, 2, 3],
        "string",
    ):
        with pytest.raises(CursorError):
            store.list_jobs("ws-a", cursor=signed(bad), limit=5)


def test_cursor_error_is_a_validation_error_with_a_clear_message(listing):
    store, _ = listing
    with pytest.raises(ValidationError, match="invalid cursor"):
        store.list_jobs("ws-a", cursor="garbage.garbage", limit=5)


def test_the_codec_round_trips_every_state_field():
    codec = CursorCodec(b"0123456789abcdef0123456789abcdef")
    state = CursorState(ws="ws-a", status="failed", plan="new+old", phase="legacy",
                        score=1.7e12, job_id="j.1", scan=12345, last_key="ai:jobs:x",
                        shard="10923")
    assert codec.decode(codec.encode(state), ws="ws-a", status="failed",
                        plan="new+old") == state


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError):
        CursorCodec(b"short")
