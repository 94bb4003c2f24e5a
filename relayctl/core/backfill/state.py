"""Where a run lives in Redis (state, lease, control) and how other processes read and steer
it: `relayctl backfill status|pause|resume|stop` and the console act only through these keys."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from relayctl.core import audit
from relayctl.core.errors import UsageError
from relayctl.core.keys import BACKFILL_PREFIX

REASONS = ("exists", "invalid", "filtered", "error")
UNFINISHED = ("running", "paused", "stopped", "partial", "lost", "failed")
# The lease outlives a crashed owner by at most this long; tests shorten it via the env var.
LEASE_TTL_MS = int(os.environ.get("RELAYCTL_BACKFILL_LEASE_MS") or 15_000)
HEARTBEAT_S = min(2.0, LEASE_TTL_MS / 3000)
CONTROL_ACTIONS = {"pause": "pause", "resume": "run", "stop": "stop"}


@dataclass(frozen=True)
class BackfillKeys:
    """Where the engine keeps its state, lease and control (relay:backfill:* by default)."""

    prefix: str = BACKFILL_PREFIX

    @property
    def state(self) -> str:
        return self.prefix + "state"

    @property
    def lease(self) -> str:
        return self.prefix + "lease"

    @property
    def control(self) -> str:
        return self.prefix + "control"

    @property
    def tune(self) -> str:
        return self.prefix + "tune"


def owner_id() -> str:
    """host:pid, so a refusal names the process that holds the lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def read_state(client: redis.Redis, keys: BackfillKeys | None = None) -> dict[str, str]:
    return client.hgetall((keys or BackfillKeys()).state)  # type: ignore[return-value]


def lease_owner(client: redis.Redis, keys: BackfillKeys | None = None) -> str | None:
    return client.get((keys or BackfillKeys()).lease)  # type: ignore[return-value]


def send_control(client: redis.Redis, action: str, *, actor: str, reason: str,
                 keys: BackfillKeys | None = None) -> dict[str, str]:
    """pause / resume / stop a running engine from any process; audited."""
    keys = keys or BackfillKeys()
    if action not in CONTROL_ACTIONS:
        raise UsageError(f"unknown backfill action {action!r}")
    state: dict[str, str] = client.hgetall(keys.state)  # type: ignore[assignment]
    alive = client.exists(keys.lease) == 1
    if not alive:
        raise UsageError(
            "no backfill engine is running"
            + (f" (last run {state.get('run_id')} is {state.get('status')}; start one with "
               "`relayctl backfill --execute --resume`)" if state else "")
        )
    before = client.get(keys.control) or "run"
    entry = audit.audit_fields(actor, f"backfill.{action}", "backfill", str(before),
                               CONTROL_ACTIONS[action], reason)
    audit.write_audited(client, [entry],
                        lambda pipe: pipe.set(keys.control, CONTROL_ACTIONS[action]))
    return state


# What `relayctl backfill set` may change on a running engine, with each value's range.
TUNABLE: dict[str, tuple[type, float, float]] = {
    "rps": (float, 0, 1e9),
    "batch": (int, 1, 100_000),
    "max_memory_pct": (float, 1, 100),
    "critical_memory_pct": (float, 1, 100),
    "max_replica_lag_bytes": (int, 1, 2**62),
    "max_replica_lag_s": (float, 0.001, 86_400),
    "max_latency_ms": (float, 0.1, 60_000),
}


def parse_tune(changes: dict[str, object]) -> dict[str, str]:
    """Validate a retune; one-line refusal naming the bad parameter."""
    out: dict[str, str] = {}
    for name, value in changes.items():
        if value is None:
            continue
        if name not in TUNABLE:
            raise UsageError(f"cannot retune {name!r}: one of {', '.join(TUNABLE)}")
        kind, low, high = TUNABLE[name]
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be a number, not {value!r}") from None
        if not low <= number <= high:
            raise UsageError(f"{name} must be between {low:g} and {high:g}")
        out[name] = f"{number:g}" if kind is float else str(number)
    if not out:
        raise UsageError("nothing to change: give at least one of "
                         + ", ".join(f"--{n.replace('_', '-')}" for n in TUNABLE))
    return out


def send_tune(client: redis.Redis, changes: dict[str, object], *, actor: str, reason: str,
              keys: BackfillKeys | None = None) -> dict[str, str]:
    """Retune a running engine between batches (gh-ost's interactive commands); audited.

    The engine reads the tune hash with its batches and applies a new `seq` at once.
    """
    keys = keys or BackfillKeys()
    if not reason.strip():
        raise UsageError("a reason is required to retune a backfill")
    values = parse_tune(changes)
    if client.exists(keys.lease) != 1:
        raise UsageError("no backfill engine is running: nothing to retune")
    before: dict[str, str] = client.hgetall(keys.tune)  # type: ignore[assignment]
    entry = audit.audit_fields(
        actor, "backfill.set", "backfill",
        " ".join(f"{k}={before[k]}" for k in values if k in before),
        " ".join(f"{k}={v}" for k, v in values.items()), reason)

    def change(pipe: redis.client.Pipeline) -> None:
        pipe.hset(keys.tune, mapping=values)  # type: ignore[arg-type]
        pipe.hincrby(keys.tune, "seq", 1)

    audit.write_audited(client, [entry], change)
    return values


