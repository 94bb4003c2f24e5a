"""Errors that carry the CLI exit code they map to (SPEC §10)."""

from __future__ import annotations


class RelayError(Exception):
    """Base error: a one-line, credential-free message and an exit code."""

    exit_code = 1


class UsageError(RelayError):
    """Bad input or a refused precondition."""

    exit_code = 2


class ValidationError(UsageError):
    """An identifier, cursor or option value failed validation."""


class CursorError(ValidationError):
    """A list cursor is malformed, forged or belongs to another query."""


class WorkspaceMismatchError(RelayError):
    """A record's own workspace_id differs from the caller's workspace."""


class JobNotFoundError(RelayError):
    """The job does not exist in any schema the current flags read."""


class RedisUnavailableError(RelayError):
    """Redis cannot be reached (connection refused, timeout, DNS)."""

    exit_code = 4
