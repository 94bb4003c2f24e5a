"""The three migration flags: stored in Redis, pinnable by environment, changed with audit."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster

from relayctl.core.audit import AUDIT_MAXLEN, audit_fields
from relayctl.core.cluster import is_cluster
from relayctl.core.errors import UsageError
from relayctl.core.keys import AUDIT_KEY, FLAGS_KEY
from relayctl.core.lua import TYPE_OK
from relayctl.core.replies import as_str_dict, stream_fields

DUAL_WRITE = "AI_JOBS_NEW_SCHEMA"
PREFERS_NEW = "READ_PREFERS_NEW"
FALLBACK_OLD = "READ_FALLBACK_OLD"
FLAG_NAMES = (DUAL_WRITE, PREFERS_NEW, FALLBACK_OLD)
DEFAULTS: dict[str, bool] = {DUAL_WRITE: False, PREFERS_NEW: False, FALLBACK_OLD: True}

_TRUE = {"on", "true", "1", "yes"}
_FALSE = {"off", "false", "0", "no"}

_FLAGS_NOT_HASH = "WRONGTYPE relay:flags is not a hash"
_AUDIT_NOT_STREAM = "WRONGTYPE relay:audit is not a stream; the change cannot be audited"

_SET_FLAG = TYPE_OK + """
if not type_is(KEYS[1], 'hash') then
  return redis.error_reply('""" + _FLAGS_NOT_HASH + """')
end
if not type_is(KEYS[2], 'stream') then
  return redis.error_reply('""" + _AUDIT_NOT_STREAM + """')
end
local before = redis.call('HGET', KEYS[1], ARGV[1])
if not before then before = ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'ts', ARGV[5], 'actor', ARGV[6], 'action', 'flag.set', 'target', ARGV[1],
  'before', before, 'after', ARGV[2], 'reason', ARGV[7])
return {before, id}
"""


def parse_flag_value(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"invalid value {value!r} for {name}: expected on or off")


def check_flag_name(name: str) -> str:
    upper = name.strip().upper()
    if upper not in FLAG_NAMES:
        raise UsageError(f"unknown flag {name!r}: expected one of {', '.join(FLAG_NAMES)}")
    return upper


def word(value: bool) -> str:
    return "on" if value else "off"


@dataclass(frozen=True)
class FlagState:
    """Effective flags of one process, with the environment pins that produced them."""

    dual_write: bool = DEFAULTS[DUAL_WRITE]
    read_prefers_new: bool = DEFAULTS[PREFERS_NEW]
    read_fallback_old: bool = DEFAULTS[FALLBACK_OLD]
    pinned: Mapping[str, bool] = field(default_factory=dict)
    stored: Mapping[str, bool] = field(default_factory=dict)

    def value(self, name: str) -> bool:
        return {
            DUAL_WRITE: self.dual_write,
            PREFERS_NEW: self.read_prefers_new,
            FALLBACK_OLD: self.read_fallback_old,
        }[name]

    def as_dict(self) -> dict[str, str]:
        return {name: word(self.value(name)) for name in FLAG_NAMES}


def env_pins(environ: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Flags pinned by environment variables of the same name (the seeds' deploy style)."""
    env = os.environ if environ is None else environ
    return {name: parse_flag_value(name, env[name]) for name in FLAG_NAMES if env.get(name)}


def stored_flags(client: redis.Redis) -> dict[str, bool]:
    """The flags as stored in relay:flags (unset ones omitted; garbage values ignored)."""
    raw = as_str_dict(client.hgetall(FLAGS_KEY))
    out: dict[str, bool] = {}
    for name in FLAG_NAMES:
        value = raw.get(name)
        if value is None:
            continue
        try:
            out[name] = parse_flag_value(name, value)
        except UsageError:
            continue
    return out


def effective(stored: Mapping[str, bool], pins: Mapping[str, bool]) -> FlagState:
    """Pin beats stored value beats default."""
    values = {n: pins.get(n, stored.get(n, DEFAULTS[n])) for n in FLAG_NAMES}
    return FlagState(
        dual_write=values[DUAL_WRITE],
        read_prefers_new=values[PREFERS_NEW],
        read_fallback_old=values[FALLBACK_OLD],
        pinned=dict(pins),
        stored=dict(stored),
    )


def read_flags(client: redis.Redis, pins: Mapping[str, bool] | None = None) -> FlagState:
    return effective(stored_flags(client), env_pins() if pins is None else pins)


@dataclass(frozen=True)
class FlagChange:
    name: str
    before: str
    after: str
    audit_id: str


def set_flag(
    client: redis.Redis, name: str, value: str | bool, *, actor: str, reason: str,
    now: float | None = None,
) -> FlagChange:
    """The single way a flag changes: the value and its audit entry in one script.

    On a cluster relay:flags and relay:audit sit in two slots, which one script cannot
    touch: the entry is appended first and the flag written after (see _set_flag_cluster).
    """
    name = check_flag_name(name)
    on = value if isinstance(value, bool) else parse_flag_value(name, value)
    reason = reason.strip()
    if not reason:
        raise UsageError("a reason is required to change a flag")
    if not actor.strip():
        raise UsageError("an actor is required to change a flag")
    ts = time.time() if now is None else now
    if is_cluster(client):
        before, audit_id = _set_flag_cluster(client, name, word(on), actor, reason, ts)
    else:
        before, audit_id = client.eval(
            _SET_FLAG, 2, FLAGS_KEY, AUDIT_KEY,
            name, word(on), word(DEFAULTS[name]), AUDIT_MAXLEN, f"{ts:.3f}", actor, reason,
        )
    return FlagChange(name=name, before=before, after=word(on), audit_id=audit_id)


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _set_flag_cluster(client: RedisCluster, name: str, after: str, actor: str, reason: str,
                      ts: float) -> tuple[str, str]:
    """The script's steps one by one, entry before change: a crash in between leaves an
    entry for a change that did not happen (visible, re-doable), never an unaudited change."""
    if _text(client.type(FLAGS_KEY)) not in ("none", "hash"):
        raise redis.ResponseError(_FLAGS_NOT_HASH)
    if _text(client.type(AUDIT_KEY)) not in ("none", "stream"):
        raise redis.ResponseError(_AUDIT_NOT_STREAM)
    before = _text(client.hget(FLAGS_KEY, name))
    if before is None:
        before = word(DEFAULTS[name])
    audit_id = client.xadd(AUDIT_KEY, stream_fields(audit_fields(actor, "flag.set", name, before,
                                                                 after, reason, ts)),
                           maxlen=AUDIT_MAXLEN, approximate=True)
    client.hset(FLAGS_KEY, name, after)
    return before, _text(audit_id) or ""
