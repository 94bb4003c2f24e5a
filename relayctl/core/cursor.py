"""Opaque, tamper-evident list cursors: compact JSON, base64url, HMAC-SHA256."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass

import redis

from relayctl.core.errors import CursorError
from relayctl.core.keys import CURSOR_SECRET_KEY

_VERSION = 1
_MAC_BYTES = 16
MAX_CURSOR_LENGTH = 2048
_SLOTS = 16384
_SHARD = re.compile(r"0|[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class CursorState:
    """Where a listing stopped. phase: 'index' (workspace index) or 'legacy' (SCAN).

    In the legacy phase `scan` is the SCAN cursor of the shard named `shard` (a cluster SCANs
    one primary after the other; a standalone server is the one shard "0").
    """

    ws: str
    status: str
    plan: str
    phase: str
    score: float | None = None
    job_id: str | None = None
    scan: int = 0
    last_key: str | None = None
    shard: str = "0"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def shared_secret(client: redis.Redis) -> bytes:
    """The fleet-wide signing key, created once in Redis so any instance accepts any cursor."""
    client.set(CURSOR_SECRET_KEY, secrets.token_hex(32), nx=True)
    value = client.get(CURSOR_SECRET_KEY)
    if not value:
        raise CursorError("cursor signing key is missing from Redis")
    return value.encode() if isinstance(value, str) else value


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("cursor secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, state: CursorState) -> str:
        payload = {"v": _VERSION, **{k: v for k, v in asdict(state).items() if v is not None}}
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def decode(self, token: str, *, ws: str, status: str, plan: str) -> CursorState:
        """Verify and parse; any defect is a CursorError, never a silent first page."""
        if not isinstance(token, str) or not token or len(token) > MAX_CURSOR_LENGTH:
            raise CursorError("invalid cursor: empty or too long")
        body_txt, sep, mac_txt = token.partition(".")
        if not sep:
            raise CursorError("invalid cursor: malformed")
        try:
            body = _unb64(body_txt)
            mac = _unb64(mac_txt)
        except (binascii.Error, ValueError):
            raise CursorError("invalid cursor: malformed") from None
        # The decoder is lenient (ignores stray characters and unused low bits): accept only
        # the exact encoding encode() produces, so a changed character is never accepted.
        if _b64(body) != body_txt or _b64(mac) != mac_txt:
            raise CursorError("invalid cursor: malformed")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise CursorError("invalid cursor: signature does not match (forged or corrupted)")
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise CursorError("invalid cursor: malformed payload")
            if data.pop("v") != _VERSION:
                raise CursorError("invalid cursor: unsupported version")
            state = CursorState(**data)
        except CursorError:
            raise
        except (ValueError, TypeError, KeyError):
            raise CursorError("invalid cursor: malformed payload") from None
        if state.ws != ws:
            raise CursorError("invalid cursor: issued for another workspace")
        if state.status != status:
            raise CursorError("invalid cursor: issued for another status filter")
        if state.plan != plan:
            raise CursorError(
                "cursor was issued under different read flags; start again from the first page"
            )
        if state.phase not in ("index", "legacy"):
            raise CursorError("invalid cursor: malformed payload")
        if not isinstance(state.shard, str) or not _SHARD.fullmatch(state.shard) \
                or int(state.shard) >= _SLOTS:
            raise CursorError("invalid cursor: malformed payload")
        return state
