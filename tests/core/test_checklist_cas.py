"""Compare-and-set on the rollout phase (issue 14 item 4): concurrent operators advance once, a
stale operator is refused with who moved the phase, and nothing is written by the loser."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from relayctl.core.checklist import (
    advance,
    apply,
    mark,
    read_checklist,
    rollback,
)
from relayctl.core.errors import UsageError
from relayctl.core.evaluation import GateConfig, gate_context
from relayctl.core.keys import AUDIT_KEY, CHECKLIST_KEY
from relayctl.core.phases import phase

OVERRIDE = "new_keys_present"


def _actions(r: redis.Redis) -> list[str]:
    return [fields["action"] for _, fields in r.xrange(AUDIT_KEY)]


def _ready_phase(r: redis.Redis, number: int) -> None:
    """The checklist at `number` with every manual item of that phase checked off."""
    r.hset(CHECKLIST_KEY, "phase", str(number))
    mark(r, [i.id for i in phase(number).items if i.manual], actor="setup")


def _advance(r: redis.Redis, url: str, actor: str, seen: int | None = None, now: float = 0.0):
    state = read_checklist(r)
    number = state.phase if seen is None else seen
    ctx = gate_context(GateConfig(redis_url=url), r, state, state.phase)
    overrides = {g: "test" for g in phase(state.phase).gates}
    return advance(r, ctx, actor=actor, overrides=overrides, now=lambda: now or time.time(),
                   seen_phase=number)


def test_a_stale_advance_never_moves_the_phase_back(r, redis_url):
    _ready_phase(r, 2)
    seen = read_checklist(r).phase  # the slow operator looks at phase 2 ...
    assert _advance(r, redis_url, "bob", now=5000.0).phase_to == 3  # ... two quick ones go
    mark(r, [i.id for i in phase(3).items if i.manual], actor="setup")
    assert _advance(r, redis_url, "carol", now=5001.0).phase_to == 4
    entries = len(_actions(r))
    with pytest.raises(UsageError) as caught:
        _advance(r, redis_url, "alice", seen=seen)
    assert str(caught.value).startswith(
        "phase is now 4 (advanced by carol at 1970-01-01T01:23:21Z)")
    assert caught.value.exit_code == 2
    assert read_checklist(r).phase == 4
    assert len(_actions(r)) == entries  # the refused advance wrote no entry


def test_the_write_itself_is_refused_when_the_phase_moved_after_the_read(r, redis_url):
    """The phase moves between the read and the write (gates evaluated meanwhile)."""
    _ready_phase(r, 0)
    state = read_checklist(r)
    ctx = gate_context(GateConfig(redis_url=redis_url), r, state, 0)
    r.hset(CHECKLIST_KEY, mapping={"phase": "1", "phase:by": "dave", "phase:at": "7200"})
    with pytest.raises(UsageError, match=r"^phase is now 1 \(advanced by dave at "
                                         r"1970-01-01T02:00:00Z\)"):
        advance(r, ctx, actor="alice", overrides={OVERRIDE: "x"}, seen_phase=0)
    assert read_checklist(r).phase == 1
    assert "checklist.advance" not in _actions(r)


def test_mark_apply_and_rollback_are_refused_once_the_phase_is_not_the_one_seen(r):
    _ready_phase(r, 1)
    r.hset(CHECKLIST_KEY, mapping={"phase": "2", "phase:by": "erin", "phase:at": "60"})
    before = r.hgetall(CHECKLIST_KEY), _actions(r)
    for call in (
        lambda: mark(r, ["env-example"], actor="alice", undo=True, seen_phase=1),
        lambda: apply(r, actor="alice", reason="go", metrics_urls=[], seen_phase=1),
        lambda: rollback(r, "read-routing", actor="alice", reason="bad", seen_phase=1),
    ):
        with pytest.raises(UsageError, match=r"^phase is now 2 \(advanced by erin at "):
            call()
    assert (r.hgetall(CHECKLIST_KEY), _actions(r)) == before
    assert not r.exists("relay:flags")


def _relayctl(url: str, actor: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, RELAYCTL_ACTOR=actor)
    return subprocess.Popen([sys.executable, "-m", "relayctl", "--redis-url", url, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _paused_scripts(r: redis.Redis) -> int:
    return sum(1 for c in r.client_list() if c.get("cmd") == "eval" and "b" in c["flags"])


@pytest.mark.parametrize("operators", [2, 8])
def test_concurrent_advances_from_separate_processes_advance_exactly_once(
        r, redis_url, operators):
    _ready_phase(r, 0)
    args = ("checklist", "advance", "--override", OVERRIDE, "--reason", "race", "--yes")
    # writes (scripts included) wait while every operator reads phase 0 and evaluates its
    # gates; then all of them write at once
    r.client_pause(60_000, all=False)
    try:
        procs = [_relayctl(redis_url, f"op-{i}", *args) for i in range(operators)]
        deadline = time.monotonic() + 60
        while _paused_scripts(r) < operators and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _paused_scripts(r) == operators, "the operators never all reached their write"
    finally:
        r.client_unpause()
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        outcomes.append((p.returncode, out, err))
    winners = [o for o in outcomes if o[0] == 0]
    losers = [o for o in outcomes if o[0] != 0]
    assert len(winners) == 1, outcomes
    winner = next(f"op-{i}" for i, o in enumerate(outcomes) if o[0] == 0)
    assert len(losers) == operators - 1
    for code, _out, err in losers:
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"phase is now 1 (advanced by {winner} at " in lines[0]
    assert read_checklist(r).phase == 1
    actions = _actions(r)
    assert actions.count("checklist.advance") == 1
    assert actions.count("gate.override") == 1
