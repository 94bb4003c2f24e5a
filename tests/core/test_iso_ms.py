"""Python iso_to_ms and the scripts' Lua iso_ms give the same epoch ms (index scores written by
scripts and by Python must agree), for every ISO-8601 form both accept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobstore_kit import Combo, apply_flags

from relayctl.core.jobs import JOB_FIELDS, JobStore, iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.lua import ISO_MS

SCHEMA = KeySchema()
LUA_ISO_MS = ISO_MS + "\nreturn iso_ms(ARGV[1])\n"


@st.composite
def iso_timestamps(draw) -> str:
    moment = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31)))
    sep = draw(st.sampled_from(["T", " "]))
    text = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    digits = draw(st.integers(min_value=0, max_value=9))
    if digits:
        text += "." + "".join(draw(st.lists(st.sampled_from("0123456789"),
                                            min_size=digits, max_size=digits)))
    minutes = draw(st.integers(min_value=-14 * 60, max_value=14 * 60))
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    zones = ["", "Z", "z", f"{sign}{hh:02d}:{mm:02d}", f"{sign}{hh:02d}{mm:02d}"]
    text += draw(st.sampled_from(zones))
    return text


def _reference_ms(text: str) -> int:
    """Independent reference: exact integer ms, sub-millisecond digits truncated."""
    base = text[:19].replace(" ", "T")
    rest = text[19:]
    frac = ""
    if rest.startswith("."):
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, rest = rest[1:i], rest[i:]
    moment = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    if rest not in ("", "Z", "z"):
        sign = -1 if rest[0] == "-" else 1
        digits = rest[1:].replace(":", "")
        moment -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    ms = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return ms + int((frac + "000")[:3])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=iso_timestamps())
def test_python_and_lua_agree_with_an_exact_reference(r, text):
    expected = _reference_ms(text)
    assert iso_to_ms(text) == expected
    assert r.eval(LUA_ISO_MS, 0, text) == expected


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=iso_timestamps())
def test_a_legacy_job_updated_under_dual_write_is_indexed_at_iso_to_ms(r, text):
    r.flushdb()
    with JobStore(r, background=False, pins={}) as store:
        apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), store)
        record = {name: "" for name in JOB_FIELDS}
        record.update(job_id="j1", workspace_id="ws-a", status="pending", enqueued_at=text)
        r.hset(SCHEMA.old_key("j1"), mapping=record)
        assert store.update_status("ws-a", "j1", "running") == "old+created"
        assert r.zscore(SCHEMA.index_key("ws-a"), "j1") == iso_to_ms(text)


def test_unparsable_timestamps_are_zero_on_both_sides(r):
    for text in ("", "yesterday", "2024/05/01 10:00:00", "2024-05-01T10:00:00+2"):
        assert iso_to_ms(text) == 0
        assert r.eval(LUA_ISO_MS, 0, text) == 0
