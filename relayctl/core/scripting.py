"""Named Lua scripts called by SHA, and the one way NOSCRIPT is recovered.

A server forgets its script cache on restart, and a promoted replica never had it; every
caller that sends EVALSHA (directly, in a pipeline, or routed per node) goes through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, TryAgainError


class ScriptReloaded(TryAgainError):
    """A reply said NOSCRIPT: the script is loaded again and the step must be redone."""


@dataclass(frozen=True)
class Script:
    """A Lua script with a name (for messages) and its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command, for a pipeline or a routed batch."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self, client: Any) -> None:
        """SCRIPT LOAD (on a cluster client: on every primary)."""
        client.script_load(self.source)

    def __call__(self, client: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """EVALSHA, loading the script once if the server does not have it."""
        try:
            return client.execute_command(*self.command(keys, args))
        except NoScriptError:
            self.load(client)
            return client.execute_command(*self.command(keys, args))

    def run_batch(self, client: Any, send: Callable[[list[tuple[Any, ...]]], list[Any]],
                  calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per (keys, args) through a batched sender (read_many, a
        Router); replies that say NOSCRIPT load it once and are sent again. Other error
        replies are returned as values."""
        commands = [self.command(keys, args) for keys, args in calls]
        replies = send(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            self.load(client)
            for i, reply in zip(missing, send([commands[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    def check(self, client: Any, reply: Any) -> Any:
        """A pipelined or routed reply: NOSCRIPT loads the script and raises ScriptReloaded
        so the caller redoes the step; any other value is returned as it is."""
        if isinstance(reply, NoScriptError):
            self.load(client)
            raise ScriptReloaded(f"script {self.name} reloaded (server restart or failover)")
        return reply
