"""Application traffic through JobStore: what the console watches during a rollout."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from relayctl.core.cluster import scan_all
from relayctl.core.errors import JobNotFoundError, RelayError
from relayctl.core.jobs import STATUSES, JobStore
from relayctl.core.replies import as_str
from relayctl.core.roundtrip import read_many

log = logging.getLogger("relayctl.simulate")

DEFAULT_WORKSPACES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")
_PROVIDERS = (("openai", "summarize"), ("anthropic", "draft"), ("google", "translate"),
              ("internal", "classify"))


def workspace_names(count: int) -> list[str]:
    names = list(DEFAULT_WORKSPACES[:count])
    names += [f"ws-{i:03d}" for i in range(len(names), count)]
    return names


@dataclass
class SimStats:
    """Counters of what the simulator did; the console and tests read them."""

    enqueued: int = 0
    retried: int = 0
    started: int = 0
    finished: int = 0
    reads: int = 0
    misses: int = 0
    lists: int = 0
    errors: int = 0
    by_error: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class SimulatorDied(RelayError):
    """The traffic thread stopped on an exception of its own (not a counted request error)."""


class Simulator:
    """Drives enqueue → running → completed/failed, reads, lists and idempotent retries.

    Runs on its own thread at `rate` operations per second (scaled by `speed`). Every
    exception of an operation is counted as an error by type (Redis outages also back off),
    never fatal; if the thread itself dies, `failure` says why and `raise_if_dead` raises.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        rate: float = 50.0,
        workspaces: list[str] | None = None,
        seed: int | None = None,
        known_jobs: list[tuple[str, str]] | None = None,
        ttl_share: float = 0.3,
        write_share: float = 0.22,
    ) -> None:
        self.store = store
        self.rate = rate
        self.workspaces = workspaces or workspace_names(4)
        self.rng = random.Random(seed)
        self.stats = SimStats()
        self.ttl_share = ttl_share
        if not 0 <= write_share <= 0.5:
            raise ValueError("write_share must be within 0..0.5")
        self.write_share = write_share
        self._recent: deque[tuple[str, str]] = deque(known_jobs or [], maxlen=5000)
        self._fresh: deque[tuple[str, str]] = deque(maxlen=5000)  # enqueued by this run
        self._older: list[tuple[str, str]] = []
        self._running: deque[tuple[str, str]] = deque(maxlen=5000)
        self._requests: deque[tuple[str, str]] = deque(maxlen=200)
        self._owner: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None

    def _error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        name = type(exc).__name__
        self.stats.by_error[name] = self.stats.by_error.get(name, 0) + 1

    def step(self) -> None:
        """One operation, chosen with a realistic mix."""
        roll = self.rng.random()
        if roll < self.write_share:
            self._enqueue()
        elif roll < self.write_share + 0.23:
            self._work()
        elif roll < 0.85:
            self._read()
        else:
            self._list()

    def _enqueue(self) -> None:
        if self._requests and self.rng.random() < 0.1:
            ws, request_id = self.rng.choice(self._requests)
            self.stats.retried += 1
        else:
            ws = self.rng.choice(self.workspaces)
            request_id = f"req-{self.rng.getrandbits(64):016x}"
            self._requests.append((ws, request_id))
        provider, action = self.rng.choice(_PROVIDERS)
        ttl = 7 * 86400 if self.rng.random() < self.ttl_share else None
        res = self.store.enqueue(
            ws, action_provider=provider, action_name=action,
            params={"prompt_tokens": self.rng.randint(10, 4000)},
            actor_id=f"user-{self.rng.randint(1, 50)}", request_id=request_id, ttl_seconds=ttl,
        )
        if res.created:
            self.stats.enqueued += 1
            self._owner[res.job_id] = ws
            self._fresh.append((ws, res.job_id))

    def _work(self) -> None:
        if self._running and self.rng.random() < 0.5:
            ws, job_id = self._running.popleft()
            ok = self.rng.random() < 0.95
            self.store.update_status(
                ws, job_id, "completed" if ok else "failed",
                result={"tokens": self.rng.randint(1, 900)} if ok else None,
                error=None if ok else "provider timeout",
            )
            self.stats.finished += 1
            return
        popped = self.store.client.lpop(self.store.schema.queue)
        if popped is None:
            return
        job_id = as_str(popped)
        owner = self._owner.pop(job_id, None)
        if owner is None:
            owner = as_str(self.store.client.hget(self.store.schema.old_key(job_id),
                                                  "workspace_id"))
        if not owner:
            return
        try:
            self.store.update_status(owner, job_id, "running")
        except JobNotFoundError:
            return
        self._running.append((owner, job_id))
        self.stats.started += 1

    def load_existing(self, per_workspace: int = 1000, legacy_sample: int = 1000) -> int:
        """Seed the read pools from data already in Redis: the newest indexed jobs of each
        workspace (recent traffic) and a bounded SCAN sample of legacy jobs (older traffic).
        Runs once at start-up, never on the request path."""
        s = self.store.schema
        client = self.store.client
        for ws in self.workspaces:
            for job_id in reversed(client.zrevrange(s.index_key(ws), 0, per_workspace - 1)):
                self._recent.append((ws, as_str(job_id)))
        seen = 0
        for keys in scan_all(client, match=s.old_pattern, count=1000):
            heads = read_many(client, [("HMGET", key, "workspace_id", "job_id") for key in keys])
            for head in heads:
                if isinstance(head, list) and head[0] in self.workspaces and head[1]:
                    self._older.append((head[0], head[1]))
            seen += len(keys)
            if seen >= legacy_sample:
                break
        return len(self._recent) + len(self._older)

    def _read(self) -> None:
        self.stats.reads += 1
        roll = self.rng.random()
        if (not self._recent and not self._fresh) or roll < 0.01:
            ws, job_id = self.rng.choice(self.workspaces), f"{self.rng.getrandbits(64):016x}"
        elif self._older and roll < 0.06:
            ws, job_id = self.rng.choice(self._older)
        elif self._fresh and (roll < 0.14 or not self._recent):
            ws, job_id = self._fresh[self.rng.randrange(len(self._fresh))]
        else:
            # the newest known jobs are read most (`_recent` is oldest first): an exponential
            # age with a mean of 7% of the pool, as real traffic reads recent jobs
            age = int(self.rng.expovariate(1 / max(0.07 * len(self._recent), 1.0)))
            ws, job_id = self._recent[-1 - min(age, len(self._recent) - 1)]
        if self.store.get_job(ws, job_id) is None:
            self.stats.misses += 1

    def _list(self) -> None:
        self.stats.lists += 1
        status = self.rng.choice((None, None, *STATUSES))
        self.store.list_jobs(self.rng.choice(self.workspaces), status=status, limit=20)

    def run(self, duration: float | None = None,
            on_tick: Callable[[SimStats], None] | None = None) -> SimStats:
        """Run in the calling thread until stopped or `duration` seconds have passed."""
        deadline = None if duration is None else time.monotonic() + duration
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        backoff = 0.0
        last_tick = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            try:
                self.step()
                backoff = 0.0
            except (redis.RedisError, OSError) as exc:
                self._error(exc)
                backoff = min(2.0, max(0.1, backoff * 2))
                self._stop.wait(backoff)
            except Exception as exc:  # a bad record or a bug: counted, the traffic goes on
                self._error(exc)
                if not isinstance(exc, RelayError):
                    log.warning("simulated operation failed: %s", type(exc).__name__)
            if on_tick is not None and now - last_tick >= 1.0:
                last_tick = now
                on_tick(self.stats)
            if interval:
                next_at = max(next_at + interval, time.monotonic() - 1.0)
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        return self.stats

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_thread, name="relayctl-simulator",
                                        daemon=True)
        self._thread.start()

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.failure = f"traffic thread died: {type(exc).__name__}: {exc}"
            log.error("simulator %s", self.failure)  # one line; raise_if_dead reports it

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def raise_if_dead(self) -> None:
        """Raise SimulatorDied once the traffic thread has stopped on its own exception."""
        if self.failure is not None:
            raise SimulatorDied(self.failure)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
