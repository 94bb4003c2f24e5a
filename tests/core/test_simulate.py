"""The simulator counts every failed operation and reports a traffic thread that died."""

from __future__ import annotations

import time

import pytest
from jobstore_kit import Combo, apply_flags, metric

from relayctl.core.errors import RelayError
from relayctl.core.simulate import Simulator, SimulatorDied

CORRUPT = b"\xff\xfe{not utf-8"


def _seeded(store, raw, schema, n: int = 40) -> list[tuple[str, str]]:
    apply_flags(store.client, Combo(dual=True, prefers_new=True, fallback=True), store)
    jobs = [("ws-a", store.enqueue("ws-a", action_provider="p", action_name="n").job_id)
            for _ in range(n)]
    for _ws, job_id in jobs[::2]:
        raw.hset(schema.old_key(job_id), "params", CORRUPT)
        raw.hset(schema.new_key("ws-a", job_id), "params", CORRUPT)
    return jobs


def test_reads_of_corrupt_records_are_counted_as_errors_and_traffic_goes_on(
        store, raw, schema):
    jobs = _seeded(store, raw, schema)
    sim = Simulator(store, rate=0, workspaces=["ws-a"], seed=3, known_jobs=jobs,
                    write_share=0.0)
    stats = sim.run(duration=1.5)
    assert stats.by_error.get("CorruptRecordError", 0) > 0
    assert stats.errors == sum(stats.by_error.values())
    assert stats.reads > 20 and stats.lists > 5  # still running after the errors
    assert metric(store, "relay_job_deserialize_errors_total") >= \
        stats.by_error["CorruptRecordError"]
    assert sim.failure is None


def test_an_unexpected_exception_is_counted_by_type_not_fatal(store, raw, schema):
    jobs = _seeded(store, raw, schema, n=4)

    def broken(*_a, **_k):
        raise KeyError("bug in the application")

    store.list_jobs = broken  # fault injection: a bug below the simulator
    sim = Simulator(store, rate=0, workspaces=["ws-a"], seed=3, known_jobs=jobs)
    stats = sim.run(duration=0.5)
    assert stats.by_error.get("KeyError", 0) == stats.lists > 0


def test_a_traffic_thread_that_dies_is_reported_and_raises(store, raw, schema):
    jobs = _seeded(store, raw, schema, n=4)

    def fatal(*_a, **_k):
        raise SystemExit("interpreter shutting the thread down")

    store.get_job = fatal
    sim = Simulator(store, rate=200, workspaces=["ws-a"], seed=3, known_jobs=jobs)
    sim.start()
    deadline = time.monotonic() + 5
    while sim.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sim.alive
    assert sim.failure is not None and "SystemExit" in sim.failure
    with pytest.raises(SimulatorDied) as caught:
        sim.raise_if_dead()
    assert isinstance(caught.value, RelayError) and caught.value.exit_code != 0
    sim.stop()
