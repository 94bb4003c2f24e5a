"""The rollout as data: the seed checklist's pre-deployment section, six steps and rollbacks.

Every text below is taken from `seeds/000_…` (the user's checklist) or `seeds/003_…` (the
release notes). Items marked `gate=` are machine-checked by `relayctl.core.gates`; the rest
are manual and are checked off in relay:checklist with actor and time. Nothing here is
invented except where a comment says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    gate: str | None = None

    @property
    def manual(self) -> bool:
        return self.gate is None


@dataclass(frozen=True)
class Trigger:
    """A rollback trigger: when its gate fails, the named procedure applies."""

    text: str
    gate: str | None
    procedure: str | None


@dataclass(frozen=True)
class Procedure:
    id: str
    title: str
    flags: dict[str, bool]
    steps: tuple[str, ...]
    stop_backfill: bool = False
    source: str = "seeds/000"


@dataclass(frozen=True)
class Phase:
    number: int
    id: str
    title: str
    window: str
    goals: tuple[str, ...] = ()
    prerequisites: tuple[Item, ...] = ()
    target_flags: dict[str, bool] | None = None
    validation: tuple[Item, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    rollback: str | None = None
    expected: tuple[str, ...] = ()
    cleanup: tuple[Item, ...] = ()

    @property
    def items(self) -> tuple[Item, ...]:
        return self.prerequisites + self.validation + self.cleanup

    @property
    def gates(self) -> tuple[str, ...]:
        """Gate ids this phase needs to advance (prerequisites and validation)."""
        seen: dict[str, None] = {}
        for item in self.prerequisites + self.validation:
            if item.gate:
                seen.setdefault(item.gate)
        return tuple(seen)

    @property
    def trigger_gates(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.gate for t in self.triggers if t.gate))


PROCEDURES: dict[str, Procedure] = {p.id: p for p in (
    Procedure(
        id="read-routing",
        title="If Read-Routing Fails (Step 1 Rollback)",
        flags={PREFERS_NEW: False, FALLBACK_OLD: False},
        steps=(
            "Set READ_PREFERS_NEW=off",
            "Set READ_FALLBACK_OLD=off (explicit disable)",
            "Restart webapi pods (not needed with live flags: instances pick the change up "
            "within about a second; check fleet convergence)",
            "Monitor: Error rates should drop immediately",
            "Investigate: Check if new schema keys are corrupted",
        ),
    ),
    Procedure(
        id="dual-write",
        title="If Dual-Write Fails (Step 3 Rollback)",
        flags={DUAL_WRITE: False},
        steps=(
            "Set AI_JOBS_NEW_SCHEMA=off (stop new writes)",
            "Restart webapi pods (live flags: check fleet convergence instead)",
            "Monitor: Error rates should drop within minutes",
            "Investigate: Check Redis disk space, network, connections",
            "Once fixed: Re-enable AI_JOBS_NEW_SCHEMA",
        ),
    ),
    Procedure(
        id="fallback-disable",
        title="If Fallback Disable Fails (Step 5 Rollback)",
        flags={FALLBACK_OLD: True},
        steps=(
            "Set READ_FALLBACK_OLD=on (enable fallback)",
            "Restart webapi pods (live flags: check fleet convergence instead)",
            "Monitor: 404 errors should drop immediately",
            "Investigate: Check if old schema jobs are missing from new schema",
            "Resume backfill: Run backfill again before re-disabling fallback",
        ),
    ),
    Procedure(
        id="emergency",
        title="Emergency Rollback (Any Step): workspace isolation breach",
        flags={FALLBACK_OLD: False, DUAL_WRITE: False},
        steps=(
            "Set READ_FALLBACK_OLD=off (force new schema only)",
            "Set AI_JOBS_NEW_SCHEMA=off (stop new writes)",
            "Alert security team",
            "Do NOT continue rollout until breach investigated",
        ),
    ),
    Procedure(
        id="backfill",
        title="Immediate Revert (if backfill fails)",
        flags={PREFERS_NEW: False},
        steps=(
            "Stop backfill script",
            "Revert reads to old schema: READ_PREFERS_NEW=off",
            "Restart service (live flags: check fleet convergence instead)",
            "All reads immediately revert to old schema; zero data loss",
        ),
        stop_backfill=True,
        source="seeds/003",
    ),
)}

PRE_DEPLOYMENT = Phase(
    number=0, id="pre-deployment", title="Pre-deployment verification", window="before Step 1",
    prerequisites=(
        Item("env-tls", "Verify REDIS_URL uses rediss:// in production (TLS required)",
             gate="redis_tls"),
        Item("env-dual-off", "Verify AI_JOBS_NEW_SCHEMA=off (start with reads only)"),
        Item("env-prefers-on", "Verify READ_PREFERS_NEW=on (read-routing enabled)"),
        Item("env-fallback-on", "Verify READ_FALLBACK_OLD=on (fallback enabled during migration)"),
        Item("env-example", "All env vars in .env.example updated"),
        Item("sec-secrets", "No hardcoded secrets in the deployed commit"),
        Item("sec-traces", "No stack traces exposed to clients"),
        Item("sec-workspace", "Workspace_id validated before use"),
        Item("sec-cursor", "Cursor format safe"),
        Item("sec-telemetry", "Telemetry sanitized (no PII/tokens)"),
        Item("tests-pass", "Test suite passing, including read-routing, dual-write and "
                           "workspace isolation tests, no regressions"),
        Item("redis-schemas", "Both ai:jobs:{job_id} (old) and ai:job:{ws}:{job_id} (new) "
                              "schemas present", gate="new_keys_present"),
        Item("redis-no-migration", "No database schema migrations required"),
        Item("redis-idem-prefix", "Idempotency key prefix ai:idempotency:{ws}:{request_id} "
                                  "reserved"),
    ),
)

PHASES: tuple[Phase, ...] = (
    PRE_DEPLOYMENT,
    Phase(
        number=1, id="read-routing", title="Read-Routing Activation", window="Week 1",
        prerequisites=(
            Item("p1-old-schema", "All jobs already written in old schema (ai:jobs:{job_id})"),
            Item("p1-new-present", "New schema keys present for recent jobs (from Phase 1 "
                                   "dual-write)", gate="new_keys_present"),
        ),
        target_flags={DUAL_WRITE: False, PREFERS_NEW: True, FALLBACK_OLD: True},
        validation=(
            Item("p1-deploy", "Deploy the read-routing release", gate="flags_converged"),
            Item("p1-new-share", "relay_job_read_path_total{path=\"new\"}: should increase "
                                 "to 60-80%", gate="new_read_share_60"),
            Item("p1-old-share", "relay_job_read_path_total{path=\"old\"}: should decrease as "
                                 "new keys accumulate"),
            Item("p1-list-path", "relay_job_list_read_path_total{path=\"new|mixed\"}: should "
                                 "track SCAN efficiency"),
            Item("p1-404", "Verify no increase in 404 errors for /ai/jobs/* endpoints",
                 gate="miss_increase"),
            Item("p1-isolation", "Spot-check workspace isolation: confirm same workspace_id in "
                                 "auth and job", gate="workspace_mismatch"),
        ),
        triggers=(
            Trigger("If read path metrics show <50% new schema, something is wrong with "
                    "dual-write", "new_read_share_50", "read-routing"),
            Trigger("If 404 errors increase >10%, fallback logic may have issue",
                    "miss_increase", "read-routing"),
            Trigger("If any cross-workspace access detected, rollback immediately",
                    "workspace_mismatch", "emergency"),
        ),
        rollback="read-routing",
    ),
    Phase(
        number=2, id="stabilization", title="Monitor Stabilization", window="Week 2-3",
        goals=(
            "Ensure read-routing stable at >80% new schema coverage",
            "Verify no data corruption or consistency issues",
            "Confirm telemetry accurate",
        ),
        validation=(
            Item("p2-error-rate", "Check error rate dashboard (should remain flat)",
                 gate="error_rate"),
            Item("p2-read-share", "Check read path distribution (target >80% new schema)",
                 gate="new_read_share_80"),
            Item("p2-job-count", "Check job count by workspace (confirm no data loss)",
                 gate="census_fresh"),
            Item("p2-latency", "Check latency metrics (new schema SCAN vs old schema SCAN)"),
            Item("p2-corruption", "No data corruption (\"Failed to deserialize\" errors)",
                 gate="deserialize_errors"),
        ),
        expected=(
            "New schema reads at 85-95% (depends on job age distribution)",
            "Mixed reads at 5-15% (old jobs being backfilled or accessed)",
            "No missed reads (query all jobs successfully)",
        ),
        triggers=(
            Trigger("Read-routing below 60% new for more than an hour (alert)",
                    "new_read_share_60", "read-routing"),
            Trigger("If any cross-workspace access detected, rollback immediately",
                    "workspace_mismatch", "emergency"),
        ),
        rollback="read-routing",
    ),
    Phase(
        number=3, id="dual-write", title="Dual-Write Activation", window="Week 3-4",
        prerequisites=(
            Item("p3-stable-week", "Read-routing stable for 1+ weeks",
                 gate="read_routing_days_7"),
            Item("p3-share", "Read path metrics confirm >80% new schema",
                 gate="new_read_share_80"),
            Item("p3-no-404", "No 404 errors or corruption detected", gate="miss_increase"),
            # not in the seeds: on Redis Cluster a dual-write can only be atomic per slot
            Item("p3-slot-layout", "On Redis Cluster: new record and workspace index share a "
                                   "hash tag ({<ws>}), so each new-schema write is atomic",
                 gate="slot_layout"),
            # not in the seeds: dual-write and the backfill double the job data
            Item("p3-headroom", "Redis has the memory for a second copy of every job",
                 gate="memory_headroom"),
            Item("p3-policy", "maxmemory-policy cannot evict a job during the migration",
                 gate="eviction_policy_safe"),
        ),
        target_flags={DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: True},
        validation=(
            Item("p3-deploy", "Deploy with AI_JOBS_NEW_SCHEMA=on", gate="flags_converged"),
            Item("p3-dw-success", "relay_dual_write_attempt_total{result=\"succeeded\"}: "
                                  "should be ~100%", gate="dual_write_success"),
            Item("p3-dw-failed", "relay_dual_write_attempt_total{result=\"failed\"}: should "
                                 "be <1%", gate="dual_write_failure_1"),
            Item("p3-memory", "Redis memory usage: should increase (now storing keys twice)",
                 gate="redis_memory"),
            Item("p3-both", "Verify new jobs appear in both schemas (spot-check: relayctl "
                            "verify --sample N counts legacy jobs still missing a copy)"),
            Item("p3-growing", "Spot-check: new schema growing (> 1000 keys)",
                 gate="new_keys_1000"),
            Item("p3-no-evictions", "No key evicted since dual-write began",
                 gate="no_evictions_since_phase"),
            Item("p3-replicas", "Replicas keep up with the doubled writes",
                 gate="replicas_in_sync"),
        ),
        triggers=(
            Trigger("If dual-write failure rate >5%, disable AI_JOBS_NEW_SCHEMA",
                    "dual_write_failure_5", "dual-write"),
            Trigger("If Redis memory spike >50%, consider increasing capacity",
                    "redis_memory", None),
            Trigger("If any write errors, investigate atomicity", "dual_write_failure_1", None),
            Trigger("If any cross-workspace access detected, rollback immediately",
                    "workspace_mismatch", "emergency"),
        ),
        rollback="dual-write",
    ),
    Phase(
        number=4, id="backfill", title="Backfill Campaign", window="Week 4-6",
        goals=(
            "Migrate remaining old schema jobs to new schema",
            "Run in background to avoid impacting prod traffic",
        ),
        prerequisites=(
            Item("p4-dual-on", "Dual-write on (the backfill refuses to run without it)",
                 gate="dual_write_on"),
            Item("p4-headroom", "Redis has the memory for the rest of the copy (the backfill "
                                "preflight refuses otherwise)", gate="memory_headroom"),
            Item("p4-policy", "maxmemory-policy cannot evict a job", gate="eviction_policy_safe"),
            Item("p4-replicas", "Replicas in sync before the copy starts",
                 gate="replicas_in_sync"),
        ),
        validation=(
            Item("p4-implement", "Backfill job implemented (relayctl backfill)"),
            Item("p4-progress", "Monitor backfill progress (jobs migrated per hour)",
                 gate="backfill_complete"),
            Item("p4-low-traffic", "Run during low-traffic windows"),
            Item("p4-ws", "Verify workspace_id consistency during backfill",
                 gate="verify_clean"),
            Item("p4-orphans", "No index entries of expired jobs (verify --repair removes "
                               "them)", gate="index_orphans"),
            Item("p4-counts", "Count old and new schema keys: counts should be approximately "
                              "equal", gate="census_equal"),
            Item("p4-98", "98%+ of queries should hit new schema", gate="new_read_share_98"),
            Item("p4-errors", "No backfill errors in logs", gate="backfill_errors"),
            Item("p4-no-evictions", "No key evicted during the backfill",
                 gate="no_evictions_since_phase"),
        ),
        triggers=(
            Trigger("Backfill errors > 0 for > 5 min (release notes alert: investigate)",
                    "backfill_errors", None),
            Trigger("Backfill failing: stop it and revert reads to the old schema "
                    "(release notes immediate revert)", "backfill_errors", "backfill"),
        ),
        rollback="backfill",
    ),
    Phase(
        number=5, id="fallback-off", title="Disable Fallback", window="Week 6-7",
        prerequisites=(
            Item("p5-98-jobs", "98%+ of jobs in new schema", gate="census_coverage_98"),
            Item("p5-old-reads", "<2% of reads still hitting old schema", gate="old_read_share_2"),
            Item("p5-dw-2w", "Dual-write running smoothly for 2+ weeks",
                 gate="dual_write_days_14"),
        ),
        target_flags={DUAL_WRITE: True, PREFERS_NEW: True, FALLBACK_OLD: False},
        validation=(
            Item("p5-deploy", "Deploy with READ_FALLBACK_OLD=off", gate="flags_converged"),
            Item("p5-404", "Monitor 404 errors (should remain low)", gate="miss_increase"),
            Item("p5-all-new", "Monitor read path metrics (should all show \"new\")",
                 gate="old_read_share_0"),
            Item("p5-leaks", "Verify no cross-workspace data leaks", gate="workspace_mismatch"),
            Item("p5-perf", "Performance should improve (no SCAN fallback)"),
        ),
        triggers=(
            Trigger("If 404 errors spike >10%, enable fallback immediately", "miss_increase",
                    "fallback-disable"),
            Trigger("If any data loss detected, enable fallback and investigate",
                    "verify_clean", "fallback-disable"),
            Trigger("If any cross-workspace access detected, rollback immediately",
                    "workspace_mismatch", "emergency"),
        ),
        rollback="fallback-disable",
    ),
    Phase(
        number=6, id="archive", title="Archive Old Schema", window="Week 8+",
        prerequisites=(
            Item("p6-month", "1+ month since fallback disabled", gate="fallback_off_days_30"),
            Item("p6-zero-old", "Zero queries hitting old schema", gate="old_read_share_0"),
            Item("p6-retention", "Data retention policies met"),
            # not in the seeds: delete removes only what a fresh clean verify vouches for
            Item("p6-verify-fresh", "Fresh clean full verify after the last flag change",
                 gate="verify_fresh"),
        ),
        validation=(
            Item("p6-export", "Generate export of old schema (backup): relayctl archive export"),
            Item("p6-delete", "Delete old schema keys: relayctl archive delete --from FILE "
                              "(replaces the checklist's KEYS | xargs del)"),
            Item("p6-intact", "Verify new schema intact", gate="census_fresh"),
            Item("p6-404", "Monitor for 404 errors (should remain zero)", gate="miss_increase"),
        ),
        cleanup=(
            Item("p6-code-fallback", "Remove READ_FALLBACK_OLD from code (set default to "
                                     "false/disabled)"),
            Item("p6-code-dual", "Remove dual-write code (ENABLE_NEW_SCHEMA not needed)"),
            Item("p6-code-schema", "Simplify schema handling (new schema only)"),
        ),
        triggers=(
            Trigger("404 errors after deleting old keys: restore the archive",
                    "miss_increase", None),
        ),
    ),
)

LAST_PHASE = PHASES[-1].number


def phase(number: int) -> Phase:
    for p in PHASES:
        if p.number == number:
            return p
    raise KeyError(number)


def find_item(item_id: str) -> tuple[Phase, Item] | None:
    for p in PHASES:
        for item in p.items:
            if item.id == item_id:
                return p, item
    return None

