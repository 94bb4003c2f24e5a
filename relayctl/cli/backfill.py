"""`relayctl backfill` (the engine in this process) and its status / pause / resume / stop."""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from relayctl.cli.common import Context, emit_json
from relayctl.core.errors import UsageError
from relayctl.core.exitcodes import ExitCode


@click.group(invoke_without_command=True)
@click.option("--dry-run", "dry_run", is_flag=True, help="Read and count only; write nothing.")
@click.option("--execute", is_flag=True, help="Copy legacy records to the new schema.")
@click.option("--workspace", "workspaces", multiple=True,
              help="Only this workspace (repeatable); others count as filtered.")
@click.option("--rps", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keys per second including skipped ones (0 = unlimited).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--max-keys", type=click.IntRange(min=1), default=None,
              help="Stop after this many keys; a later run resumes there.")
@click.option("--fresh", is_flag=True, help="Start over even if a run is unfinished.")
@click.option("--resume", is_flag=True, help="Require an unfinished run and continue it.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0.1), default=None,
              help="Slow down while Redis round trips exceed this.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the relay_backfill_* metrics on 127.0.0.1:PORT.")
@click.option("--force", is_flag=True, help="Execute even while dual-write is off.")
@click.option("--retry-for", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to retry a lost Redis before exiting 4.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Redis Cluster: walk this many shards in parallel.")
@click.option("--max-memory-pct", type=click.FloatRange(1, 100), default=85.0,
              show_default=True,
              help="Refuse a run projected past this share of maxmemory; throttle at it.")
@click.option("--critical-memory-pct", type=click.FloatRange(1, 100), default=95.0,
              show_default=True, help="Stop (exit 3, resumable) at this share of maxmemory.")
@click.option("--max-memory-bytes", type=click.IntRange(min=1), default=None,
              help="The memory limit to guard when the server's maxmemory is 0.")
@click.option("--allow-evicting-policy", is_flag=True,
              help="Run although maxmemory-policy can evict job keys.")
@click.option("--max-replica-lag-bytes", type=click.IntRange(min=1), default=None,
              help="Throttle while a replica lags more (default: half its soft "
                   "output-buffer limit, else 8 MiB).")
@click.option("--max-replica-lag-s", type=click.FloatRange(min=0.001), default=2.0,
              show_default=True, help="Throttle while a replica's last ack is older.")
@click.option("--wait-replicas", type=click.IntRange(0, 64), default=0, show_default=True,
              help="WAIT for this many replicas after each batch (synchronous copies).")
@click.option("--json", "as_json", is_flag=True, help="Only a final summary object.")
@click.option("--reason", default="started from the CLI", show_default=True,
              help="Recorded with the audited start of an --execute run.")
@click.pass_context
def backfill(ctx: click.Context, dry_run: bool, execute: bool, workspaces: tuple[str, ...],
             rps: float, batch: int, max_keys: int | None, fresh: bool, resume: bool,
             max_latency_ms: float | None, metrics_port: int | None, force: bool,
             retry_for: float, workers: int, max_memory_pct: float, critical_memory_pct: float,
             max_memory_bytes: int | None, allow_evicting_policy: bool,
             max_replica_lag_bytes: int | None, max_replica_lag_s: float, wait_replicas: int,
             as_json: bool, reason: str) -> None:
    """Copy legacy jobs to the workspace-scoped schema (resumable, steerable, one at a time).

    \b
    relayctl backfill --dry-run [--workspace WS ...] [--max-keys N]
    relayctl backfill --execute [--rps N] [--batch N] [--resume|--fresh] [--workers N]
    relayctl backfill status | pause | resume | stop | set
    """
    if ctx.invoked_subcommand is not None:
        return
    if dry_run == execute:
        raise UsageError("choose exactly one of --dry-run or --execute "
                         "(or a subcommand: status, pause, resume, stop)")
    from relayctl.cli.progress import BackfillView
    from relayctl.core.backfill import Backfill, BackfillOptions
    from relayctl.core.metrics import Metrics

    c: Context = ctx.obj
    options = BackfillOptions(
        execute=execute, workspaces=workspaces, rps=rps, batch=batch, max_keys=max_keys,
        fresh=fresh, resume=resume, max_latency_ms=max_latency_ms, force=force,
        retry_for_s=retry_for, workers=workers, max_memory_pct=max_memory_pct,
        critical_memory_pct=critical_memory_pct, max_memory_bytes=max_memory_bytes,
        allow_evicting_policy=allow_evicting_policy, max_replica_lag_bytes=max_replica_lag_bytes,
        max_replica_lag_s=max_replica_lag_s, wait_replicas=wait_replicas,
    )
    metrics = Metrics(labelled_workspaces=c.config.labelled_workspaces or workspaces)
    view = BackfillView(as_json=as_json)
    client = c.client()

    def on_event(kind: str, progress: object) -> None:
        # audited once the engine holds the lease (a refused start is not a start), whoever
        # started it: a shell, or the console (which passes its actor and reason)
        if kind == "start" and execute:
            from relayctl.core import audit

            audit.record(client, c.actor, "backfill.start", "backfill", "",
                         f"pid {os.getpid()} execute (run "
                         f"{getattr(progress, 'run_id', '?')})", reason)
        view.event(kind, progress)  # type: ignore[arg-type]

    engine = Backfill(client, options, schema=c.config.schema, metrics=metrics,
                      on_event=on_event)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: engine.request_stop())
    server = metrics.serve(metrics_port) if metrics_port is not None else None
    if server is not None and not as_json:
        click.echo(f"metrics: {server.url}", err=True)
    try:
        code = engine.run()
    finally:
        view.close()
        if server is not None:
            server.close()
    view.summary(engine.progress, c.redis_display)
    ctx.exit(code)


