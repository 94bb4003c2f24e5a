"""The direct packer sends exactly the bytes redis-py's own serializer sends, or raises the
same error, for any mix of arguments; it is installed on every standalone client."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from relayctl.core.connection import connect
from relayctl.core.packing import DIRECT_PACKER, DirectPacker

ENCODE = Encoder("utf-8", "strict", False).encode
REDIS_PY = HiredisRespSerializer(PythonRespSerializer(6000, ENCODE).pack, ENCODE)

ARGS = st.one_of(st.text(), st.binary(), st.integers(), st.booleans(),
                 st.floats(allow_nan=False), st.binary().map(memoryview))


def packed(serializer: object, args: tuple) -> object:
    try:
        return b"".join(serializer.pack(*args))  # type: ignore[attr-defined]
    except Exception as exc:  # the same kind of refusal is what must match
        return type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["EVALSHA", "SET", "CONFIG GET", "HSET"]), st.lists(ARGS, max_size=12))
def test_direct_packing_is_byte_identical_to_redis_py(command, args):
    call = (command, *args)
    assert packed(DirectPacker(), call) == packed(REDIS_PY, call)


def test_every_standalone_client_packs_directly(redis_url):
    client = connect(redis_url)
    assert client.connection_pool.connection_kwargs["command_packer"] is DIRECT_PACKER
    client.set("k", "é")
    assert client.get("k") == "é"
    client.close()


def test_a_surrogate_is_refused_as_redis_py_refuses_it():
    with pytest.raises(UnicodeEncodeError):
        DirectPacker().pack("SET", "k", "\udcff")
