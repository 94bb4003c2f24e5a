"""Benchmarks that report ratios to baselines measured in the same process, same data."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from relayctl.core.demo import legacy_record
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW
from relayctl.core.jobs import JobStore, iso_to_ms
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics


@dataclass
class BenchResult:
    name: str
    measurements: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"bench": self.name, "measurements": self.measurements,
                "ratios": self.ratios, "targets": self.targets, "notes": self.notes}


def bench_schema(run_id: str) -> KeySchema:
    """Key templates under a run-private prefix so a bench never touches real data."""
    p = f"bench:{run_id}:"
    return KeySchema(
        old_job=p + "ai:jobs:<job_id>", new_job=p + "ai:job:<ws>:<job_id>",
        index=p + "ai:jobidx:<ws>", queue=p + "ai:queue:pending",
        idempotency=p + "ai:idempotency:<ws>:<request_id>",
    )


def cleanup(client: redis.Redis, prefix: str) -> int:
    """UNLINK every key under prefix (SCAN, never KEYS)."""
    removed = 0
    batch: list[str] = []
    for key in client.scan_iter(match=prefix + "*", count=2000):
        batch.append(key)
        if len(batch) >= 2000:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


def _p50(fn: Callable[[], object], samples: int) -> float:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired_p50(a: Callable[[], object], b: Callable[[], object],
                samples: int) -> tuple[float, float]:
    """Interleave a and b so drift on a shared machine hits both equally."""
    ta, tb = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def _seed_jobs(client: redis.Redis, schema: KeySchema, rng: random.Random, count: int,
               workspaces: list[str], both_share: float, start: float) -> list[tuple[str, str]]:
    pipe = client.pipeline(transaction=False)
    made = []
    for i in range(count):
        ws = rng.choice(workspaces)
        job_id = f"{rng.getrandbits(64):016x}"
        record = legacy_record(rng, ws, job_id, start + i * 0.01)
        pipe.hset(schema.old_key(job_id), mapping=record)
        if rng.random() < both_share:
            pipe.hset(schema.new_key(ws, job_id), mapping=record)
            pipe.zadd(schema.index_key(ws), {job_id: iso_to_ms(record["enqueued_at"])})
        made.append((ws, job_id))
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return made


def bench_store(client: redis.Redis, keys: int = 200_000, samples: int = 2000,
                progress: Callable[[str], None] | None = None) -> BenchResult:
    """get_job vs raw HGETALL, dual-write vs single-schema enqueue, list_jobs at N vs N/100."""
    say = progress or (lambda _m: None)
    run_id = uuid.uuid4().hex[:8]
    schema = bench_schema(run_id)
    rng = random.Random(1)
    workspaces = [f"ws-{i:02d}" for i in range(10)]
    result = BenchResult(name="store")
    pins = {DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: True}
    store = JobStore(client, schema=schema, metrics=Metrics(), pins=pins, background=False,
                     cursor_secret=b"bench-secret-0123456789")
    try:
        small = max(keys // 100, 100)
        say(f"seeding {small} jobs")
        jobs = _seed_jobs(client, schema, rng, small, workspaces, 0.7, time.time() - 86400)
        list_small = _p50(lambda: store.list_jobs(rng.choice(workspaces), limit=50), samples // 4)

        say("get_job vs raw HGETALL")
        picks = [rng.choice(jobs) for _ in range(samples)]
        it_a, it_b = iter(picks), iter(picks)
        get_p50, raw_p50 = _paired_p50(
            lambda: store.get_job(*next(it_a)),
            lambda: client.hgetall(schema.new_key(*next(it_b))),
            samples,
        )

        say("dual-write vs single-schema enqueue")
        single = JobStore(client, schema=schema, metrics=Metrics(), background=False,
                          pins={**pins, DUAL_WRITE: False},
                          cursor_secret=b"bench-secret-0123456789")

        def enq(s: JobStore) -> Callable[[], object]:
            return lambda: s.enqueue(rng.choice(workspaces), action_provider="openai",
                                     action_name="summarize", params={"n": 1},
                                     request_id=f"r{rng.getrandbits(64):x}")

        dual_p50, single_p50 = _paired_p50(enq(store), enq(single), samples)

        say(f"seeding up to {keys} jobs")
        _seed_jobs(client, schema, rng, keys - small, workspaces, 0.7, time.time() - 86400 * 2)
        list_large = _p50(lambda: store.list_jobs(rng.choice(workspaces), limit=50), samples // 4)
        result.measurements = {
            "keys": keys,
            "get_job_p50_us": get_p50 * 1e6,
            "raw_hgetall_p50_us": raw_p50 * 1e6,
            "enqueue_dual_p50_us": dual_p50 * 1e6,
            "enqueue_single_p50_us": single_p50 * 1e6,
            f"list_jobs_p50_us_at_{small}": list_small * 1e6,
            f"list_jobs_p50_us_at_{keys}": list_large * 1e6,
        }
        result.ratios = {
            "get_job_vs_raw_hgetall": get_p50 / raw_p50,
            "enqueue_dual_vs_single": dual_p50 / single_p50,
            "list_jobs_large_vs_small": list_large / list_small,
        }
        result.targets = {
            "get_job_vs_raw_hgetall": "<= 1.3",
            "enqueue_dual_vs_single": "<= 1.6",
            "list_jobs_large_vs_small": "<= 1.5",
        }
        result.notes.append(
            "flags: dual-write on, prefers-new on, fallback on (get_job pipelines both reads)"
        )
    finally:
        store.close()
        say("cleaning up")
        cleanup(client, f"bench:{run_id}:")
    return result
