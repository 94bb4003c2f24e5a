"""`relayctl exporter`: the migration's state, read from Redis, on a /metrics endpoint.

Dashboards and alerts read the rollout (phase, flags, fleet, backfill, census, verify, gate
verdicts) from here, so they have data whether or not an engine or CLI process is running.
Each scrape is one `read_overview` (bounded: no SCAN, nothing that grows with the keyspace).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relayctl.core.backfill import BackfillKeys
from relayctl.core.backfill.state import REASONS, run_health
from relayctl.core.errors import RelayError
from relayctl.core.evaluation import GateConfig
from relayctl.core.flags import word
from relayctl.core.gates import FAIL, PASS, UNKNOWN, WAIT
from relayctl.core.overview import Overview, read_overview

STATUSES = (PASS, FAIL, WAIT, UNKNOWN)
BACKFILL_COUNTS = ("scanned", "migrated", "indexed", "healed", "errors",
                   *(f"skipped_{r}" for r in REASONS if r != "error"))
THROTTLE_KINDS = ("memory", "replica_lag", "replica_lost", "latency", "replica_wait")
HEALTHS = ("none", "running", "throttled", "paused", "stalled", "dead", "finished")


def _num(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


@dataclass
class ExporterStats:
    scrapes: int = 0
    failures: int = 0
    last_error: str = ""
    last_duration_s: float = 0.0


@dataclass(eq=False)  # registered by identity
class MigrationCollector(Collector):
    """Reads Redis on every scrape; a failed read exports relay_exporter_redis_up 0 and no
    state (absent, so gates and alerts read UNKNOWN rather than stale numbers)."""

    connect: Callable[[], redis.Redis]
    gates: GateConfig
    backfill_keys: BackfillKeys = field(default_factory=BackfillKeys)
    now: Callable[[], float] = time.time
    stats: ExporterStats = field(default_factory=ExporterStats)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # one Redis read at a time, however many scrapers
            started = time.monotonic()
            self.stats.scrapes += 1
            try:
                view = read_overview(self.connect(), self.gates, now=self.now,
                                     backfill_keys=self.backfill_keys)
            except (redis.RedisError, OSError, RelayError) as exc:
                self.stats.failures += 1
                self.stats.last_error = type(exc).__name__
                view = None
            self.stats.last_duration_s = time.monotonic() - started
        up = GaugeMetricFamily("relay_exporter_redis_up",
                               "1 when the last scrape read the migration state from Redis")
        up.add_metric([], 1.0 if view is not None else 0.0)
        yield up
        took = GaugeMetricFamily("relay_exporter_scrape_duration_seconds",
                                 "time the last scrape spent reading Redis")
        took.add_metric([], self.stats.last_duration_s)
        yield took
        if view is not None:
            yield from self._state(view)

    def _state(self, view: Overview) -> Iterator[Metric]:
        now = self.now()
        g = GaugeMetricFamily("relay_migration_phase", "current checklist phase (0-6)")
        g.add_metric([], float(view.checklist.phase))
        yield g
        stored = GaugeMetricFamily("relay_migration_flag_stored",
                                   "stored migration flag (1 on, 0 off; absent when unset)",
                                   labels=["flag"])
        effective = GaugeMetricFamily(
            "relay_migration_flag_effective", "flag value in force (stored, else default)",
            labels=["flag"])
        agree = GaugeMetricFamily("relay_fleet_flag_agree",
                                  "live instances running the flag's value in force",
                                  labels=["flag"])
        for row in view.flags:
            if row.stored is not None:
                stored.add_metric([row.name], 1.0 if row.stored else 0.0)
            effective.add_metric([row.name], 1.0 if row.value else 0.0)
            agree.add_metric([row.name], float(row.agree))
        yield from (stored, effective, agree)

        want = {row.name: word(row.value) for row in view.flags}
        live = view.instances
        converged = sum(1 for i in live if all(i.flags.get(k) == v for k, v in want.items()))
        fleet = GaugeMetricFamily("relay_fleet_instances", "application instances by state",
                                  labels=["state"])
        fleet.add_metric(["live"], float(len(live)))
        fleet.add_metric(["converged"], float(converged))
        fleet.add_metric(["pinned"], float(sum(1 for i in live if i.pinned)))
        yield fleet

        yield from self._backfill(view, now)
        yield from self._census_verify(view, now)

        verdict = GaugeMetricFamily("relay_gate_status",
                                    "current phase's gate verdicts (1 for the verdict given)",
                                    labels=["gate", "phase", "status"])
        phase_label = str(view.phase_number)
        for r in [*view.gates, *view.triggers]:
            for s in STATUSES:
                verdict.add_metric([r.gate, phase_label, s], 1.0 if r.status == s else 0.0)
        yield verdict

    def _backfill(self, view: Overview, now: float) -> Iterator[Metric]:
        state = view.backfill
        health = run_health(state, view.engine_alive, now)
        info = GaugeMetricFamily("relay_backfill_health",
                                 "backfill run health from its Redis state (1 for the one)",
                                 labels=["health"])
        for h in (*HEALTHS, *(() if health.health in HEALTHS else (health.health,))):
            info.add_metric([h], 1.0 if health.health == h else 0.0)
        yield info
        running = GaugeMetricFamily("relay_backfill_running",
                                    "1 while the state says an engine is working on the run")
        running.add_metric([], 1.0 if state.get("status") in ("running", "throttled") else 0.0)
        yield running
        alive = GaugeMetricFamily("relay_backfill_engine_alive", "1 while the lease is held")
        alive.add_metric([], 1.0 if view.engine_alive else 0.0)
        yield alive
        if not state:
            return
        run = GaugeMetricFamily("relay_backfill_run_info", "the last run (value 1)",
                                labels=["run_id", "status", "mode"])
        run.add_metric([state.get("run_id", ""), state.get("status", ""),
                        state.get("mode", "")], 1.0)
        yield run
        keys = GaugeMetricFamily("relay_backfill_keys", "the run's counters from its state",
                                 labels=["kind"])
        for kind in BACKFILL_COUNTS:
            value = _num(state.get(kind, 0) or 0)
            if value is not None:
                keys.add_metric([kind], value)
        yield keys
        for name, field_name, help_text in (
            ("relay_backfill_progress_ratio", "fraction", "share of the keyspace scanned"),
            ("relay_backfill_rate_keys_per_second", "rate", "keys per second, last heartbeat"),
            ("relay_backfill_eta_seconds", "eta_s", "estimated seconds to completion"),
        ):
            value = _num(state.get(field_name, ""))
            if health.health == "finished":  # done: all scanned, nothing scanning, no ETA
                value = {"fraction": 1.0, "rate": 0.0, "eta_s": 0.0}[field_name]
            elif field_name == "rate" and not health.live:
                value = 0.0  # the last heartbeat's rate is stale once no engine works
            if value is not None:
                gauge = GaugeMetricFamily(name, help_text)
                gauge.add_metric([], value)
                yield gauge
        beat = _num(state.get("heartbeat", ""))
        if beat is not None:
            gauge = GaugeMetricFamily("relay_backfill_heartbeat_age_seconds",
                                      "seconds since the engine's last heartbeat")
            gauge.add_metric([], max(0.0, now - beat))
            yield gauge
        kind = state.get("throttle_kind", "") or "none"
        throttled = _num(state.get("throttled_s", ""))
        if throttled is not None:
            gauge = GaugeMetricFamily("relay_backfill_throttled_seconds",
                                      "seconds the run has spent throttled (from its state)")
            gauge.add_metric([], throttled)
            yield gauge
        if state:
            now_held = GaugeMetricFamily(
                "relay_backfill_throttled", "1 while a guard holds the run, by the guard",
                labels=["reason"])
            held = state.get("status") == "throttled"
            for reason in THROTTLE_KINDS:
                now_held.add_metric([reason], 1.0 if held and kind == reason else 0.0)
            yield now_held

    def _census_verify(self, view: Overview, now: float) -> Iterator[Metric]:
        c = view.census
        if c is not None:
            keys = GaugeMetricFamily("relay_census_keys", "last census counts",
                                     labels=["kind"])
            for kind in ("old", "new", "index_keys", "index_entries", "other"):
                keys.add_metric([kind], float(getattr(c, kind)))
            yield keys
            age = GaugeMetricFamily("relay_census_age_seconds", "seconds since the census")
            age.add_metric([], max(0.0, now - c.ts))
            yield age
        v = view.verify
        if v is not None:
            diffs = GaugeMetricFamily("relay_verify_differences",
                                      "differences the last verify found", labels=["kind"])
            for kind, n in sorted(v["counts"].items()):
                diffs.add_metric([kind], float(n))
            yield diffs
            for name, value, help_text in (
                ("relay_verify_checked", float(v["checked"]), "records the last verify checked"),
                ("relay_verify_clean", 1.0 if v["clean"] else 0.0, "1 when it found nothing"),
                ("relay_verify_age_seconds", max(0.0, now - v["ts"]), "seconds since it ran"),
            ):
                gauge = GaugeMetricFamily(name, help_text, labels=["mode"])
                gauge.add_metric([v["mode"]], value)
                yield gauge


@dataclass
class Exporter:
    """A running exporter endpoint."""

    host: str
    port: int
    collector: MigrationCollector
    _server: object

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]


def serve(collector: MigrationCollector, port: int, host: str = "127.0.0.1") -> Exporter:
    """Serve the collector on http://host:port/metrics (0 picks a free port)."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return Exporter(host=host, port=server.server_port, collector=collector, _server=server)
