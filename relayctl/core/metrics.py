"""Prometheus metrics with the seeds' names and a bounded workspace label (SPEC §7)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from relayctl.core.validate import is_valid_workspace_id

log = logging.getLogger("relayctl.metrics")

OTHER = "_other"

# Every value each bounded label can take, so every series exists at 0 from the start: a
# counter that appears with its first event has no earlier sample, and `increase()` misses it.
READ_PATHS = ("new", "old", "miss")
LIST_PATHS = ("new", "mixed", "old")
DUAL_WRITE_RESULTS = ("succeeded", "failed")
MISMATCH_OPERATIONS = ("get", "list", "update")
REQUEST_OUTCOMES = (("enqueue", "ok"), ("enqueue", "error"),
                    ("update", "ok"), ("update", "error"), ("update", "not_found"))


@dataclass
class MetricsServer:
    """A running /metrics endpoint."""

    host: str
    port: int
    _server: object

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]


def _counter(registry: CollectorRegistry, name: str, documentation: str,
             *labels: str) -> Counter:
    return Counter(name, documentation, labels, registry=registry)


class Metrics:
    """All relayctl metrics on one registry; every update swallows its own failures.

    Only workspaces named in `labelled_workspaces` get their own label value; the rest
    share `_other`, so Redis data can never grow the label set.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        labelled_workspaces: Iterable[str] = (),
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.labelled = frozenset(w for w in labelled_workspaces if is_valid_workspace_id(w))
        self._warned_at = 0.0
        self._lock = threading.Lock()
        r = self.registry
        self.read_path = _counter(r, "relay_job_read_path_total", "get_job results by path",
                                  "path", "workspace_id")
        self.list_read_path = _counter(r, "relay_job_list_read_path_total",
                                       "list_jobs pages by source schema", "path", "workspace_id")
        self.dual_write = _counter(r, "relay_dual_write_attempt_total",
                                   "dual-write enqueue/update attempts", "result", "workspace_id")
        self.dual_write_seconds = Histogram(
            "relay_dual_write_duration_seconds", "dual-write latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.workspace_mismatch = _counter(
            r, "relay_workspace_mismatch_total",
            "records rejected because their workspace_id differs from the caller's",
            "operation", "workspace_id")
        self.deserialize_errors = _counter(
            r, "relay_job_deserialize_errors_total",
            "job records that could not be decoded (not UTF-8) or whose JSON fields failed "
            "to parse")
        self.index_orphans_removed = _counter(
            r, "relay_index_orphans_removed_total",
            "workspace-index entries of vanished jobs removed by list_jobs")
        self.requests = _counter(r, "relay_job_requests_total",
                                 "job store calls by operation and outcome",
                                 "operation", "outcome")
        self.backfill_scanned = _counter(r, "relay_backfill_scanned_total",
                                         "legacy keys examined by the backfill", "workspace_id")
        self.backfill_migrated = _counter(r, "relay_backfill_migrated_total",
                                          "legacy records copied to the new schema",
                                          "workspace_id")
        self.backfill_skipped = _counter(r, "relay_backfill_skipped_total",
                                         "legacy keys skipped, by reason",
                                         "workspace_id", "reason")
        self.backfill_errors = _counter(r, "relay_backfill_errors_total",
                                        "backfill write failures", "workspace_id")
        self.backfill_duration = Histogram(
            "relay_backfill_duration_seconds", "backfill batch duration",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.backfill_throttled = _counter(
            r, "relay_backfill_throttled_seconds_total",
            "seconds the backfill spent throttled by a guard, by reason", "reason")
        for reason in ("memory", "replica_lag", "replica_lost", "latency", "replica_wait"):
            self.backfill_throttled.labels(reason)
        self.backfill_healed = _counter(
            r, "relay_backfill_healed_total",
            "existing copies the backfill repaired: index entry added, partial record completed",
            "what")
        for what in ("indexed", "healed"):
            self.backfill_healed.labels(what)
        self.flag_state = Gauge(
            "relay_flag_enabled", "effective migration flag in this process (1 = on)",
            ["flag"], registry=r,
        )
        self._create_series()

    def _create_series(self) -> None:
        """Create every bounded label combination at 0 (configured workspaces plus _other)."""
        from relayctl.core.backfill.state import REASONS

        for ws in (*sorted(self.labelled), OTHER):
            for path in READ_PATHS:
                self.read_path.labels(path, ws)
            for path in LIST_PATHS:
                self.list_read_path.labels(path, ws)
            for result in DUAL_WRITE_RESULTS:
                self.dual_write.labels(result, ws)
            for operation in MISMATCH_OPERATIONS:
                self.workspace_mismatch.labels(operation, ws)
            for counter in (self.backfill_scanned, self.backfill_migrated, self.backfill_errors):
                counter.labels(ws)
            for reason in REASONS:
                self.backfill_skipped.labels(ws, reason)
        for operation, outcome in REQUEST_OUTCOMES:
            self.requests.labels(operation, outcome)

    def label(self, workspace_id: str | None) -> str:
        """The bounded label value for a workspace."""
        return workspace_id if workspace_id in self.labelled else OTHER

    def safely(self, fn: Callable[..., object], *args: object) -> None:
        """Run one metric update; a metrics failure never breaks the request it describes."""
        try:
            fn(*args)
        except Exception as exc:  # metrics must never break the request path
            now = time.monotonic()
            with self._lock:
                if now - self._warned_at > 60:
                    self._warned_at = now
                    log.warning("metrics update failed: %s", type(exc).__name__)

    def inc(self, counter: Counter, *labels: str, amount: float = 1.0) -> None:
        self.safely(lambda: counter.labels(*labels).inc(amount) if labels else counter.inc(amount))

    def observe(self, histogram: Histogram, value: float) -> None:
        self.safely(histogram.observe, value)

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve this registry on http://host:port/metrics (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(host=host, port=server.server_port, _server=server)
