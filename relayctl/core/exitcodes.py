"""The exit codes every command returns (SPEC §4, README "Exit codes")."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERRORS = 1  # finished, with errors or failed gates
    USAGE = 2  # bad input or a refused precondition
    STOPPED = 3  # stopped or paused by an operator
    LOST = 4  # lost Redis (or the lease)
