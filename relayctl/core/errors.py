"""Errors that carry the CLI exit code they map to (SPEC §10)."""

from __future__ import annotations

from relayctl.core.exitcodes import ExitCode


class RelayError(Exception):
    """Base error: a one-line, credential-free message and an exit code."""

    exit_code: int = ExitCode.ERRORS


class UsageError(RelayError):
    """Bad input or a refused precondition."""

    exit_code = ExitCode.USAGE


class ValidationError(UsageError):
    """An identifier, cursor or option value failed validation."""


class CursorError(ValidationError):
    """A list cursor is malformed, forged or belongs to another query."""


class JobNotFoundError(RelayError):
    """The job does not exist in any schema the current flags read."""


class RedisUnavailableError(RelayError):
    """Redis cannot be reached (connection refused, timeout, DNS)."""

    exit_code = ExitCode.LOST
