"""One unit style for spans, one for absolute times (defect 8 of issue 17)."""

from __future__ import annotations

import re

import pytest

from relayctl.core import formatting as fmt


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (89, "89s"), (90, "2m"), (12 * 60, "12m"), (89 * 60, "89m"),
    (90 * 60, "1.5h"), (3 * 3600, "3.0h"), (35 * 3600, "35.0h"), (36 * 3600, "1.5d"),
    (10.3 * 86400, "10.3d"), (-5, "0s"),
])
def test_a_span_reads_in_one_unit_style_and_never_negative(seconds, text):
    assert fmt.duration(seconds) == text


def test_an_age_is_on_the_callers_clock_and_a_future_time_says_so():
    assert fmt.ago(1000.0, now=1000.0 + 3 * 3600) == "3.0h ago"
    assert fmt.ago(5000.0, now=1000.0) == "in 67m (clock ahead)"
    assert fmt.ago(None, now=1000.0) == "-"


def test_absolute_times_are_utc_iso_with_date_and_zone():
    assert fmt.iso(0.5) == "1970-01-01T00:00:00Z"
    assert fmt.iso(1_765_000_000) == "2025-12-06T05:46:40Z"
    assert re.fullmatch(r"2025-12-06T05:46:40\.250Z", fmt.iso_ms(1_765_000_000.25))
    assert fmt.iso(None) == "-"
