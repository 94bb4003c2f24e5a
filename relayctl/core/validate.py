"""Identifier validation done before any Redis command is built from input."""

from __future__ import annotations

import re

from relayctl.core.errors import ValidationError

_WORKSPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)
_JOB_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def validate_workspace_id(value: object) -> str:
    """Return the workspace id or raise: it ends up inside key names and SCAN patterns."""
    if not isinstance(value, str) or not _WORKSPACE_RE.fullmatch(value):
        raise ValidationError(
            f"invalid workspace id {_show(value)}: expected 1-64 of a-z 0-9 _ - "
            "starting with a letter or digit"
        )
    return value


def validate_job_id(value: object) -> str:
    """Return the job id or raise; the same rule as workspaces, plus '.'."""
    if not isinstance(value, str) or not _JOB_ID_RE.fullmatch(value):
        raise ValidationError(
            f"invalid job id {_show(value)}: expected 1-64 of a-z 0-9 _ - . "
            "starting with a letter or digit"
        )
    return value


def validate_request_id(value: object) -> str:
    """Return the idempotency request id or raise."""
    if not isinstance(value, str) or not _REQUEST_ID_RE.fullmatch(value):
        raise ValidationError(
            f"invalid request id {_show(value)}: expected 1-128 of A-Z a-z 0-9 _ - ."
        )
    return value


def is_valid_workspace_id(value: object) -> bool:
    return isinstance(value, str) and _WORKSPACE_RE.fullmatch(value) is not None


def is_valid_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID_RE.fullmatch(value) is not None
