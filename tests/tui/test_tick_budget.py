"""One refresh tick issues the same Redis commands whatever the keyspace size: counted by the
server itself (INFO commandstats deltas) with 10,000 and with 1,000,000 keys present, at every
phase of the walkthrough (each phase evaluates different gates). No SCAN, no KEYS.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from relayctl.core import fleet
from relayctl.core.census import run_census
from relayctl.core.checklist import mark
from relayctl.core.connection import connect
from relayctl.core.console import ConsoleState, refresh
from relayctl.core.flags import DUAL_WRITE, PREFERS_NEW, FlagState, set_flag
from relayctl.core.jobs import iso_to_ms
from relayctl.core.keys import CHECKLIST_KEY, KeySchema
from relayctl.core.phases import PHASES
from tests.conftest import RedisServer, free_port
from tests.tui.kit import seed_legacy

SMALL, LARGE = 10_000, 1_000_000


@pytest.fixture(scope="module")
def debug_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module alone, with DEBUG POPULATE enabled."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(binary=binary, port=free_port(),
                         workdir=tmp_path_factory.mktemp("tick-redis"),
                         extra=("--enable-debug-command", "yes"))
    server.start()
    yield server
    server.stop()


def commandstats(client: redis.Redis) -> Counter[str]:
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"])
                    for k, v in client.info("commandstats").items()})


def seed_workload(client: redis.Redis) -> None:
    """What a mid-rollout keyspace holds besides filler: legacy jobs, some already copied and
    indexed, flags and their audit, a fleet heartbeat, a stored census, a backfill state."""
    schema = KeySchema()
    seed_legacy(client, 400)
    pipe = client.pipeline(transaction=False)
    for i in range(200):
        job_id, ws = f"t{i:06d}", f"ws-{'abcd'[i % 4]}"
        record = client.hgetall(schema.old_key(job_id))
        pipe.hset(schema.new_key(ws, job_id), mapping=record)
        pipe.zadd(schema.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})
    pipe.execute()
    set_flag(client, DUAL_WRITE, True, actor="pytest", reason="phase 3")
    set_flag(client, PREFERS_NEW, True, actor="pytest", reason="phase 1")
    fleet.publish(client, "api-1", FlagState(dual_write=True, read_prefers_new=True),
                  started=time.time(), ttl_s=600)
    mark(client, ["p2-latency"], actor="pytest", reason="checked")
    run_census(client, schema)
    client.hset("relay:backfill:state", mapping={
        "run_id": "bf-1", "status": "running", "mode": "execute", "scanned": "200",
        "migrated": "200", "errors": "0", "heartbeat": str(time.time())})


def tick_commands(client: redis.Redis, counter: redis.Redis, url: str) -> Counter[str]:
    """The commands one refresh tick made the server execute (our own INFO calls excluded:
    the delta of two back-to-back INFO reads is subtracted)."""
    a, b = commandstats(counter), commandstats(counter)
    own = b - a
    before = commandstats(counter)
    state = refresh(ConsoleState(), client, [], url)
    after = commandstats(counter)
    assert state.redis_status == "CONNECTED", state.redis_error
    return (after - before) - own


def per_phase(client: redis.Redis, counter: redis.Redis, url: str) -> dict[int, Counter[str]]:
    """One tick per phase, after a warm-up tick (the console keeps its connection: the first
    tick's connection handshake, HELLO and PING, is not part of a tick)."""
    refresh(ConsoleState(), client, [], url)
    out = {}
    for p in PHASES:
        counter.hset(CHECKLIST_KEY, "phase", str(p.number))
        out[p.number] = tick_commands(client, counter, url)
    return out


def test_a_refresh_tick_issues_the_same_commands_with_10k_and_1m_keys_and_never_scans(
        debug_redis):
    url = debug_redis.url
    counter = redis.Redis(port=debug_redis.port, decode_responses=True)
    client = connect(url, check=False, socket_timeout=5.0, connect_timeout=1.0)
    try:
        counter.flushall()
        seed_workload(counter)
        counter.execute_command("DEBUG", "POPULATE", SMALL - counter.dbsize(), "filler")
        assert counter.dbsize() == SMALL
        small = per_phase(client, counter, url)

        counter.execute_command("DEBUG", "POPULATE", LARGE - SMALL, "more")
        assert counter.dbsize() == LARGE
        large = per_phase(client, counter, url)
    finally:
        client.close()
        counter.flushall()
        counter.close()

    for number in small:
        assert small[number] == large[number], (number, small[number], large[number])
        assert not {"scan", "keys", "dbsize"} & set(small[number]), small[number]
        total = sum(small[number].values())
        assert 0 < total <= 40, (number, total, small[number])
    # what the final note quotes
    print({n: sum(c.values()) for n, c in small.items()}, dict(small[4]))
