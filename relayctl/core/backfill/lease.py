"""One run at a time per keyspace: a lease key with a TTL, renewed by a heartbeat thread.

A crashed owner's lease expires after LEASE_TTL_MS; an owner that finds its lease gone
(stalled past it, another engine took over) stops at the next batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from relayctl.core.backfill import scripts
from relayctl.core.backfill.state import HEARTBEAT_S, LEASE_TTL_MS, BackfillKeys
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.exitcodes import ExitCode


class LeaseLostError(RedisUnavailableError):
    exit_code = ExitCode.LOST


class Lease:
    def __init__(self, client: redis.Redis, keys: BackfillKeys, token: str) -> None:
        self.client = client
        self.keys = keys
        self.token = token
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> dict[str, str]:
        """Take the lease or refuse naming the owner; returns the saved state."""
        c, k = self.client, self.keys
        if not c.set(k.lease, self.token, nx=True, px=LEASE_TTL_MS):
            holder = str(c.get(k.lease) or "unknown")
            state: dict[str, str] = c.hgetall(k.state)  # type: ignore[assignment]
            since = state.get("started", "")
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(since))) if since else "?"
            raise UsageError(
                f"a backfill is already running: owner {holder.rsplit(':', 1)[0]} since {when} "
                f"(run {state.get('run_id', '?')}); use `relayctl backfill status`"
            )
        return c.hgetall(k.state)  # type: ignore[return-value]

    def start_heartbeat(self, renew: Callable[[list[Any]], bool],
                        beat: Callable[[], list[Any]]) -> None:
        """Renew every HEARTBEAT_S with `beat()`'s fields until stopped or lost."""
        def run() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    if not renew([self.token, LEASE_TTL_MS, *beat()]):
                        self.lost.set()
                        return
                except (redis.RedisError, OSError):
                    continue

        self._thread = threading.Thread(target=run, name="relayctl-backfill-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        scripts.RELEASE_LEASE(self.client, [self.keys.lease], [self.token])
