"""Typed views of redis-py replies, which are `bytes | str` (or Any) depending on the
client's decode_responses: one place converts them, so the rest of core stays typed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from redis.typing import EncodableT, FieldT

HashFields = Mapping[FieldT, EncodableT]
StreamFields = dict[FieldT, EncodableT]


def as_str(value: Any) -> str:
    """A reply value as text; undecodable bytes are replaced, never raised."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def as_str_dict(reply: Any) -> dict[str, str]:
    """HGETALL (or a flat field/value list) as dict[str, str]."""
    if isinstance(reply, dict):
        return {as_str(k): as_str(v) for k, v in reply.items()}
    if isinstance(reply, list):
        it = iter(reply)
        return {as_str(k): as_str(v) for k, v in zip(it, it, strict=True)}
    return {}


def fields(mapping: Mapping[str, Any]) -> HashFields:
    """A str-keyed dict as the mapping HSET takes (its key type is invariant in the stubs)."""
    return cast(HashFields, mapping)


def stream_fields(entry: dict[str, str]) -> StreamFields:
    """A str-keyed dict as the fields XADD takes (a dict, invariant in the stubs)."""
    return cast(StreamFields, entry)
