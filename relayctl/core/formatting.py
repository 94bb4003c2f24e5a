"""How ages, times and numbers read, in the console and the CLI alike: one unit style, one
clock (the caller's `now`, the demo's scaled clock included), UTC ISO for absolute times."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """A span in one unit style: 45s, 12m, 3.5h, 10.3d (never negative, never raw seconds)."""
    s = max(float(seconds), 0.0)
    if s < 90:
        return f"{s:.0f}s"
    if s < 90 * 60:
        return f"{s / 60:.0f}m"
    if s < 36 * 3600:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def ago(ts: float | None, now: float) -> str:
    """`ts` relative to `now` on the same clock; a time ahead of `now` says so, never `-3m`."""
    if not ts:
        return "-"
    delta = now - float(ts)
    if delta < -1:
        return f"in {duration(-delta)} (clock ahead)"
    return f"{duration(delta)} ago"


def iso(ts: float | None) -> str:
    """An absolute time as UTC ISO 8601 with date and zone: 2026-01-01T00:00:00Z."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))


def iso_ms(ts: float) -> str:
    """UTC ISO 8601 with milliseconds, for event streams several lines a second apart."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def clock(ts: float) -> str:
    """A time of day in UTC, for the header's "updated" stamp."""
    return time.strftime("%H:%M:%SZ", time.gmtime(ts))


def count(n: float | int | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def percent(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def rate(per_s: float) -> str:
    return f"{per_s:,.0f}/s" if per_s >= 10 else f"{per_s:.1f}/s"
