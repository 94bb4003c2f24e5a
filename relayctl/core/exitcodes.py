"""The exit codes of every relayctl command (SPEC §10, README "Commands"): one enum."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status means; the CLI, the console and the engine share it."""

    OK = 0  # success: every gate passes, verify clean, backfill done
    ERRORS = 1  # a problem was found: a gate fails, records differ, a backfill had errors
    USAGE = 2  # usage error or refused precondition (also a refused Redis command)
    STOPPED = 3  # stopped, paused or waiting (a gate waits or its source is unknown)
    LOST = 4  # Redis unreachable or lost
