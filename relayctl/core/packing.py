"""Commands packed by hiredis directly, for the argument-heavy EVALSHA calls of the engines.

redis-py's hiredis serializer runs every argument through its Python encoder before hiredis
packs them: for the backfill's copy step (five arguments a key, ~1M per 200k-key run) that
was about a third of the engine's CPU (`relayctl bench backfill`: 26.9k -> 38.1k keys/s on
100k keys). hiredis packs `str` (UTF-8, strict), `bytes` and `int` itself, byte for byte as
redis-py does; anything else (bool, float, memoryview, a command name with a space in it)
takes redis-py's own path unchanged.
"""

from __future__ import annotations

from typing import Any

from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE

_DIRECT = frozenset({str, bytes, int})  # exact types: bool (an int subclass) is refused


class DirectPacker:
    """A `command_packer` for redis-py connections (shared: it holds no connection state)."""

    def __init__(self) -> None:
        encode = Encoder("utf-8", "strict", False).encode
        self._fallback = HiredisRespSerializer(PythonRespSerializer(6000, encode).pack, encode)

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if type(first) is str and " " not in first and all(type(a) in _DIRECT for a in args):
            import hiredis

            return [hiredis.pack_command(args)]
        packed: list[bytes] = self._fallback.pack(*args)
        return packed


def packer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with the direct packer, where hiredis is installed and the encoding is
    redis-py's default (UTF-8, strict)."""
    if not HIREDIS_AVAILABLE or kwargs.get("encoding", "utf-8") != "utf-8" \
            or kwargs.get("encoding_errors", "strict") != "strict":
        return kwargs
    return {**kwargs, "command_packer": DIRECT_PACKER}


DIRECT_PACKER = DirectPacker() if HIREDIS_AVAILABLE else None
