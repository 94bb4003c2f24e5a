"""Plain helpers of the job store invariant suite (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import itertools
import string
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from cluster_kit import TAGGED

from relayctl.core import flags as flagmod
from relayctl.core.jobs import JobStore
from relayctl.core.keys import KeySchema

# Hash-tagged templates: a job's new record, its workspace index and its idempotency key share
# the workspace's slot on a cluster (the legacy key and the queue never can).
LAYOUTS = {"default": KeySchema(), "tagged": TAGGED}


@dataclass(frozen=True)
class Combo:
    """One of the eight flag combinations."""

    dual: bool
    prefers_new: bool
    fallback: bool

    @property
    def id(self) -> str:
        w = flagmod.word
        return f"dw-{w(self.dual)}_pn-{w(self.prefers_new)}_fb-{w(self.fallback)}"

    @property
    def plan(self) -> str:
        if not self.prefers_new:
            return "old"
        return "new+old" if self.fallback else "new"


ALL_COMBOS = [Combo(*bits) for bits in itertools.product((False, True), repeat=3)]


def set_flags(client: redis.Redis, combo: Combo) -> None:
    """Write the three flags the only supported way (set_flag, with audit)."""
    for name, value in (
        (flagmod.DUAL_WRITE, combo.dual),
        (flagmod.PREFERS_NEW, combo.prefers_new),
        (flagmod.FALLBACK_OLD, combo.fallback),
    ):
        flagmod.set_flag(client, name, flagmod.word(value), actor="pytest", reason="test setup")


def apply_flags(client: redis.Redis, combo: Combo, *stores: JobStore) -> None:
    """Set the flags in Redis and make each store pick them up now."""
    set_flags(client, combo)
    for store in stores:
        state = store.refresh_flags()
        assert (state.dual_write, state.read_prefers_new, state.read_fallback_old) == (
            combo.dual, combo.prefers_new, combo.fallback,
        )


def set_dual_write(client: redis.Redis, on: bool, *stores: JobStore) -> None:
    flagmod.set_flag(client, flagmod.DUAL_WRITE, flagmod.word(on), actor="pytest",
                     reason="test setup")
    for store in stores:
        assert store.refresh_flags().dual_write is on


@dataclass
class Recording:
    """Commands seen by MONITOR, as redis-py renders them ('SCAN 0 MATCH ai:jobs:* ...')."""

    commands: list[str] = field(default_factory=list)

    def named(self, name: str) -> list[str]:
        return [c for c in self.commands if c.split(" ", 1)[0].upper() == name.upper()]


@dataclass
class RoundTrips:
    """Every buffer a connection sent to the server: one per round trip."""

    sends: list[object] = field(default_factory=list)

    def reset(self) -> None:
        self.sends.clear()

    @property
    def count(self) -> int:
        return len(self.sends)


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two INFO commandstats reads, not counting INFO itself."""
    out = {}
    for name, calls in after.items():
        if name == "info":
            continue
        diff = calls - before.get(name, 0)
        if diff:
            out[name] = diff
    return out


def snapshot(raw_client: redis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key's serialized value and whether it carries a TTL."""
    return {
        key: (raw_client.dump(key), raw_client.pttl(key) > 0)
        for key in raw_client.scan_iter(count=1000)
    }


def job_keys(client: redis.Redis, pattern: str) -> list[str]:
    return sorted(client.scan_iter(match=pattern, count=1000))


def metric(store: JobStore, name: str, **labels: str) -> float:
    value = store.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def paginate(store: JobStore, ws: str, *, limit: int, status: str | None = None,
             max_pages: int = 100_000) -> list[list]:
    """Every page of a full listing (until the cursor is None)."""
    pages = []
    cursor = None
    for _ in range(max_pages):
        page = store.list_jobs(ws, status=status, cursor=cursor, limit=limit)
        pages.append(page.jobs)
        cursor = page.cursor
        if cursor is None:
            return pages
    raise AssertionError(f"pagination of {ws} did not finish within {max_pages} pages")


# Identifier oracle, written from SPEC §1 independently of relayctl.core.validate.
LOWER_DIGITS = string.ascii_lowercase + string.digits
WS_CHARS = LOWER_DIGITS + "_-"
JOB_CHARS = WS_CHARS + "."


def oracle_ws(value: str) -> bool:
    return (
        1 <= len(value) <= 64 and value[0] in LOWER_DIGITS and all(c in WS_CHARS for c in value)
    )


def oracle_job(value: str) -> bool:
    return (
        1 <= len(value) <= 64 and value[0] in LOWER_DIGITS and all(c in JOB_CHARS for c in value)
    )


ADVERSARIAL = [
    "", "*", "a*", "ws?", "ws[a]", "[", "]", "a:b", ":", "{ws}", "ws{tag}", "Acme", "ACME",
    "a" * 65, "caf\u00e9", "\u0430cme", "ws\n", "\nws", "ws\r", "ws ", " ws", "ws\t", "-ws",
    "_ws", ".ws", "ws.", "ws/x", "ws\\x", "ws\x00", "\uff41", "\u0661", "ws\u2028",
]


_MONITOR_STOP = "__pytest_monitor_stop__"


@contextlib.contextmanager
def monitored(connect: Callable[..., redis.Redis], sink: Callable[[dict], None]) -> Iterator[None]:
    """MONITOR one server: `sink` gets every command it runs meanwhile, as redis-py parses
    them (with client_type 'lua' for a command a script ran). `connect(**kwargs)` makes a
    client of that server."""
    stopper = connect()
    stopper.ping()  # connect (and handshake) before recording starts
    watcher = connect(decode_responses=True)
    mon = watcher.monitor()
    mon.__enter__()  # sends MONITOR and waits for OK: recording is live from here on
    done = threading.Event()

    def pump() -> None:
        try:
            while True:
                cmd = mon.next_command()
                if _MONITOR_STOP in cmd["command"]:
                    break
                sink(cmd)
        finally:
            done.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopper.echo(_MONITOR_STOP)
        stopper.close()
        finished = done.wait(10)
        thread.join(5)
        mon.__exit__(None, None, None)
        watcher.close()
        assert finished, "MONITOR reader did not see the stop marker"
