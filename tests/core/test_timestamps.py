"""The timestamp contract (relayctl.core.timestamps): Python `iso_to_ms` and the scripts' Lua
`iso_ms` give the same index score for every string, run against a real redis-server, and
verify (Python) agrees with repair (Lua) on odd `enqueued_at` values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobstore_kit import Combo, apply_flags

from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.jobs import JOB_FIELDS, JobStore, iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.lua import ISO_MS
from relayctl.core.timestamps import FALLBACK_SCORE
from relayctl.core.verify import run_verify

SCHEMA = KeySchema()
LUA_ISO_MS = ISO_MS + "\nreturn iso_ms(ARGV[1])\n"
LUA_ISO_MS_MANY = ISO_MS + """
local out = {}
for i = 1, #ARGV do out[i] = iso_ms(ARGV[i]) end
return out
"""

# Inputs the property test tried, for the closing note (printed with -s).
TRIED = {"strings": 0}


def _two(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(min_value=lo, max_value=hi).map("{:02d}".format)


def _part(lo: int, hi: int, top: int) -> st.SearchStrategy[str]:
    """Two digits, in range three times out of four, else anywhere in 00..top."""
    return st.one_of(_two(lo, hi), _two(lo, hi), _two(lo, hi), _two(0, top))


_DIGITS = st.text("0123456789", min_size=1, max_size=12)
_OFFSETS = st.one_of(
    st.sampled_from(["", "", "Z", "z", "+00:00", "-00:00", "+05", "-05", "+0530", "+05:30",
                     "-0800", "+2400", "+05:60", "+5", "+053", "+05:3", "UTC", " Z", "Zz",
                     "+05:30Z", "++05", "-"]),
    st.tuples(st.sampled_from("+-"), _part(0, 23, 29), st.sampled_from(["", ":"]),
              _part(0, 59, 69)).map("".join),
    st.tuples(st.sampled_from("+-"), _part(0, 23, 29)).map("".join),
)


@st.composite
def timestamp_like(draw: st.DrawFn) -> bytes:
    """Mostly near-ISO strings: each part right, out of range or malformed, then perhaps
    one character inserted, dropped or replaced."""
    year = draw(st.one_of(st.sampled_from(["0000", "0001", "1900", "1969", "1970", "2000",
                                           "2024", "2100", "2400", "9999"]),
                          st.text("0123456789", min_size=4, max_size=4),
                          st.sampled_from(["024", "20245", "+2024", "-0001"])))
    month, day = draw(_part(1, 12, 19)), draw(_part(1, 28, 39))
    basic = draw(st.booleans())
    text = f"{year}{month}{day}" if basic else f"{year}-{month}-{day}"
    if draw(st.integers(0, 4)):
        text += draw(st.sampled_from(["T", "T", "t", " ", "_", "", "TT"]))
        hour, minute = draw(_part(0, 23, 29)), draw(_part(0, 59, 69))
        colon = "" if basic else ":"
        if draw(st.integers(0, 9)) == 0:
            colon = ":" if basic else ""
        text += f"{hour}{colon}{minute}"
        if draw(st.integers(0, 4)):
            text += f"{colon}{draw(_part(0, 59, 69))}"
            if draw(st.booleans()):
                text += draw(st.sampled_from(".,")) + draw(st.one_of(_DIGITS, st.just("")))
    text += draw(_OFFSETS)
    data = text.encode()
    edit = draw(st.sampled_from(["", "", "", "", "insert", "drop", "replace"]))
    if edit and data:
        at = draw(st.integers(0, len(data) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        if edit == "insert":
            data = data[:at] + byte + data[at:]
        elif edit == "drop":
            data = data[:at] + data[at + 1:]
        else:
            data = data[:at] + byte + data[at + 1:]
    return data


ANY_VALUE = st.one_of(
    timestamp_like(), timestamp_like(), timestamp_like(),
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(ANY_VALUE, min_size=1, max_size=40))
def test_python_and_lua_give_the_same_score_for_every_generated_string(r, values):
    lua = r.eval(LUA_ISO_MS_MANY, 0, *values)
    TRIED["strings"] += len(values)
    assert lua == [iso_to_ms(v) for v in values]
    for value in values:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            continue
        assert iso_to_ms(text) == iso_to_ms(value)


def test_report_how_many_strings_the_property_test_tried():
    print(f"\ntimestamp contract: {TRIED['strings']} generated strings compared with Lua")


@st.composite
def iso_timestamps(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    sep = draw(st.sampled_from(["T", " "]))
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{sep}"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    digits = draw(st.integers(min_value=0, max_value=9))
    if digits:
        text += "." + "".join(draw(st.lists(st.sampled_from("0123456789"),
                                            min_size=digits, max_size=digits)))
    minutes = draw(st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    zones = ["", "Z", "z", f"{sign}{hh:02d}:{mm:02d}", f"{sign}{hh:02d}{mm:02d}"]
    if mm == 0:
        zones.append(f"{sign}{hh:02d}")
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
    y, mo, d = int(base[:4]), int(base[5:7]), int(base[8:10])
    h, mi, s = int(base[11:13]), int(base[14:16]), int(base[17:19])
    moment = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    ms = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    if rest not in ("", "Z", "z"):
        sign = -1 if rest[0] == "-" else 1
        digits = rest[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:] or 0)) * 60_000
    return ms + int((frac + "000")[:3])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=iso_timestamps())
def test_python_and_lua_agree_with_an_exact_reference(r, text):
    expected = _reference_ms(text)
    assert iso_to_ms(text) == expected
    assert r.eval(LUA_ISO_MS, 0, text) == expected


# the forms the contract names, each with its score (or the fallback)
CASES = {
    "2024-05-01T10:00:00Z": 1_714_557_600_000,
    "2024-05-01T10:00:00.250Z": 1_714_557_600_250,
    "2024-05-01T10:00:00,250Z": 1_714_557_600_250,
    "2024-05-01T10:00:00.0009Z": 1_714_557_600_000,
    "2024-05-01T10:00:00.123456+00:00": 1_714_557_600_123,
    "2024-05-01T15:00:00+05": 1_714_557_600_000,
    "2024-05-01T15:30:00+0530": 1_714_557_600_000,
    "2024-05-01T15:30:00+05:30": 1_714_557_600_000,
    "2024-05-01T02:00:00-08:00": 1_714_557_600_000,
    "2024-05-01T10:00:00": 1_714_557_600_000,
    "2024-05-01 10:00:00": 1_714_557_600_000,
    "2024-05-01t10:00:00z": 1_714_557_600_000,
    "2024-05-01T10:00": 1_714_557_600_000,
    "2024-01-01": 1_704_067_200_000,
    "20240101": 1_704_067_200_000,
    "20240101T100000Z": 1_704_103_200_000,
    "20240101T1000Z": 1_704_103_200_000,
    "20240101T150000.5+05": 1_704_103_200_500,
    "1969-12-31T23:59:59.999Z": -1,
    "0001-01-01T00:00:00Z": -62_135_596_800_000,
    "9999-12-31T23:59:59.999Z": 253_402_300_799_999,
    "2024-02-29T00:00:00Z": 1_709_164_800_000,
    # unparseable: the fallback score
    "": FALLBACK_SCORE,
    "yesterday": FALLBACK_SCORE,
    "2024-13-01T00:00:00Z": FALLBACK_SCORE,
    "2023-02-29T00:00:00Z": FALLBACK_SCORE,
    "2024-04-31": FALLBACK_SCORE,
    "2024-01-01T24:00:00Z": FALLBACK_SCORE,
    "2024-01-01T10:60:00Z": FALLBACK_SCORE,
    "2024-01-01T10:00:60Z": FALLBACK_SCORE,
    "2024-01-01T10:00:00+24:00": FALLBACK_SCORE,
    "0000-01-01T00:00:00Z": FALLBACK_SCORE,
    "+10000-01-01T00:00:00Z": FALLBACK_SCORE,
    "2024-01-01Z": FALLBACK_SCORE,
    "2024-01-01T10": FALLBACK_SCORE,
    "2024-0101T10:00:00Z": FALLBACK_SCORE,
    "20240101T10:00:00Z": FALLBACK_SCORE,
    "2024-01-01T100000Z": FALLBACK_SCORE,
    "2024/05/01 10:00:00": FALLBACK_SCORE,
    "2024-05-01T10:00:00+2": FALLBACK_SCORE,
    " 2024-05-01T10:00:00Z": FALLBACK_SCORE,
    "2024-05-01T10:00:00Z\n": FALLBACK_SCORE,
    "\uff12\uff10\uff12\uff14-05-01T10:00:00Z": FALLBACK_SCORE,  # fullwidth digits
}


@pytest.mark.parametrize("text", list(CASES), ids=[repr(t) for t in CASES])
def test_each_named_form_scores_as_the_contract_says_in_python_and_lua(r, text):
    assert iso_to_ms(text) == CASES[text]
    assert r.eval(LUA_ISO_MS, 0, text.encode()) == CASES[text]


def test_missing_and_non_utf8_values_get_the_fallback_score(r):
    assert iso_to_ms(None) == FALLBACK_SCORE
    assert iso_to_ms(b"2024-05-01T10:00:00\xffZ") == FALLBACK_SCORE
    assert r.eval(LUA_ISO_MS, 0, b"2024-05-01T10:00:00\xffZ") == FALLBACK_SCORE
    assert r.eval(ISO_MS + "\nreturn iso_ms(redis.call('GET', 'no-such-key'))\n", 0) \
        == FALLBACK_SCORE


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(iso_timestamps(), st.sampled_from(list(CASES))))
def test_a_legacy_job_updated_under_dual_write_is_indexed_at_iso_to_ms(r, text):
    r.flushdb()
    with JobStore(r, background=False, pins={}) as store:
        apply_flags(r, Combo(dual=True, prefers_new=True, fallback=True), store)
        record = {name: "" for name in JOB_FIELDS}
        record.update(job_id="j1", workspace_id="ws-a", status="pending", enqueued_at=text)
        r.hset(SCHEMA.old_key("j1"), mapping=record)
        assert store.update_status("ws-a", "j1", "running") == "old+created"
        assert r.zscore(SCHEMA.index_key("ws-a"), "j1") == iso_to_ms(text)


ODD = ["2024-01-01", "20240101T100000Z", "2024-01-01T10:00:00+05", "2024-01-01T10:00:00+0530",
       "2024-13-01T10:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "garbage",
       "2024-01-01T10:00:00.123456+00:00", ""]


def _seed_odd_legacy(r) -> list[str]:
    ids = []
    for i, stamp in enumerate(ODD * 3):
        job_id = f"odd-{i:03d}"
        record = {name: "" for name in JOB_FIELDS}
        record.update(job_id=job_id, workspace_id=f"ws-{i % 3}", status="pending",
                      params="{}", enqueued_at=stamp)
        r.hset(SCHEMA.old_key(job_id), mapping=record)
        ids.append(job_id)
    return ids


def test_odd_timestamps_one_verify_repair_then_verify_is_clean(r):
    _seed_odd_legacy(r)
    first = run_verify(r, SCHEMA, store=False)
    assert first.counts["missing"] == len(ODD) * 3
    repaired = run_verify(r, SCHEMA, repair=True, store=False)
    assert repaired.repaired == len(ODD) * 3
    after = run_verify(r, SCHEMA, store=False)
    assert after.clean, after.counts
    assert after.checked == len(ODD) * 3


def test_odd_timestamps_wrongly_indexed_copies_are_fixed_by_one_repair(r):
    ids = _seed_odd_legacy(r)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    assert run_verify(r, SCHEMA, store=False).clean  # backfill (Python) and verify agree
    for i, job_id in enumerate(ids):  # scores as the old, diverging Lua parser wrote them
        r.zadd(SCHEMA.index_key(f"ws-{i % 3}"), {job_id: 12345})
    assert run_verify(r, SCHEMA, store=False).counts["index_missing"] == len(ids)
    run_verify(r, SCHEMA, repair=True, store=False)
    after = run_verify(r, SCHEMA, store=False)
    assert after.clean, after.counts