def iter_status_fields(state: dict[str, str]) -> Iterable[tuple[str, str]]:
    """The state hash in reading order, one line per shard on a cluster."""
    order = ("run_id", "status", "mode", "owner", "workspaces", "cursor", "scanned",
             "migrated", "indexed", "healed", "skipped_exists", "skipped_invalid",
             "skipped_filtered", "errors",
             "started", "heartbeat", "updated", "finished", "message")
    for name in order:
        if name in state:
            yield name, state[name]
    for name in sorted((f for f in state if f.startswith("cursor:")),
                       key=lambda f: int(f.partition(":")[2] or 0)):
        shard = name.partition(":")[2]
        done = state.get(f"done:{shard}") == "1"
        yield f"shard {shard}", "done" if done else f"cursor {state[name]}"


_TIMES = ("started", "heartbeat", "updated", "finished", "throttle_since", "last_start")
_TEXT = ("run_id", "status", "mode", "owner", "workspaces", "message", "server",
         "stop_reason", "throttle_reason", "throttle_kind")


def state_json(state: dict[str, str]) -> dict[str, Any]:
    """The run's saved state for `--json`: numbers as numbers, times as UTC ISO strings,
    shard flags as booleans, empty as null, and never the lease token (it fences writes)."""
    from relayctl.core.formatting import iso

    out: dict[str, Any] = {}
    for name, value in state.items():
        if name == "token":
            continue
        if value == "":
            out[name] = None
        elif name in _TEXT or name.startswith("server"):
            out[name] = value
        elif name in _TIMES:
            out[name] = iso(float(value)) if _is_number(value) else value
        elif name.startswith("done:"):
            out[name] = value == "1"
        elif _is_number(value):
            number = float(value)
            out[name] = int(number) if number.is_integer() and "." not in value else number
        else:
            out[name] = value
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


FINISHED = ("completed", "completed_with_errors")
ACTIVE = ("running", "paused", "throttled")  # an engine must be alive behind these


@dataclass(frozen=True)
class RunHealth:
    """What an operator must know about the run first: is an engine really behind it?"""

    health: str  # none, running, throttled, paused, stalled, dead, finished, or the status
    detail: str
    live: bool  # rate and ETA mean something only while an engine is alive and working

    @property
    def dead(self) -> bool:
        return self.health == "dead"


def run_health(state: dict[str, str], lease_alive: bool, now: float) -> RunHealth:
    """RUNNING vs STALLED (heartbeat older than 3 intervals) vs DEAD (lease expired while the
    status says an engine works), from the saved state alone."""
    status = state.get("status", "")
    if not state:
        return RunHealth("none", "no backfill has run", False)
    if status in FINISHED:
        return RunHealth("finished", f"{status}: {state.get('message', '')}".rstrip(": "), False)
    resume = "resume with `relayctl backfill --execute --resume`"
    if status in ACTIVE and not lease_alive:
        where = _position(state)
        beat = _age(now, state.get("heartbeat"))
        return RunHealth("dead", f"engine {state.get('owner', '?')} is gone (lease expired; "
                                 f"last heartbeat {beat} ago, {where}); {resume}", False)
    if status in ACTIVE:
        interval = float(state.get("heartbeat_s") or HEARTBEAT_S)
        beat_at = float(state.get("heartbeat") or 0)
        if status != "paused" and beat_at and now - beat_at > 3 * interval:
            return RunHealth("stalled", f"no heartbeat for {_age(now, beat_at)} (interval "
                                        f"{interval:g}s): the engine may be frozen", False)
        reason = state.get("throttle_reason", "")
        if status == "throttled":
            return RunHealth("throttled", reason or "throttled", True)
        return RunHealth(status, state.get("message", ""), status == "running")
    return RunHealth(status, f"{state.get('message', '')}; {resume}".lstrip("; "), False)


def _position(state: dict[str, str]) -> str:
    shards = [f for f in state if f.startswith("cursor:")]
    if shards:
        return f"{sum(state.get('done:' + f[7:]) == '1' for f in shards)}/{len(shards)} shards done"
    return f"cursor {state.get('cursor', '0')}"


def _age(now: float, then: object) -> str:
    from relayctl.core.formatting import duration

    try:
        return duration(now - float(str(then)))
    except ValueError:
        return "?"
