"""The one contract for turning a record's `enqueued_at` into its workspace-index score.

The score is written by Python (enqueue, backfill, verify's expectation) and by Lua (update,
repair), so both read the value by the same rules, defined here once:

- the value is bytes (a str is taken as its UTF-8 encoding); anything that is not ASCII or
  not whole-string one of the forms below is *unparseable* and scores FALLBACK_SCORE;
- date: `YYYY-MM-DD` (extended) or `YYYYMMDD` (basic); a date alone means midnight UTC;
- time, after `T`, `t` or a space: extended `HH:MM[:SS[(.|,)F+]]` with an extended date,
  basic `HHMM[SS[(.|,)F+]]` with a basic one; fraction digits beyond milliseconds are
  truncated;
- offset, only after a time: none (UTC), `Z`, `z`, `+HH`, `-HH`, `+HHMM`, `+HH:MM` (and `-`);
- ranges: year 0001-9999 (0000 is unparseable), month 1-12, day within the month of the
  proleptic Gregorian calendar, hour 0-23, minute 0-59, second 0-59, offset hours 0-23 and
  minutes 0-59;
- the score is epoch milliseconds (UTC) as an integer, exact in a double for every value.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

# Unparseable values sort as the oldest entries (last in newest-first pages).
FALLBACK_SCORE = 0

_EPOCH_DAYS = date(1970, 1, 1).toordinal()
_OFFSET = rb"(?P<tz>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?"
_FRACTION = rb"(?:[.,](?P<f>[0-9]+))?"
_EXTENDED = re.compile(
    rb"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    rb"(?:[Tt ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})" + _FRACTION + rb")?"
    + _OFFSET + rb")?"
)
_BASIC = re.compile(
    rb"(?P<y>[0-9]{4})(?P<mo>[0-9]{2})(?P<d>[0-9]{2})"
    rb"(?:[Tt ](?P<h>[0-9]{2})(?P<mi>[0-9]{2})(?:(?P<s>[0-9]{2})" + _FRACTION + rb")?"
    + _OFFSET + rb")?"
)


# What the application writes (`datetime.isoformat()` in UTC): read by slicing, the same
# numbers the general path computes (the property test holds both to the Lua fragment).
_COMMON = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                     rb"(?:\.[0-9]{3,6})?(?:\+00:00|Z)?")


@lru_cache(maxsize=4096)
def _day_ms(y: int, mo: int, d: int) -> int | None:
    """Epoch milliseconds of a date's midnight UTC, None for a date that does not exist."""
    try:
        return (date(y, mo, d).toordinal() - _EPOCH_DAYS) * 86_400_000
    except ValueError:
        return None


def _common_to_ms(v: bytes) -> int:
    day = _day_ms(int(v[0:4]), int(v[5:7]), int(v[8:10]))
    hour, minute, second = int(v[11:13]), int(v[14:16]), int(v[17:19])
    if day is None or hour > 23 or minute > 59 or second > 59:
        return FALLBACK_SCORE
    millis = int(v[20:23]) if len(v) > 19 and v[19:20] == b"." else 0
    return day + hour * 3_600_000 + minute * 60_000 + second * 1000 + millis


def iso_to_ms(value: str | bytes | None) -> int:
    """Index score of an `enqueued_at` value by the contract above; FALLBACK_SCORE if
    unparseable."""
    if value is None:
        return FALLBACK_SCORE
    if isinstance(value, str):
        if not value.isascii():
            return FALLBACK_SCORE
        value = value.encode("ascii")
    if _COMMON.fullmatch(value):
        return _common_to_ms(value)
    found = _EXTENDED.fullmatch(value) or _BASIC.fullmatch(value)
    if found is None:
        return FALLBACK_SCORE
    parts = found.groupdict()
    try:
        days = date(int(parts["y"]), int(parts["mo"]), int(parts["d"])).toordinal()
    except ValueError:
        return FALLBACK_SCORE
    hour, minute = int(parts["h"] or 0), int(parts["mi"] or 0)
    second = int(parts["s"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return FALLBACK_SCORE
    millis = int(((parts["f"] or b"") + b"000")[:3])
    offset = 0
    tz = parts["tz"]
    if tz and tz not in (b"Z", b"z"):
        digits = tz[1:].replace(b":", b"")
        oh, om = int(digits[:2]), int(digits[2:] or 0)
        if oh > 23 or om > 59:
            return FALLBACK_SCORE
        offset = (oh * 60 + om) * 60_000 * (-1 if tz[:1] == b"-" else 1)
    return ((days - _EPOCH_DAYS) * 86_400_000 + hour * 3_600_000 + minute * 60_000
            + second * 1000 + millis - offset)


# The same contract in Lua, as a fragment defining `iso_ms(s)` (s: string or false/nil) for
# the scripts that write index entries; returns a number (integral, exact).
ISO_MS = f"\nlocal ISO_FALLBACK = {FALLBACK_SCORE}\n" + """
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function days_in_month(y, m)
  if m == 2 then
    if (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 then return 29 end
    return 28
  end
  if m == 4 or m == 6 or m == 9 or m == 11 then return 30 end
  return 31
end
local function iso_ms(s)
  if type(s) ~= 'string' then return ISO_FALLBACK end
  local D = '([0-9][0-9])'
  local basic = false
  local Y = '^([0-9][0-9][0-9][0-9])'
  local y, mo, d, rest = string.match(s, Y .. '%-' .. D .. '%-' .. D .. '(.*)$')
  if not y then
    y, mo, d, rest = string.match(s, Y .. D .. D .. '(.*)$')
    basic = true
  end
  if not y then return ISO_FALLBACK end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if y < 1 or mo < 1 or mo > 12 or d < 1 or d > days_in_month(y, mo) then
    return ISO_FALLBACK
  end
  local h, mi, sec, ms, offset = 0, 0, 0, 0, 0
  if rest ~= '' then
    local t = string.match(rest, '^[Tt ](.*)$')
    if not t then return ISO_FALLBACK end
    if basic then
      h, mi, rest = string.match(t, '^' .. D .. D .. '(.*)$')
    else
      h, mi, rest = string.match(t, '^' .. D .. ':' .. D .. '(.*)$')
    end
    if not h then return ISO_FALLBACK end
    local s2, after
    if basic then
      s2, after = string.match(rest, '^' .. D .. '(.*)$')
    else
      s2, after = string.match(rest, '^:' .. D .. '(.*)$')
    end
    if s2 then
      sec, rest = tonumber(s2), after
      local frac, tail = string.match(rest, '^[.,]([0-9]+)(.*)$')
      if frac then
        ms = tonumber(string.sub(frac .. '000', 1, 3))
        rest = tail
      end
    end
    h, mi = tonumber(h), tonumber(mi)
    if h > 23 or mi > 59 or sec > 59 then return ISO_FALLBACK end
    if rest ~= '' and rest ~= 'Z' and rest ~= 'z' then
      local sign, oh, om = string.match(rest, '^([+-])' .. D .. '$')
      if not sign then
        sign, oh, om = string.match(rest, '^([+-])' .. D .. ':?' .. D .. '$')
      end
      if not sign then return ISO_FALLBACK end
      oh, om = tonumber(oh), tonumber(om or '0')
      if oh > 23 or om > 59 then return ISO_FALLBACK end
      offset = (oh * 60 + om) * 60000
      if sign == '-' then offset = -offset end
    end
  end
  return days_from_civil(y, mo, d) * 86400000 + h * 3600000 + mi * 60000
    + sec * 1000 + ms - offset
end
"""
