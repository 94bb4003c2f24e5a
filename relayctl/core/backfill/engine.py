"""The backfill engine: copy legacy records to the workspace-scoped schema (SPEC §4).

One walk loop drives every lane (the whole server, or one lane per cluster shard): pacing
(`--rps`, the latency throttle), control (pause/resume/stop), signals, progress and ETA,
checkpoints and `--max-keys` exist once, here. How a lane reads and applies a batch, and
how the servers behind the lanes are watched, are the strategies in `standalone` and
`sharded`. A batch is applied and recorded in one fenced step, so a crash at any point
leaves the whole batch applied and counted, or none of it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import redis

from relayctl.core import cluster as clusterlib
from relayctl.core.backfill.capacity import Projection, project
from relayctl.core.backfill.guards import (
    GO_VERDICT,
    SAMPLE_EVERY_S,
    STOP,
    THROTTLE,
    GuardLimits,
    Guards,
    ServerSample,
    Verdict,
    soft_buffer_limit,
)
from relayctl.core.backfill.lanes import (
    Batch,
    EngineContext,
    Lane,
    Rescan,
    Topology,
)
from relayctl.core.backfill.lease import Lease, LeaseLostError
from relayctl.core.backfill.options import BackfillOptions
from relayctl.core.backfill.prefetch import Prefetcher
from relayctl.core.backfill.progress import BackfillProgress
from relayctl.core.backfill.record import RunRecord, Tuner
from relayctl.core.backfill.sharded import ClusterTopology
from relayctl.core.backfill.standalone import StandaloneTopology
from relayctl.core.backfill.state import (
    HEARTBEAT_S,
    UNFINISHED,
    BackfillKeys,
    owner_id,
)
from relayctl.core.backfill.tally import Tally
from relayctl.core.backfill.throttle import INTERRUPTED, Throttle
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.exitcodes import ExitCode
from relayctl.core.flags import stored_flags
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.replies import as_str, as_str_dict, fields
from relayctl.core.validate import validate_workspace_id

T = TypeVar("T")

RESCAN_MESSAGE = ("Redis restarted since the cursor was taken (its SCAN order changed): "
                  "rescanning from cursor 0; copied records count as exists")
RESCAN_CLUSTER_MESSAGE = ("a shard's primary changed (failover or restart): its cursor and any "
                          "copies it had not replicated are gone, so every shard is walked "
                          "again from cursor 0; copied records count as exists")

EXIT_DONE, EXIT_ERRORS, EXIT_STOPPED = ExitCode.OK, ExitCode.ERRORS, ExitCode.STOPPED


class Backfill:
    """One backfill run. `run()` returns the exit code of SPEC §4."""

    def __init__(
        self,
        client: redis.Redis,
        options: BackfillOptions,
        *,
        schema: KeySchema | None = None,
        metrics: Metrics | None = None,
        keys: BackfillKeys | None = None,
        on_event: Callable[[str, BackfillProgress], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        options.validate()
        self.client = client
        self.opt = options
        self.schema = schema or KeySchema()
        self.metrics = metrics or Metrics()
        self.keys = keys or BackfillKeys()
        self.on_event = on_event or (lambda _e, _p: None)
        self.sleep = sleep
        self.token = f"{owner_id()}:{uuid.uuid4().hex[:8]}"
        self.progress = BackfillProgress(mode="execute" if options.execute else "dry-run")
        self.cluster = clusterlib.is_cluster(client)
        ctx = EngineContext(client, self.schema, options, self.keys, self.token)
        self.topology: Topology = (ClusterTopology(ctx) if self.cluster
                                   else StandaloneTopology(ctx))
        self.lease = Lease(client, self.keys, self.token)
        self.lanes: list[Lane] = []
        self._workspaces = frozenset(validate_workspace_id(w) for w in options.workspaces)
        self._lock = threading.RLock()
        self._halt = threading.Event()
        self._stop_signal = threading.Event()
        self.tally = Tally(self.progress, self.metrics, self.schema, self._workspaces,
                           cluster=self.cluster, rps=lambda: self.opt.rps,
                           on_event=self.on_event)
        self.guards = Guards(GuardLimits(
            max_memory_pct=options.max_memory_pct, critical_memory_pct=options.critical_memory_pct,
            max_memory_bytes=options.max_memory_bytes,
            max_replica_lag_bytes=options.max_replica_lag_bytes,
            max_replica_lag_s=options.max_replica_lag_s, wait_replicas=options.wait_replicas))
        self.guards.named = self.cluster
        self.record = RunRecord(client, self.keys, self.token, self.progress, options,
                                self.guards, self._retrying)
        self.tuner = Tuner(self.record, on_change=self.tally.repace, on_event=self.on_event)
        self.throttle = Throttle(self.guards, self.progress, self.metrics,
                                 write=self.record.write_if_executing,
                                 emit=lambda e: self.on_event(e, self.progress), sleep=sleep)
        self.projection: Projection | None = None
        self.preflight_s = 0.0
        self.evictions_seen = False  # keys were evicted during this run (a resumed one too)
        if self.cluster and options.wait_replicas:
            raise UsageError("--wait-replicas applies to a standalone server: on a cluster each "
                             "shard's replicas are watched by the replica-lag guard instead")

    def request_stop(self) -> None:
        """Finish the current batch, save, and exit 3 (SIGINT/SIGTERM)."""
        self._stop_signal.set()

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        """Retry transport failures with backoff for up to retry_for_s, then exit 4."""
        deadline = time.monotonic() + self.opt.retry_for_s
        delay = 0.1
        while True:
            try:
                return fn()
            except self.topology.transient as exc:
                self.topology.forget()
                if time.monotonic() + delay > deadline:
                    raise RedisUnavailableError(
                        f"lost Redis during {what} for {self.opt.retry_for_s:g}s "
                        f"({type(exc).__name__}); "
                        f"{self.topology.saved_note(self.progress.cursor)}, rerun with --resume"
                    ) from None
                self.progress.message = f"Redis unavailable, retrying ({type(exc).__name__})"
                self.on_event("retry", self.progress)
                self.sleep(delay)
                delay = min(delay * 2, 2.0)
            except redis.ResponseError as exc:
                if str(exc).startswith(("LEASE ", "FINAL ")):
                    raise LeaseLostError(f"{str(exc).split(' ', 1)[1]}; this engine stops "
                                         "and writes nothing more") from None
                raise

    def _preflight(self) -> None:
        t0 = time.perf_counter()
        try:
            self._check_preflight()
        finally:
            self.preflight_s = time.perf_counter() - t0

    def _check_preflight(self) -> None:
        if self.opt.execute and not self.opt.force:
            flags = stored_flags(self.client)
            if not flags.get("AI_JOBS_NEW_SCHEMA", False):
                raise UsageError(
                    "refusing --execute while dual-write (AI_JOBS_NEW_SCHEMA) is off: records "
                    "updated after their copy would go stale; turn it on first or pass --force"
                )
        if not self.opt.guards:
            return
        self.projection = project(
            self.client, self.schema, self._workspaces, max_memory_pct=self.opt.max_memory_pct,
            max_memory_bytes=self.opt.max_memory_bytes,
            allow_evicting=self.opt.allow_evicting_policy)
        self.progress.preflight = self.projection.lines()
        self.progress.refusals = self.projection.problems
        if self.opt.max_replica_lag_bytes is None:
            self.guards.lag_limit_default = self._replica_buffer_limit()
        if self.opt.execute and self.progress.refusals:
            raise UsageError("refusing --execute: " + "; ".join(self.progress.refusals))

    def _replica_buffer_limit(self) -> int:
        """Half the replica soft output-buffer limit (CONFIG GET may be denied: 8 MiB)."""
        try:
            found = soft_buffer_limit(as_str_dict(
                self.client.config_get("client-output-buffer-limit")))
        except (redis.ResponseError, AttributeError):
            found = None
        return found or self.guards.lag_limit_default

    def _resume_counters(self, saved: dict[str, str]) -> None:
        p, scope = self.progress, ",".join(sorted(self._workspaces))
        if saved.get("workspaces", "") != scope:
            raise UsageError(
                f"the unfinished run {saved.get('run_id')} covers workspaces "
                f"[{saved.get('workspaces') or 'all'}], not [{scope or 'all'}]: "
                "pass the same --workspace options, or --fresh to start over"
            )
        p.run_id = saved["run_id"]
        p.cursor = int(saved.get("cursor", 0))
        p.scanned = int(saved.get("scanned", 0))
        p.migrated = int(saved.get("migrated", 0))
        p.indexed = int(saved.get("indexed", 0))
        p.healed = int(saved.get("healed", 0))
        for reason in p.skipped:
            field_name = "errors" if reason == "error" else f"skipped_{reason}"
            p.skipped[reason] = int(saved.get(field_name, 0))
        p.started = float(saved.get("started", time.time()))
        p.message = f"resumed at cursor {p.cursor}"
        self.throttle.total_s = float(saved.get("throttled_s", 0) or 0)
        self.evictions_seen = saved.get("evictions_seen") == "1"

    def _start_state(self, saved: dict[str, str]) -> None:
        """Decide fresh vs resume, make the lanes, and write the run's starting state."""
        p, k = self.progress, self.keys
        resumable = saved.get("status") in UNFINISHED
        if self.opt.resume and not resumable:
            raise UsageError("--resume: there is no unfinished backfill to resume")
        resuming = resumable and not self.opt.fresh
        if resuming:
            self._resume_counters(saved)
        else:
            p.run_id = uuid.uuid4().hex[:12]
            p.started = time.time()
        self.lanes, changed = self.topology.lanes(saved if resuming else {})
        if changed:
            p.message = RESCAN_CLUSTER_MESSAGE if self.cluster else RESCAN_MESSAGE
        if not self.cluster:
            p.cursor = self.lanes[0].cursor
        self.tally.sync(self.lanes)
        now = f"{time.time():.3f}"
        pipe = self.client.pipeline(transaction=not self.cluster)
        if p.run_id != saved.get("run_id"):
            pipe.delete(k.state)
        pipe.hset(k.state, mapping=fields({
            "run_id": p.run_id, "status": "running", "mode": "execute", "owner": owner_id(),
            "token": self.token, "started": f"{p.started:.3f}", "heartbeat": now,
            "updated": now, "workspaces": ",".join(sorted(self._workspaces)),
            "rps": str(self.opt.rps), "batch": str(self.opt.batch),
            "max_keys": str(self.opt.max_keys or ""), "workers": str(self.opt.workers),
            "heartbeat_s": f"{HEARTBEAT_S:g}", **self.record.limits(),
            "cursor": str(p.cursor), "message": p.message, "finished": "",
            **self.topology.state_fields(self.lanes),
        }))
        pipe.persist(k.state)
        pipe.delete(k.control)
        pipe.delete(k.tune)
        pipe.execute()

    def run(self) -> int:
        """Run to completion, a stop, --max-keys, or lost Redis; return the exit code."""
        p = self.progress
        self._retrying(self._preflight, "preflight")
        if self.opt.execute:
            saved = self._retrying(self.lease.acquire, "lease")
            try:
                self._retrying(lambda: self._start_state(saved), "start")
                self._retrying(self.topology.prepare, "script load")
            except BaseException:
                self.lease.release()
                raise
            self.lease.start_heartbeat(self.topology.renew, self.record.beat)
        else:
            p.run_id = "dry-run"
            p.started = time.time()
            self.lanes, _ = self._retrying(lambda: self.topology.lanes({}), "topology")
        self.on_event("start", p)
        try:
            return self._walk_all()
        except LeaseLostError:
            verdict = self._evictions_now()  # a volatile-* policy can evict the lease itself
            if verdict is None:
                raise
            return self._stopped_by_guard(verdict)
        except RedisUnavailableError as exc:
            p.status, p.message = "lost", str(exc)
            self.on_event("lost", p)
            raise
        finally:
            self._close(p)

    def _close(self, p: BackfillProgress) -> None:
        for lane in self.lanes:
            lane.close()
        self.topology.close()
        if self.opt.execute:
            try:
                if p.status == "lost" and not self.lease.lost.is_set():
                    self.record.write({"status": "lost", "message": p.message})
            except (redis.RedisError, OSError):
                pass  # Redis is gone, or the run is not ours any more: nothing to record
            with contextlib.suppress(redis.RedisError, OSError):
                self.lease.release()

    def _walk_all(self) -> int:
        """Walk every lane to its end; a changed server anywhere walks them all again,
        since its cursor means nothing on the new one and unpersisted copies are gone."""
        self.tally.start()
        while True:
            try:
                outcome = self._run_lanes()
                if outcome is not None:
                    return outcome
                if (self._retrying(lambda: self.topology.unchanged(self.lanes), "final check")
                        and self._retrying(self._replicated, "final check")):
                    return self._final_guard() or self._finish()
                raise Rescan("final check")
            except Rescan:
                self._retrying(self._rescan, "rescan")

    def _replicated(self) -> bool:
        """Standalone with replicas: every copy reached them before `completed` is written.
        Behind a failover (Sentinel, a managed endpoint) the old primary keeps acknowledging
        writes for a moment after its replica was promoted; WAIT tells them apart."""
        base = self.guards.baselines.get("0")
        if self.cluster or base is None or base.replicas == 0:
            return True
        acked = int(self.client.execute_command("WAIT", base.replicas, 2000))
        if acked >= base.replicas:
            return True
        self.progress.message = (f"{acked} of {base.replicas} replicas acknowledged the last "
                                 "copies (a failover?): walking again")
        return False

    def _rescan(self) -> None:
        for lane in self.lanes:
            lane.close()
        self.lanes, _ = self.topology.lanes({})
        message = RESCAN_CLUSTER_MESSAGE if self.cluster else RESCAN_MESSAGE
        self.progress.message = message
        self.progress.cursor = 0
        self.tally.sync(self.lanes)
        self.on_event("retry", self.progress)
        if self.opt.execute:
            saved = self.topology.state_fields(self.lanes)
            saved.update({"message": message, "updated": f"{time.time():.3f}"})
            self.record.write(saved)

    def _run_lanes(self) -> int | None:
        """Walk the unfinished lanes, --workers at a time; None when every lane is done."""
        pending: queue.Queue[Lane] = queue.Queue()
        for lane in self.lanes:
            if not lane.done:
                pending.put(lane)
        results: list[int] = []
        errors: list[BaseException] = []
        self._halt.clear()

        def work() -> None:
            while not self._halt.is_set():
                try:
                    lane = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    code = self._walk(lane)
                except BaseException as exc:
                    errors.append(exc)
                    self._halt.set()
                    return
                if code is not None:
                    results.append(code)
                    self._halt.set()
                    return

        workers = min(self.opt.workers, max(1, pending.qsize()))
        if workers == 1:
            work()
        else:
            threads = [threading.Thread(target=work, name=f"relayctl-backfill-w{i}",
                                        daemon=True) for i in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        others = [e for e in errors if not isinstance(e, Rescan)]
        if others or errors:
            raise (others or errors)[0]
        if results:
            return min(results, key=lambda c: (c != EXIT_STOPPED, c))
        return None

    def _walk(self, lane: Lane) -> int | None:
        """The walk loop: one lane to its end; an exit code if the run must stop early."""
        prefetch: Prefetcher[Batch] = Prefetcher(
            lambda cursor: self._retrying(lambda: lane.read(cursor), "scan"), lane.cursor,
            lambda batch: batch.cursor)
        control = as_str(self._retrying(lambda: self.client.get(self.keys.control), "control"))
        throttle = 0.0
        try:
            while not lane.done:
                if self._halt.is_set():
                    return None
                code = self._signalled()
                if code is not None:
                    return code
                batch_t0 = time.perf_counter()
                batch = prefetch.next()
                code, control = self._obey(control)
                if code is not None:
                    return code
                code = self._guard(lane, batch.sample)
                if code is not None:
                    return code
                items, skips, scanned = self.tally.classify(batch)
                codes, control = self._retrying(
                    partial(lane.apply, batch, items, skips), "copy")
                with self._lock:
                    self.tally.account(batch, items, codes, skips, scanned)
                    lane.cursor, lane.done = batch.cursor, batch.cursor == 0
                    self.tally.observe(batch, time.perf_counter() - batch_t0, self.lanes)
                    over = (self.opt.max_keys is not None and not lane.done
                            and self.tally.scanned_this_run >= self.opt.max_keys)
                if over:
                    self.record.status("partial",
                                     f"--max-keys {self.opt.max_keys} reached; resumable")
                    self.on_event("partial", self.progress)
                    return EXIT_DONE
                if not lane.done:
                    throttle = self._throttle(throttle, batch.scan_ms)
                    if self.opt.max_latency_ms is not None:
                        self.throttle.latency(lane.name, throttle, batch.scan_ms,
                                              self.opt.max_latency_ms)
                    code = self._pace(throttle)
                    if code is not None:
                        return code
        finally:
            prefetch.close()
        return None

    def _pace(self, throttle: float) -> int | None:
        """Wait out the latency backoff and the --rps schedule in steps of SAMPLE_EVERY_S:
        stop, pause, a retune and signals act within a step, not after the whole wait (at
        --rps 5 with --batch 500 that is 100 s); the schedule is re-read after a retune."""
        until = time.monotonic() + throttle
        while True:
            left = max(until - time.monotonic(), self.tally.pace())
            if left <= 0:
                return None
            self.sleep(min(left, SAMPLE_EVERY_S))
            if left > SAMPLE_EVERY_S:
                code = self._interrupt()
                if code is not None:
                    return code

    def _guard(self, lane: Lane, sample: ServerSample | None) -> int | None:
        """Judge the lane's server before its next copy; hold while throttled; an exit code
        when a guard (or the operator, while held) stops the run.

        On a cluster every lane copies into every shard, so a shard that is full holds all
        lanes, and the shards of lanes already done are still sampled by the others."""
        code = self._hold(lane, self.guards.judge(lane.name, sample) if sample is not None
                          else GO_VERDICT)
        if sample is not None and sample.full:
            lane.watch.clock.interval = self.guards.sample_interval(lane.name)
        if code is not None or not self.cluster:
            return code
        for other in self.lanes:
            if other is not lane and other.done and other.watch.clock.due():
                probed = self._probe_same_server(other)
                if probed is not None:
                    code = self._hold(other, self.guards.judge(other.name, probed))
                    if code is not None:
                        return code
        while self.throttle.held_elsewhere(lane.name):
            self.sleep(SAMPLE_EVERY_S)
            code = self._interrupt()
            if code is not None:
                return code
        return None

    def _hold(self, lane: Lane, verdict: Verdict) -> int | None:
        if verdict.action == GO_VERDICT.action and self.opt.wait_replicas:
            verdict = self._replicas_acked()
        while verdict.action == THROTTLE:
            if verdict.reason == "replica_wait":
                held = self.throttle.hold(lane.name, verdict, lambda: None, self._interrupt)
                verdict = held if held.action == INTERRUPTED else self._replicas_acked()
            else:
                verdict = self.throttle.hold(lane.name, verdict,
                                             partial(self._probe_same_server, lane),
                                             self._interrupt)
        if verdict.action == INTERRUPTED:
            return verdict.exit_code
        if verdict.action == STOP:
            return self._stopped_by_guard(verdict)
        return None

    def _probe_same_server(self, lane: Lane) -> ServerSample | None:
        """A sample while held; a new server behind the lane (failover) means a rescan."""
        sample = self._retrying(lane.probe, "guard")
        if sample is not None and lane.server and sample.run_id != lane.server:
            self.throttle.release(lane.name)
            raise Rescan(f"lane {lane.name}: the server changed while throttled")
        return sample

    def _replicas_acked(self) -> Verdict:
        """--wait-replicas: did N replicas acknowledge every write so far?"""
        n = self.opt.wait_replicas
        acked = int(self._retrying(lambda: self.client.execute_command("WAIT", n, 1000),
                                   "wait replicas"))
        if acked >= n:
            return GO_VERDICT
        return Verdict(THROTTLE, "replica_wait", f"{acked} of {n} replicas acknowledged "
                       "the last batch (--wait-replicas)", str(acked), str(n))

    def _interrupt(self) -> int | None:
        """While held by a guard: signals, a lost lease and stop/pause still act."""
        code = self._signalled()
        if code is not None:
            return code
        control = self._retrying(lambda: self.client.get(self.keys.control), "control")
        return self._obey(as_str(control))[0]

    def _obey(self, control: str) -> tuple[int | None, str]:
        """The operator's word between batches: pause waits (the lease held), stop stops, a
        retune applies; returns the exit code (or None) and the control value now."""
        if control == "pause":
            with self._lock:
                control = self._wait_while_paused()
        if control == "stop":
            return self._stopped_by_operator(), control
        self.tuner.poll()
        return None, control

    def _stopped_by_guard(self, verdict: Verdict) -> int:
        status = "failed" if verdict.exit_code == ExitCode.ERRORS else "stopped"
        if verdict.reason == "evictions":
            self.record.status(status, verdict.message, stop_reason=verdict.reason,
                               evictions_seen="1")
        else:
            self.record.status(status, verdict.message, stop_reason=verdict.reason)
        self.on_event("stopped", self.progress)
        return verdict.exit_code

    def _final_guard(self) -> int | None:
        """A run during which Redis evicted keys never ends `completed`."""
        for lane in self.lanes:
            sample = self._retrying(lane.probe, "final check")
            if sample is None:
                continue
            verdict = self.guards.judge(lane.name, sample)
            if verdict.action == STOP and verdict.reason == "evictions":
                return self._stopped_by_guard(verdict)
        return None

    def _throttle(self, throttle: float, scan_ms: float) -> float:
        """--max-latency-ms: back off exponentially while SCAN is slow, recover by halves."""
        if self.opt.max_latency_ms is None:
            return throttle
        if scan_ms > self.opt.max_latency_ms:
            throttle = min(max(throttle * 2, 0.01), 5.0)
        else:
            throttle = throttle / 2 if throttle > 0.001 else 0.0
        self.progress.throttle_s = throttle
        return throttle

    def _signalled(self) -> int | None:
        """Between batches: SIGINT/SIGTERM saves a stopped status (exit 3); a lost lease
        raises, unless Redis evicted it (a volatile-* policy evicts keys with a TTL, the
        lease included): then the evictions are the news, and the run fails with them."""
        if self.lease.lost.is_set():
            verdict = self._evictions_now()
            if verdict is not None:
                return self._stopped_by_guard(verdict)
            raise self._lease_lost()
        if self._stop_signal.is_set():
            self.record.status("stopped", "stopped by signal; resumable")
            self.on_event("stopped", self.progress)
            return EXIT_STOPPED
        return None

    def _evictions_now(self) -> Verdict | None:
        """An evictions STOP verdict when a lane's server evicted keys since the run began
        and no other engine owns the run (its state still carries this engine's token)."""
        try:
            if as_str(self.client.hget(self.keys.state, "token")) != self.token:
                return None
            for lane in self.lanes:
                sample = lane.probe()
                verdict = self.guards.judge(lane.name, sample) if sample else GO_VERDICT
                if verdict.action == STOP and verdict.reason == "evictions":
                    return verdict
        except (redis.RedisError, OSError):
            return None
        return None

    def _lease_lost(self) -> LeaseLostError:
        try:
            holder = self.client.get(self.keys.lease)
        except (redis.RedisError, OSError):
            holder = None
        return LeaseLostError(f"backfill lease lost to {as_str(holder) or 'nobody (it expired)'}"
                              "; this engine stops and writes nothing more")

    def _stopped_by_operator(self) -> int:
        self.record.status("stopped", "stopped by operator; resumable")
        self.on_event("stopped", self.progress)
        return EXIT_STOPPED

    def _wait_while_paused(self) -> str:
        """Hold the lease and wait for resume or stop; returns the new control value."""
        live = self._retrying(lambda: self.client.get(self.keys.control), "pause")
        if live != "pause":
            return str(live or "run")
        self.record.status("paused", "paused by operator")
        self.on_event("paused", self.progress)
        while True:
            if self._stop_signal.is_set():
                return "stop"
            if self.lease.lost.is_set():
                raise self._lease_lost()
            control = self._retrying(lambda: self.client.get(self.keys.control), "pause")
            if control != "pause":
                if control != "stop":
                    self.record.status("running", "resumed by operator")
                    self.on_event("resumed", self.progress)
                return str(control or "run")
            self.sleep(0.2)

    def _finish(self) -> int:
        p = self.progress
        p.fraction = 1.0
        errors = p.errors
        # a run resumed after its evictions stop is done, never clean: the evicted keys may
        # have held jobs, which only `relayctl verify` can rule out
        flawed = errors or self.evictions_seen
        message = "; ".join(filter(None, (
            f"{errors} errors" if errors else "",
            "keys were evicted during this run: run `relayctl verify`"
            if self.evictions_seen else ""))) or "done"
        self.record.status("completed_with_errors" if flawed else "completed", message,
                           finished=True)
        self.on_event("done", p)
        return EXIT_ERRORS if flawed else EXIT_DONE