@backfill.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backfill_status(c: Context, as_json: bool) -> None:
    """The saved state of the current or last run (exit 1 when its engine is dead, 3 while
    paused or stopped)."""
    from relayctl.core.backfill import (
        iter_status_fields,
        lease_owner,
        read_state,
        run_health,
        state_json,
    )

    client = c.client()
    state = read_state(client)
    owner = lease_owner(client)
    health = run_health(state, owner is not None, time.time())  # heartbeats: wall clock
    # the lease token fences the engine's writes: never shown
    data = {"state": state_json(state),
            "engine_alive": owner is not None,
            "health": health.health, "detail": health.detail}
    if as_json:
        emit_json(data)
    elif not state:
        click.echo("no backfill has run")
    else:
        click.echo(f"{'health':>18}: {health.health.upper()}  {health.detail}".rstrip())
        for name, value in iter_status_fields(state):
            if name in ("rate", "eta_s") and not health.live:
                continue
            if name in ("started", "heartbeat", "updated", "finished"):
                value = _when(value)
            click.echo(f"{name:>18}: {value}")
        click.echo(f"{'engine':>18}: {'alive' if owner else 'not running'}")
    if health.dead:
        sys.exit(ExitCode.ERRORS)
    if state.get("status") in ("paused", "stopped", "partial"):
        sys.exit(ExitCode.STOPPED)


def _when(epoch: str) -> str:
    """A saved epoch as UTC ISO and its age on the wall clock (the engines' clock)."""
    from relayctl.core import formatting as fmt

    try:
        ts = float(epoch)
    except ValueError:
        return epoch
    return f"{fmt.iso(ts)} ({fmt.ago(ts, time.time())})"


def _control(c: Context, action: str, reason: str) -> None:
    from relayctl.core.backfill import send_control

    state = send_control(c.client(), action, actor=c.actor, reason=reason)
    click.echo(f"backfill {action} requested for run {state.get('run_id', '?')} "
               "(takes effect within one batch)")


@backfill.command("pause")
@click.option("--reason", default="operator pause", show_default=True)
@click.pass_obj
def backfill_pause(c: Context, reason: str) -> None:
    """Pause the running engine after its current batch (it keeps its lease)."""
    _control(c, "pause", reason)


@backfill.command("resume")
@click.option("--reason", default="operator resume", show_default=True)
@click.pass_obj
def backfill_resume(c: Context, reason: str) -> None:
    """Resume a paused engine."""
    _control(c, "resume", reason)


@backfill.command("stop")
@click.option("--reason", default="operator stop", show_default=True)
@click.pass_obj
def backfill_stop(c: Context, reason: str) -> None:
    """Stop the running engine after its current batch; the cursor stays resumable."""
    _control(c, "stop", reason)


@backfill.command("set")
@click.option("--rps", type=float, default=None, help="Keys per second (0 = unlimited).")
@click.option("--batch", type=int, default=None, help="Keys per SCAN step.")
@click.option("--max-memory-pct", type=float, default=None)
@click.option("--critical-memory-pct", type=float, default=None)
@click.option("--max-replica-lag-bytes", type=int, default=None)
@click.option("--max-replica-lag-s", type=float, default=None)
@click.option("--max-latency-ms", type=float, default=None)
@click.option("--reason", required=True, help="Why; recorded in the audit stream.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backfill_set(c: Context, reason: str, as_json: bool, **changes: float | None) -> None:
    """Retune the running engine between batches, without stopping it (audited)."""
    from relayctl.core.backfill import send_tune

    values = send_tune(c.client(), dict(changes), actor=c.actor, reason=reason)
    if as_json:
        emit_json({"set": values})
    else:
        click.echo("backfill retune requested: "
                   + " ".join(f"{k}={v}" for k, v in values.items())
                   + " (takes effect within one batch)")
