"""What a run counted: per batch, the records to copy and the skips by reason; the counters,
the metrics, rate and ETA, checkpoints, and the shared --rps schedule of every lane."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from relayctl.core.backfill.lanes import Batch, CopyItem, Lane, Skips
from relayctl.core.backfill.progress import CHECKPOINT_EVERY, BackfillProgress, scan_fraction
from relayctl.core.keys import KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.timestamps import iso_to_ms
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id
from relayctl.core.verified import escape

MAX_EXAMPLES = 20
EXISTING = ("e", "i", "h", "b")  # the copy existed: as it was, indexed, healed, both


class Tally:
    def __init__(self, progress: BackfillProgress, metrics: Metrics, schema: KeySchema,
                 workspaces: frozenset[str], *, cluster: bool, rps: Callable[[], float],
                 on_event: Callable[[str, BackfillProgress], None]) -> None:
        self.progress = progress
        self.metrics = metrics
        self.schema = schema
        self.workspaces = workspaces
        self.cluster = cluster
        self.rps = rps
        self.on_event = on_event
        self.scanned_this_run = 0
        self._lock = threading.RLock()
        self._t_start = time.monotonic()
        self._paced = (self._t_start, 0)  # --rps schedule origin: (time, keys scanned)
        self._next_checkpoint = 0
        self._last_event = 0.0

    def start(self) -> None:
        """The run's clock and --rps schedule start now; checkpoints continue a resume's."""
        self._t_start = time.monotonic()
        self._paced = (self._t_start, self.scanned_this_run)
        self._next_checkpoint = ((self.progress.scanned // CHECKPOINT_EVERY + 1)
                                 * CHECKPOINT_EVERY)

    def repace(self) -> None:
        """A new --rps applies from now (a retune)."""
        with self._lock:
            self._paced = (time.monotonic(), self.scanned_this_run)

    def classify(self, batch: Batch) -> tuple[list[CopyItem], Skips, Counter[str]]:
        """(key, job_id, ws, index score) to copy; skips by reason; scanned by label."""
        items: list[CopyItem] = []
        skips = Skips()
        scanned: Counter[str] = Counter()
        label = self.metrics.label
        if batch.undecodable:
            lbl = label(None)
            scanned[lbl] += len(batch.undecodable)
            skips.by_label[("invalid", lbl)] += len(batch.undecodable)
            room = MAX_EXAMPLES - len(self.progress.invalid_examples)
            self.progress.invalid_examples += [escape(k) for k in batch.undecodable[:room]]
        for key, (ws, job_id, enqueued_at) in zip(batch.keys, batch.heads, strict=True):
            lbl = label(ws) if is_valid_workspace_id(ws) else label(None)
            scanned[lbl] += 1
            if (not is_valid_workspace_id(ws) or not is_valid_job_id(job_id)
                    or self.schema.old_key(job_id) != key):
                skips.by_label[("invalid", lbl)] += 1
            elif self.workspaces and ws not in self.workspaces:
                skips.by_label[("filtered", lbl)] += 1
            else:
                # enqueued_at never changes, so the score computed here (off the Redis
                # core) is the one the copy step would compute
                items.append((key, job_id, ws, iso_to_ms(enqueued_at)))
        return items, skips, scanned

    def account(self, batch: Batch, items: list[CopyItem], codes: str, skips: Skips,
                 scanned: Counter[str]) -> None:
        p, m = self.progress, self.metrics
        label = m.label
        p.cursor = batch.cursor
        p.scanned += batch.scanned
        for lbl, n in scanned.items():
            m.inc(m.backfill_scanned, lbl, amount=n)
        for (reason, lbl), n in skips.by_label.items():
            p.skipped[reason] += n
            m.inc(m.backfill_skipped, lbl, reason, amount=n)
        outcomes = Counter((code, label(ws)) for (_k, _j, ws, _s), code in
                           zip(items, codes, strict=True))
        for (code, lbl), n in outcomes.items():
            if code == "m":
                p.migrated += n
                m.inc(m.backfill_migrated, lbl, amount=n)
            elif code in EXISTING:
                p.skipped["exists"] += n
                m.inc(m.backfill_skipped, lbl, "exists", amount=n)
                if code in ("i", "b"):
                    p.indexed += n
                    m.inc(m.backfill_healed, "indexed", amount=n)
                if code in ("h", "b"):
                    p.healed += n
                    m.inc(m.backfill_healed, "healed", amount=n)
            elif code == "g":
                p.skipped["invalid"] += n
                m.inc(m.backfill_skipped, lbl, "invalid", amount=n)
            else:
                p.skipped["error"] += n
                m.inc(m.backfill_errors, lbl, amount=n)

    def sync(self, lanes: list[Lane]) -> None:
        p = self.progress
        if self.cluster:
            p.cursors = {lane.name: lane.cursor for lane in lanes}
            p.shards_done = sum(lane.done for lane in lanes)
        if lanes:
            p.fraction = sum(1.0 if lane.done else scan_fraction(lane.cursor)
                             for lane in lanes) / len(lanes)

    def observe(self, batch: Batch, duration: float, lanes: list[Lane]) -> None:
        """Rate, ETA, the duration metric and the listeners' events after a batch."""
        p = self.progress
        self.scanned_this_run += batch.scanned
        self.sync(lanes)
        self.metrics.observe(self.metrics.backfill_duration, duration)
        elapsed = time.monotonic() - self._t_start
        p.elapsed_s = elapsed
        p.rate = self.scanned_this_run / elapsed if elapsed > 0 else 0.0
        p.latency_ms = batch.scan_ms
        p.eta_s = (elapsed * (1 - p.fraction) / p.fraction) if p.fraction > 0 else None
        if p.scanned >= self._next_checkpoint:
            self._next_checkpoint = (p.scanned // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
            self.on_event("checkpoint", p)
        now = time.monotonic()
        if now - self._last_event >= 0.5:
            self._last_event = now
            self.on_event("progress", p)

    def pace(self) -> float:
        """Seconds to wait so all lanes together stay under --rps (a shared schedule)."""
        rps = self.rps()
        if rps <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            origin, done = self._paced
            ahead = (self.scanned_this_run - done) / rps - (now - origin)
            if ahead < 0:
                # behind schedule (paused, retrying, slow Redis): restart the schedule here
                # instead of bursting to catch up, so --rps stays a ceiling
                self._paced = (now, self.scanned_this_run)
            return max(ahead, 0.0)
