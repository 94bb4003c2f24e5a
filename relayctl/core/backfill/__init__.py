"""The backfill (SPEC §4): one walk loop over lanes, a standalone server being one lane and a
cluster one lane per shard. This package's modules, in the order a run uses them:

- `options`: what the operator asked; `state`: the run's keys and the steering commands;
- `lease`: one run at a time; `engine`: the walk loop; `lanes`: the strategies' protocols,
  implemented by `standalone` and `sharded`; `scripts`: the Lua steps;
- `progress`: what listeners see; `process`: starting an engine from the console.
"""

from relayctl.core.backfill.engine import (
    EXIT_DONE,
    EXIT_ERRORS,
    EXIT_STOPPED,
    RESCAN_CLUSTER_MESSAGE,
    RESCAN_MESSAGE,
    Backfill,
)
from relayctl.core.backfill.lanes import CopyItem
from relayctl.core.backfill.lease import LeaseLostError
from relayctl.core.backfill.options import BackfillOptions
from relayctl.core.backfill.process import engine_args, spawn_engine
from relayctl.core.backfill.progress import CHECKPOINT_EVERY, BackfillProgress, scan_fraction
from relayctl.core.backfill.scripts import COMMIT_SHARD, COPY_BATCH, READ_HEADS, RESTORE_INDEXED
from relayctl.core.backfill.state import (
    ACTIVE,
    CONTROL_ACTIONS,
    FINISHED,
    HEARTBEAT_S,
    LEASE_TTL_MS,
    REASONS,
    TUNABLE,
    UNFINISHED,
    BackfillKeys,
    RunHealth,
    iter_status_fields,
    lease_owner,
    owner_id,
    read_state,
    run_health,
    send_control,
    send_tune,
    state_json,
)
from relayctl.core.errors import UsageError

__all__ = [
    "ACTIVE",
    "CHECKPOINT_EVERY",
    "COMMIT_SHARD",
    "CONTROL_ACTIONS",
    "COPY_BATCH",
    "EXIT_DONE",
    "EXIT_ERRORS",
    "EXIT_STOPPED",
    "FINISHED",
    "HEARTBEAT_S",
    "LEASE_TTL_MS",
    "READ_HEADS",
    "REASONS",
    "RESCAN_CLUSTER_MESSAGE",
    "RESCAN_MESSAGE",
    "RESTORE_INDEXED",
    "TUNABLE",
    "UNFINISHED",
    "Backfill",
    "BackfillKeys",
    "BackfillOptions",
    "BackfillProgress",
    "CopyItem",
    "LeaseLostError",
    "RunHealth",
    "UsageError",
    "engine_args",
    "iter_status_fields",
    "lease_owner",
    "owner_id",
    "read_state",
    "run_health",
    "scan_fraction",
    "send_control",
    "send_tune",
    "spawn_engine",
    "state_json",
]
