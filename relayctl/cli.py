"""relayctl's command line: parse options, call core, render. No logic of its own."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
import redis

from relayctl import __version__
from relayctl.core import audit, fleet
from relayctl.core.config import Config, load_config
from relayctl.core.connection import (
    TLSOptions,
    connect,
    describe_redis_error,
    parse_target,
    redact_text,
)
from relayctl.core.errors import RedisUnavailableError, RelayError, UsageError
from relayctl.core.flags import DEFAULTS, FLAG_NAMES, check_flag_name, read_flags, set_flag, word

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_STOPPED, EXIT_REDIS = 0, 1, 2, 3, 4


@dataclass
class Context:
    """Global options shared by every command."""

    redis_url: str | None
    metrics_urls: list[str]
    prometheus_url: str | None
    actor: str
    allow_plaintext: bool
    config: Config
    tls: TLSOptions = field(default_factory=TLSOptions)
    _client: redis.Redis | None = field(default=None, repr=False)

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.redis_url, allow_plaintext=self.allow_plaintext,
                                   tls=self.tls)
        return self._client

    @property
    def redis_display(self) -> str:
        return parse_target(self.redis_url, self.allow_plaintext).display

    def now(self) -> float:
        """Wall clock, shifted by RELAYCTL_CLOCK_OFFSET_S (tests and demos of time gates)."""
        try:
            offset = float(os.environ.get("RELAYCTL_CLOCK_OFFSET_S", "0") or 0)
        except ValueError:
            raise UsageError("RELAYCTL_CLOCK_OFFSET_S must be a number of seconds") from None
        return time.time() + offset


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int) -> None:
    click.echo(f"relayctl: error: {redact_text(message)}", err=True)
    sys.exit(code)


def confirm_dangerous(action: str, yes: bool) -> None:
    """Dangerous commands ask on a TTY and need --yes otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {action} without --yes (no TTY to confirm on)")
    if not click.confirm(f"{action[0].upper()}{action[1:]}?", default=False):
        raise UsageError("cancelled")


def _split_env_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relayctl")
@click.option("--redis-url", envvar="REDIS_URL", default=None, show_default=False,
              help="Redis URL [env REDIS_URL; default redis://127.0.0.1:6379/0].")
@click.option("--metrics-url", multiple=True,
              help="A /metrics endpoint to read (repeatable) [env RELAYCTL_METRICS_URL].")
@click.option("--prometheus-url", envvar="RELAYCTL_PROMETHEUS_URL", default=None,
              help="Prometheus server for windowed gates [env RELAYCTL_PROMETHEUS_URL].")
@click.option("--actor", envvar="RELAYCTL_ACTOR", default=None,
              help="Who is acting, for the audit log [env RELAYCTL_ACTOR; default login].")
@click.option("--allow-plaintext", is_flag=True,
              help="Allow redis:// to a non-loopback host.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file: key templates, thresholds, labelled workspaces.")
@click.option("--tls-ca", envvar="RELAYCTL_TLS_CA", default=None, metavar="FILE",
              help="CA bundle to verify a rediss:// server [env RELAYCTL_TLS_CA].")
@click.option("--tls-cert", envvar="RELAYCTL_TLS_CERT", default=None, metavar="FILE",
              help="Client certificate for rediss:// [env RELAYCTL_TLS_CERT].")
@click.option("--tls-key", envvar="RELAYCTL_TLS_KEY", default=None, metavar="FILE",
              help="Client certificate's private key [env RELAYCTL_TLS_KEY].")
@click.option("--sentinel-password", envvar="RELAYCTL_SENTINEL_PASSWORD", default=None,
              metavar="PASSWORD", help="Password of the sentinels of a redis+sentinel:// URL "
              "[env RELAYCTL_SENTINEL_PASSWORD, preferred: not visible in ps].")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, metrics_url: tuple[str, ...],
        prometheus_url: str | None, actor: str | None, allow_plaintext: bool,
        config_path: str | None, tls_ca: str | None, tls_cert: str | None,
        tls_key: str | None, sentinel_password: str | None) -> None:
    """Run the Relay job store's zero-downtime Redis key-schema migration."""
    if sentinel_password:  # connect() and spawned engines read it from the environment
        os.environ["RELAYCTL_SENTINEL_PASSWORD"] = sentinel_password
    urls = list(metrics_url) or _split_env_list(os.environ.get("RELAYCTL_METRICS_URL"))
    ctx.obj = Context(
        redis_url=redis_url, metrics_urls=urls, prometheus_url=prometheus_url,
        actor=actor or audit.default_actor(), allow_plaintext=allow_plaintext,
        config=load_config(config_path),
        tls=TLSOptions(ca=tls_ca or None, cert=tls_cert or None, key=tls_key or None),
    )


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def flags(ctx: click.Context, as_json: bool) -> None:
    """Show the migration flags (stored, effective here, and across the fleet)."""
    if ctx.invoked_subcommand is not None:
        return
    c: Context = ctx.obj
    client = c.client()
    state = read_flags(client)
    changes = {e.target: e for e in reversed(audit.recent(client, 500))
               if e.action == "flag.set"}
    instances = fleet.live_instances(client)
    rows = []
    for name in FLAG_NAMES:
        stored = state.stored.get(name)
        last = changes.get(name)
        agree = sum(1 for i in instances if i.flags.get(name) == word(state.stored.get(
            name, DEFAULTS[name])))
        rows.append({
            "flag": name,
            "stored": word(stored) if stored is not None else None,
            "default": word(DEFAULTS[name]),
            "effective_here": word(state.value(name)),
            "pinned_here": name in state.pinned,
            "changed_by": last.actor if last else None,
            "changed_at": last.ts if last else None,
            "reason": last.reason if last else None,
            "fleet_agree": agree,
            "fleet_pinned": [i.instance for i in instances if name in i.pinned],
        })
    if as_json:
        emit_json({"redis": c.redis_display, "flags": rows, "fleet_size": len(instances)})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Migration flags @ {c.redis_display}")
    table.add_column("flag", no_wrap=True)
    for col in ("stored", "here", "changed by", "when", "fleet"):
        table.add_column(col)
    for row in rows:
        stored = row["stored"] or f"{row['default']} (default)"
        when = time.strftime("%m-%d %H:%M", time.gmtime(row["changed_at"])) + "Z" \
            if row["changed_at"] else "-"
        pinned = f" pinned: {', '.join(row['fleet_pinned'])}" if row["fleet_pinned"] else ""
        table.add_row(row["flag"], stored,
                      row["effective_here"] + (" (pin)" if row["pinned_here"] else ""),
                      row["changed_by"] or "-", when,
                      f"{row['fleet_agree']}/{len(instances)}{pinned}")
    Console().print(table)


@flags.command("set")
@click.argument("name")
@click.argument("value", type=click.Choice(["on", "off"], case_sensitive=False))
@click.option("--reason", required=True, help="Why; recorded in the audit stream.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def flags_set(c: Context, name: str, value: str, reason: str, yes: bool, as_json: bool) -> None:
    """Change a flag (audited). Every instance picks it up within about a second."""
    name = check_flag_name(name)
    if not reason.strip():
        raise UsageError("a reason is required to change a flag")
    client = c.client()
    confirm_dangerous(f"set {name}={value.lower()} on {c.redis_display}", yes)
    change = set_flag(client, name, value, actor=c.actor, reason=reason, now=c.now())
    if as_json:
        emit_json({"flag": change.name, "before": change.before, "after": change.after,
                   "actor": c.actor, "audit_id": change.audit_id})
    else:
        click.echo(f"{change.name}: {change.before} -> {change.after} "
                   f"(by {c.actor}, audit {change.audit_id})")


def demo_clock(speed: float) -> Callable[[], float]:
    """The demo's clock: time-based gates advance `speed` x faster than real time."""
    start = time.time()
    return lambda: start + (time.time() - start) * speed


def _wait_for_signal(duration: float | None, tick: Callable[[], None] | None = None) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        stop.wait(1.0)
        if tick is not None:
            tick()


@cli.command()
@click.option("--rate", type=click.FloatRange(min=0.1), default=50.0, show_default=True,
              help="Operations per second.")
@click.option("--workspaces", type=click.IntRange(1, 500), default=4, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Seconds to run (default: until interrupted).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on 127.0.0.1:PORT (0 picks a free port).")
@click.option("--seed", type=int, default=None, help="Random seed for a reproducible mix.")
@click.option("--write-share", type=click.FloatRange(0, 0.5), default=0.22, show_default=True,
              help="Fraction of operations that enqueue a job.")
@click.option("--json", "as_json", is_flag=True, help="Final stats as JSON.")
@click.pass_obj
def simulate(c: Context, rate: float, workspaces: int, duration: float | None,
             metrics_port: int | None, seed: int | None, write_share: float,
             as_json: bool) -> None:
    """Application traffic through JobStore against a real Redis."""
    from relayctl.core.jobs import JobStore
    from relayctl.core.metrics import Metrics
    from relayctl.core.simulate import Simulator, workspace_names

    client = c.client()
    names = workspace_names(workspaces)
    metrics = Metrics(labelled_workspaces=c.config.labelled_workspaces or names)
    server = metrics.serve(metrics_port) if metrics_port is not None else None
    with JobStore(client, schema=c.config.schema, metrics=metrics) as store:
        sim = Simulator(store, rate=rate, workspaces=names, seed=seed, write_share=write_share)
        sim.load_existing()
        if not as_json:
            click.echo(f"simulating {rate:g} ops/s over {workspaces} workspaces "
                       f"against {c.redis_display}")
            if server:
                click.echo(f"metrics: {server.url}")
        sim.start()
        try:
            _wait_for_signal(duration)
        finally:
            sim.stop()
            if server:
                server.close()
    if as_json:
        emit_json({"stats": sim.stats.as_dict(), "flags": store.flags.as_dict()})
    else:
        click.echo("stats: " + ", ".join(f"{k}={v}" for k, v in sim.stats.as_dict().items()
                                         if not isinstance(v, dict)))


@cli.command()
@click.option("--no-tui", is_flag=True, help="Run the embedded stack without the console.")
@click.option("--speed", type=click.FloatRange(min=0.1, max=100_000), default=1.0,
              show_default=True, help="Clock multiplier for the time-based gates (10000 walks "
              "the 51 days of the rollout in about 7 minutes); traffic grows up to x10.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Seconds to run (default: until interrupted).")
@click.option("--redis-port", type=click.IntRange(0, 65535), default=0,
              help="Port of the embedded Redis (0 picks a free one).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0,
              help="Port of the demo's /metrics (0 picks a free one).")
@click.pass_obj
def demo(c: Context, no_tui: bool, speed: float, duration: float | None, redis_port: int,
         metrics_port: int) -> None:
    """Embedded fake Redis on loopback + simulator + /metrics (+ the console, later)."""
    from relayctl.core.demo import seed_pre_migration, start_embedded_redis
    from relayctl.core.jobs import JobStore
    from relayctl.core.metrics import Metrics
    from relayctl.core.simulate import Simulator, workspace_names

    embedded = start_embedded_redis(redis_port)
    names = workspace_names(5)
    metrics = Metrics(labelled_workspaces=names)
    server = metrics.serve(metrics_port)
    try:
        client = connect(embedded.url)
        summary = seed_pre_migration(client, c.config.schema, names)
        store = JobStore(client, schema=c.config.schema, metrics=metrics)
        rate = 20 * min(speed, 10)
        sim = Simulator(store, rate=rate, workspaces=names, seed=1,
                        known_jobs=summary.jobs[-2000:])
        sim.start()
        click.echo(f"relayctl demo {__version__}")
        click.echo(f"  redis:   {embedded.url}   (embedded fakeredis, pre-migration data: "
                   f"{summary.legacy} legacy jobs, {summary.in_both} also in the new schema, "
                   f"{summary.invalid} invalid records)")
        click.echo(f"  metrics: {server.url}")
        click.echo(f"  traffic: {rate:g} ops/s over {', '.join(names)}; clock x{speed:g}")
        click.echo(f"  try:     relayctl --redis-url {embedded.url} flags")
        try:
            if no_tui:
                click.echo("Ctrl-C to stop.")
                _wait_for_signal(duration)
            else:
                from relayctl.core.gates import THRESHOLDS
                from relayctl.tui.app import RelayApp

                # freshness windows stay in real time while the rollout's weeks fly by
                RelayApp(redis_url=embedded.url, metrics_urls=[server.url], actor=c.actor,
                         schema=c.config.schema, clock=demo_clock(speed),
                         thresholds={"max_age_s": THRESHOLDS["max_age_s"] * speed}).run()
        finally:
            sim.stop()
            store.close()
            click.echo("stats: " + ", ".join(
                f"{k}={v}" for k, v in sim.stats.as_dict().items() if not isinstance(v, dict)))
    finally:
        server.close()
        embedded.close()


@cli.group(invoke_without_command=True)
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
@click.option("--json", "as_json", is_flag=True, help="Only a final summary object.")
@click.pass_context
def backfill(ctx: click.Context, dry_run: bool, execute: bool, workspaces: tuple[str, ...],
             rps: float, batch: int, max_keys: int | None, fresh: bool, resume: bool,
             max_latency_ms: float | None, metrics_port: int | None, force: bool,
             retry_for: float, workers: int, as_json: bool) -> None:
    """Copy legacy jobs to the workspace-scoped schema (resumable, steerable, one at a time).

    \b
    relayctl backfill --dry-run [--workspace WS ...] [--max-keys N]
    relayctl backfill --execute [--rps N] [--batch N] [--resume|--fresh] [--workers N]
    relayctl backfill status | pause | resume | stop
    """
    if ctx.invoked_subcommand is not None:
        return
    if dry_run == execute:
        raise UsageError("choose exactly one of --dry-run or --execute "
                         "(or a subcommand: status, pause, resume, stop)")
    from relayctl.core.backfill import Backfill, BackfillOptions
    from relayctl.core.metrics import Metrics
    from relayctl.progress import BackfillView

    c: Context = ctx.obj
    options = BackfillOptions(
        execute=execute, workspaces=workspaces, rps=rps, batch=batch, max_keys=max_keys,
        fresh=fresh, resume=resume, max_latency_ms=max_latency_ms, force=force,
        retry_for_s=retry_for, actor=c.actor, workers=workers,
    )
    metrics = Metrics(labelled_workspaces=c.config.labelled_workspaces or workspaces)
    view = BackfillView(as_json=as_json)
    engine = Backfill(c.client(), options, schema=c.config.schema, metrics=metrics,
                      on_event=view.event)
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
    """The saved state of the current or last run (exit 3 while paused)."""
    from relayctl.core.backfill import iter_status_fields, lease_owner, read_state

    client = c.client()
    state = read_state(client)
    owner = lease_owner(client)
    data = {"state": state, "engine_alive": owner is not None}
    if as_json:
        emit_json(data)
    elif not state:
        click.echo("no backfill has run")
    else:
        for name, value in iter_status_fields(state):
            click.echo(f"{name:>18}: {value}")
        click.echo(f"{'engine':>18}: {'alive' if owner else 'not running'}")
    if state.get("status") in ("paused", "stopped", "partial"):
        sys.exit(EXIT_STOPPED)


def _backfill_control(c: Context, action: str, reason: str) -> None:
    from relayctl.core.backfill import send_control

    state = send_control(c.client(), action, actor=c.actor, reason=reason)
    click.echo(f"backfill {action} requested for run {state.get('run_id', '?')} "
               "(takes effect within one batch)")


@backfill.command("pause")
@click.option("--reason", default="operator pause", show_default=True)
@click.pass_obj
def backfill_pause(c: Context, reason: str) -> None:
    """Pause the running engine after its current batch (it keeps its lease)."""
    _backfill_control(c, "pause", reason)


@backfill.command("resume")
@click.option("--reason", default="operator resume", show_default=True)
@click.pass_obj
def backfill_resume(c: Context, reason: str) -> None:
    """Resume a paused engine."""
    _backfill_control(c, "resume", reason)


@backfill.command("stop")
@click.option("--reason", default="operator stop", show_default=True)
@click.pass_obj
def backfill_stop(c: Context, reason: str) -> None:
    """Stop the running engine after its current batch; the cursor stays resumable."""
    _backfill_control(c, "stop", reason)


@cli.command()
@click.option("--by-workspace", is_flag=True, help="Also count per workspace.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def census(c: Context, by_workspace: bool, as_json: bool) -> None:
    """Count legacy keys, new keys and index entries (one SCAN pass; stored for the gates)."""
    from relayctl.core.census import run_census

    show = sys.stderr.isatty() and not as_json
    last = [0.0]

    def progress(cs, fraction: float) -> None:
        if show and time.monotonic() - last[0] > 0.2:
            last[0] = time.monotonic()
            click.echo(f"\r  scanning {fraction * 100:5.1f}%  {cs.scanned:,} keys", err=True,
                       nl=False)

    result = run_census(c.client(), c.config.schema, by_workspace=by_workspace,
                        progress=progress, now=c.now)
    if show:
        click.echo("", err=True)
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(f"old keys      {result.old:>12,}")
    click.echo(f"new keys      {result.new:>12,}")
    click.echo(f"index entries {result.index_entries:>12,}  ({result.index_keys} index keys)")
    click.echo(f"other keys    {result.other:>12,}")
    click.echo(f"scanned {result.scanned:,} keys in {result.duration_s:.2f}s "
               f"({result.keys_per_s:,.0f} keys/s)")
    for ws, counts in result.by_workspace.items():
        click.echo(f"  {ws:<24} new {counts.get('new', 0):>10,}  "
                   f"indexed {counts.get('index_entries', 0):>10,}")


@cli.command()
@click.option("--workspace", "workspaces", multiple=True, help="Only this workspace.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Check a uniform sample of N legacy records instead of all.")
@click.option("--repair", is_flag=True, help="Re-copy differing records from the legacy schema.")
@click.option("--force", is_flag=True, help="Repair even after fallback was turned off.")
@click.option("--ttl-tolerance", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds of TTL drift tolerated.")
@click.option("--yes", is_flag=True, help="Do not ask before --repair.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(c: Context, workspaces: tuple[str, ...], sample: int | None, repair: bool,
           force: bool, ttl_tolerance: float, yes: bool, as_json: bool) -> None:
    """Compare legacy records with their new copies; exit 1 when anything differs."""
    from relayctl.core.verify import run_verify

    client = c.client()
    if repair:
        confirm_dangerous(f"repair differing new records on {c.redis_display}", yes)
    report = run_verify(client, c.config.schema, workspaces=workspaces, sample=sample,
                        repair=repair, force=force, ttl_tolerance_s=ttl_tolerance, now=c.now)
    if repair and report.repaired:
        audit.record(client, c.actor, "verify.repair", "new schema", "",
                     f"{report.repaired} records", "verify --repair")
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(f"verify ({report.mode}): checked {report.checked:,} legacy records, "
                   f"{report.invalid_legacy} invalid, in {report.duration_s:.2f}s")
        for kind, n in report.counts.items():
            click.echo(f"  {kind:<20} {n:>8,}")
            for key in report.examples.get(kind, []):
                click.echo(f"      {key}")
        if repair:
            click.echo(f"repaired {report.repaired}")
        click.echo("CLEAN" if report.clean else "DIFFERENCES FOUND")
    sys.exit(EXIT_OK if report.clean else EXIT_PROBLEM)


@cli.group()
def archive() -> None:
    """Phase 6: export legacy keys, delete verified ones, restore them."""


@archive.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def archive_export(c: Context, file: str, as_json: bool) -> None:
    """Stream every legacy key (DUMP + TTL + checksums) into FILE (gzip JSON lines)."""
    from relayctl.core.archive import export

    client = c.client()
    summary = export(client, c.config.schema, file)
    audit.record(client, c.actor, "archive.export", file, "", f"{summary.count} keys",
                 f"sha256 {summary.sha256}")
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo(f"exported {summary.count:,} legacy keys to {file} "
                   f"(manifest sha256 {summary.sha256[:16]}…) in {summary.duration_s:.2f}s")


@archive.command("delete")
@click.option("--from", "file", required=True, type=click.Path(dir_okay=False),
              help="The export made by `relayctl archive export`.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--rps", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keys per second (0 = unlimited).")
@click.option("--reason", required=True, help="Why; recorded in the audit stream.")
@click.option("--force", is_flag=True, help="Delete even while READ_FALLBACK_OLD is on.")
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def archive_delete(c: Context, file: str, batch: int, rps: float, reason: str, force: bool,
                   yes: bool, as_json: bool) -> None:
    """Delete legacy keys that are in FILE, unchanged since, and equal in the new schema."""
    from relayctl.core.archive import check_archive, delete_verified

    client = c.client()
    count = check_archive(file, c.config.schema)
    confirm_dangerous(f"delete up to {count:,} legacy keys on {c.redis_display}", yes)
    summary = delete_verified(client, c.config.schema, file, actor=c.actor, reason=reason,
                              batch=batch, rps=rps, force=force)
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo("archive delete: " + ", ".join(f"{k} {v:,}" for k, v in
                                                  summary.counts.items()))


@archive.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--reason", required=True, help="Why; recorded in the audit stream.")
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def archive_restore(c: Context, file: str, reason: str, yes: bool, as_json: bool) -> None:
    """Put archived legacy keys back byte-identical; never overwrites an existing key."""
    from relayctl.core.archive import check_archive, restore

    client = c.client()
    count = check_archive(file, c.config.schema)
    confirm_dangerous(f"restore up to {count:,} legacy keys on {c.redis_display}", yes)
    summary = restore(client, c.config.schema, file, actor=c.actor, reason=reason)
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo("archive restore: " + ", ".join(f"{k} {v:,}" for k, v in
                                                   summary.counts.items()))


def _gate_context(c: Context, number: int, window: float | None,
                  shared: dict | None = None):
    from relayctl.core.checklist import gate_context, read_checklist

    try:
        client = c.client()
        state = read_checklist(client)
    except (RedisUnavailableError, redis.ConnectionError, redis.TimeoutError):
        client, state = None, None
    thresholds = None
    if c.config.thresholds:
        from relayctl.core.gates import THRESHOLDS

        unknown = set(c.config.thresholds) - set(THRESHOLDS)
        if unknown:
            raise UsageError(f"unknown threshold(s) in config: {', '.join(sorted(unknown))}")
        thresholds = {**THRESHOLDS, **c.config.thresholds}
    ctx = gate_context(client, state, number, redis_url=c.redis_url,
                       metrics_urls=c.metrics_urls, prometheus_url=c.prometheus_url,
                       window_s=window, now=c.now, shared={} if shared is None else shared,
                       schema=c.config.schema)
    if thresholds:
        ctx.thresholds = thresholds
    return ctx, state


_STATUS_STYLE = {"PASS": "green", "FAIL": "red", "WAIT": "yellow", "UNKNOWN": "magenta"}


def _print_gates(results, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("gate", no_wrap=True)
    table.add_column("status")
    table.add_column("value")
    table.add_column("threshold")
    table.add_column("detail")
    for r in results:
        style = _STATUS_STYLE[r.status]
        table.add_row(r.gate, f"[{style}]{r.status}[/]", r.value, r.threshold, r.detail)
    Console().print(table)


@cli.command()
@click.option("--phase", "phase_no", type=click.IntRange(0, 6), default=None,
              help="Phase to check (default: the checklist's current phase).")
@click.option("--all", "all_phases", is_flag=True, help="Every phase.")
@click.option("--window", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between two /metrics scrapes for rates.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check(c: Context, phase_no: int | None, all_phases: bool, window: float | None,
          as_json: bool) -> None:
    """Evaluate gates: exit 0 all pass, 1 a gate fails, 3 none fails but some wait/unknown."""
    from relayctl.core.gates import evaluate_phase, overall
    from relayctl.core.phases import LAST_PHASE, PHASES, phase

    shared: dict = {}
    _ctx, state = _gate_context(c, 0, window, shared)
    if all_phases:
        numbers = [p.number for p in PHASES]
    elif phase_no is not None:
        numbers = [phase_no]
    else:
        current = state.phase if state is not None else 0
        numbers = [min(current, LAST_PHASE)]
    report = []
    every = []
    for n in numbers:
        ctx, _ = _gate_context(c, n, window, shared)
        results = evaluate_phase(ctx, phase(n))
        every += results
        report.append({"phase": n, "title": phase(n).title,
                       "gates": [r.as_dict() for r in results], "exit": overall(results)})
    code = overall(every)
    if as_json:
        emit_json({"phases": report, "exit": code})
    else:
        from relayctl.core.gates import GateResult

        for entry, n in zip(report, numbers, strict=True):
            _print_gates([GateResult(**g) for g in entry["gates"]],
                         f"Phase {n}: {entry['title']}")
    sys.exit(code)


@cli.group(invoke_without_command=True)
@click.pass_context
def checklist(ctx: click.Context) -> None:
    """The shared six-phase walkthrough (show | mark | apply | advance)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(checklist_show)


@checklist.command("show")
@click.option("--phase", "phase_no", type=click.IntRange(0, 6), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def checklist_show(c: Context, phase_no: int | None = None, as_json: bool = False) -> None:
    """Phases with their state; the current phase's items, gates and rollback triggers."""
    from relayctl.core.checklist import read_checklist
    from relayctl.core.gates import evaluate
    from relayctl.core.phases import LAST_PHASE, PHASES, PROCEDURES, phase

    client = c.client()
    state = read_checklist(client)
    number = phase_no if phase_no is not None else min(state.phase, LAST_PHASE)
    p = phase(number)
    ctx, _ = _gate_context(c, number, None)
    gates = evaluate(ctx, p.gates)
    triggers = evaluate(ctx, p.trigger_gates)
    if as_json:
        emit_json({
            "current_phase": state.phase, "complete": state.complete,
            "phases": [{"number": q.number, "id": q.id, "title": q.title, "window": q.window,
                        "state": ("done" if q.number < state.phase else
                                  "current" if q.number == state.phase else "pending")}
                       for q in PHASES],
            "selected": {
                "number": p.number, "title": p.title,
                "target_flags": {k: "on" if v else "off"
                                 for k, v in (p.target_flags or {}).items()},
                "items": [{"id": i.id, "text": i.text, "gate": i.gate,
                           "done": state.done(i.id) if i.manual else None} for i in p.items],
                "gates": [g.as_dict() for g in gates],
                "triggers": [{"text": t.text, "gate": t.gate, "procedure": t.procedure}
                             for t in p.triggers],
                "trigger_gates": [g.as_dict() for g in triggers],
                "rollback": p.rollback,
            },
        })
        return
    for q in PHASES:
        mark_ = "x" if q.number < state.phase else (">" if q.number == state.phase else " ")
        click.echo(f"[{mark_}] {q.number}. {q.title} ({q.window})")
    click.echo("")
    click.echo(f"Phase {p.number}: {p.title}")
    if p.target_flags:
        click.echo("  flags: " + ", ".join(f"{k}={'on' if v else 'off'}"
                                           for k, v in p.target_flags.items()))
    for item in p.items:
        if item.manual:
            box = "x" if state.done(item.id) else " "
            click.echo(f"  [{box}] {item.id:<18} {item.text}")
        else:
            click.echo(f"  [gate] {item.id:<16} {item.text}  -> {item.gate}")
    _print_gates(gates, "gates")
    if p.triggers:
        by_gate = {g.gate: g for g in triggers}
        click.echo("rollback triggers:")
        for t in p.triggers:
            g = by_gate.get(t.gate) if t.gate else None
            live = "FIRING" if g is not None and g.status == "FAIL" else (g.status if g else "-")
            proc = PROCEDURES[t.procedure].title if t.procedure else "investigate"
            click.echo(f"  [{live:>7}] {t.text}  => {proc}")


@checklist.command("mark")
@click.argument("items", nargs=-1, required=True)
@click.option("--undo", is_flag=True, help="Re-open the items.")
@click.option("--reason", default="", help="Optional note for the audit stream.")
@click.pass_obj
def checklist_mark(c: Context, items: tuple[str, ...], undo: bool, reason: str) -> None:
    """Check off manual items (actor and time recorded)."""
    from relayctl.core.checklist import mark

    mark(c.client(), list(items), actor=c.actor, reason=reason, undo=undo, now=c.now())
    click.echo(f"{'re-opened' if undo else 'checked off'}: {', '.join(items)} (by {c.actor})")


@checklist.command("apply")
@click.option("--reason", required=True)
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def checklist_apply(c: Context, reason: str, yes: bool, as_json: bool) -> None:
    """Set the current phase's target flags (audited) and record the gate baselines."""
    from relayctl.core.checklist import apply, read_checklist
    from relayctl.core.phases import LAST_PHASE, phase

    client = c.client()
    state = read_checklist(client)
    p = phase(min(state.phase, LAST_PHASE))
    flags_txt = ", ".join(f"{k}={'on' if v else 'off'}"
                          for k, v in (p.target_flags or {}).items()) or "no flag changes"
    confirm_dangerous(f"apply phase {p.number} ({flags_txt}) on {c.redis_display}", yes)
    applied, changes = apply(client, actor=c.actor, reason=reason, metrics_urls=c.metrics_urls,
                             now=c.now())
    if as_json:
        emit_json({"phase": applied.number, "changes": [
            {"flag": ch.name, "before": ch.before, "after": ch.after} for ch in changes]})
    else:
        click.echo(f"phase {applied.number} applied: " + (", ".join(
            f"{ch.name} {ch.before}->{ch.after}" for ch in changes) or "baseline recorded"))


@checklist.command("advance")
@click.option("--override", "overrides", multiple=True, metavar="GATE",
              help="Advance despite this gate (repeatable; needs --reason).")
@click.option("--reason", default="", help="Why the override is safe (audited).")
@click.option("--window", type=click.FloatRange(min=0.1), default=None)
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def checklist_advance(c: Context, overrides: tuple[str, ...], reason: str,
                      window: float | None, yes: bool, as_json: bool) -> None:
    """Move to the next phase; refused while a gate fails unless overridden with a reason."""
    from relayctl.core.checklist import advance, read_checklist

    if overrides and not reason.strip():
        raise UsageError("--override needs --reason")
    client = c.client()
    state = read_checklist(client)
    ctx, _ = _gate_context(c, state.phase, window)
    if overrides:
        confirm_dangerous(f"override {', '.join(overrides)} and advance phase {state.phase}",
                          yes)
    result = advance(client, ctx, actor=c.actor, overrides=dict.fromkeys(overrides, reason),
                     now=c.now)
    if as_json:
        emit_json({"advanced": result.advanced, "from": result.phase_from,
                   "to": result.phase_to, "blocking": result.blocking,
                   "open_items": result.open_items, "overridden": result.overridden,
                   "gates": [g.as_dict() for g in result.gates]})
    else:
        _print_gates(result.gates, f"Phase {result.phase_from} gates")
        if result.advanced:
            click.echo(f"advanced: phase {result.phase_from} -> {result.phase_to}")
    if not result.advanced:
        parts = []
        if result.blocking:
            parts.append("gates not passing: " + ", ".join(result.blocking))
        if result.open_items:
            parts.append("items not checked off: " + ", ".join(result.open_items))
        raise UsageError(f"phase {result.phase_from} cannot advance: " + "; ".join(parts))


@cli.command()
@click.argument("procedure")
@click.option("--reason", required=True)
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rollback(c: Context, procedure: str, reason: str, yes: bool, as_json: bool) -> None:
    """Apply a documented rollback procedure's flag changes (read-routing, dual-write,
    fallback-disable, emergency, backfill)."""
    from relayctl.core.checklist import rollback as do_rollback
    from relayctl.core.phases import PROCEDURES

    client = c.client()
    proc = PROCEDURES.get(procedure)
    if proc is None:
        raise UsageError(f"unknown rollback procedure {procedure!r}: expected one of "
                         f"{', '.join(PROCEDURES)}")
    confirm_dangerous(f"run rollback '{proc.title}' on {c.redis_display}", yes)
    result = do_rollback(client, procedure, actor=c.actor, reason=reason, now=c.now())
    if as_json:
        emit_json({"procedure": result.procedure, "backfill_stopped": result.backfill_stopped,
                   "changes": [{"flag": ch.name, "before": ch.before, "after": ch.after}
                               for ch in result.changes], "steps": list(result.steps)})
        return
    click.echo(f"rollback {proc.title}:")
    for ch in result.changes:
        click.echo(f"  {ch.name}: {ch.before} -> {ch.after}")
    if proc.stop_backfill:
        click.echo(f"  backfill stop {'requested' if result.backfill_stopped else 'not needed'}")
    click.echo("remaining steps:")
    for step in result.steps:
        click.echo(f"  - {step}")


def _deployment(client: redis.Redis) -> dict:
    """Standalone, or the cluster's shards (named by first slot) with primary and slots."""
    from relayctl.core.cluster import close_shards, is_cluster, shards

    if not is_cluster(client):
        return {"kind": "standalone", "shards": []}
    found = shards(client)
    close_shards(found, client)
    return {"kind": "cluster", "shards": [{"name": s.name, "primary": s.address,
                                           "slots": s.slots} for s in found]}


def _echo_deployment(deployment: dict) -> None:
    if deployment["kind"] == "standalone":
        click.echo("deploy   standalone")
        return
    import textwrap

    found = deployment["shards"]
    click.echo(f"deploy   cluster, {len(found)} shards")
    width = max(len(s["name"]) for s in found)
    for s in found:
        head = f"         shard {s['name']:<{width}}  {s['primary']}  slots "
        click.echo(textwrap.fill(s["slots"].replace(",", ", "), 80, initial_indent=head,
                                 subsequent_indent=" " * len(head)))


def _echo_layout(layout) -> None:
    """The dual-write's atomic groups; each line is one step with what its keys hash."""
    if not layout.cluster:
        click.echo("layout   one atomic script per dual-write (standalone)")
        return
    if layout.atomic:
        click.echo(f"layout   one atomic script per dual-write (all keys hash "
                   f"{layout.records[0].hashed_display})")
        return
    click.echo(f"layout   dual-write in {len(layout.split)} steps, not atomic with each other:")
    names = ["+".join(g) for g in layout.split]
    width = max(len(n) for n in names)
    for name, group in zip(names, layout.split, strict=True):
        click.echo(f"         {name:<{width}}  hashes {layout.record(group[0]).hashed_display}")
    if not layout.together("new_job", "index"):
        from relayctl.core.layout import hash_tagged

        new_job, index = layout.record("new_job"), layout.record("index")
        click.echo(f'         fix: [keys] new_job = "{hash_tagged(new_job.template)}"')
        click.echo(f'              [keys] index = "{hash_tagged(index.template)}"')


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(c: Context, as_json: bool) -> None:
    """One screen: deployment and slot layout, flags, fleet, backfill, keyspace, current phase
    and its gates."""
    from relayctl.core.backfill import lease_owner, read_state
    from relayctl.core.census import last_census
    from relayctl.core.checklist import read_checklist
    from relayctl.core.cluster import is_cluster
    from relayctl.core.engine_version import server_identity
    from relayctl.core.gates import evaluate_phase, overall
    from relayctl.core.layout import slot_layout
    from relayctl.core.phases import LAST_PHASE, phase
    from relayctl.core.serverinfo import memory_info

    client = c.client()
    deployment = _deployment(client)
    layout = slot_layout(c.config.schema, cluster=is_cluster(client))
    flags_state = read_flags(client, pins={})
    instances = fleet.live_instances(client)
    bf = read_state(client)
    census_ = last_census(client)
    mem = memory_info(client) or {}
    state = read_checklist(client)
    number = min(state.phase, LAST_PHASE)
    ctx, _ = _gate_context(c, number, None)
    results = evaluate_phase(ctx, phase(number))
    server = server_identity(client)
    data = {
        "redis": c.redis_display,
        "server": server.as_dict() if server else None,
        "deployment": deployment,
        "layout": layout.as_dict(),
        "flags": flags_state.as_dict(),
        "fleet": {"instances": len(instances),
                  "pinned": [i.instance for i in instances if i.pinned]},
        "backfill": {k: bf.get(k) for k in ("run_id", "status", "scanned", "migrated",
                                            "errors", "cursor")} if bf else None,
        "backfill_engine_alive": lease_owner(client) is not None,
        "census": census_.as_dict() if census_ else None,
        "memory": mem or None,
        "phase": state.phase, "complete": state.complete,
        "gates": [r.as_dict() for r in results],
    }
    if as_json:
        emit_json(data)
    else:
        used = f"{mem['used'] / 2**20:,.1f} MiB" if mem else "n/a"
        click.echo(f"redis    {c.redis_display}  {server.label if server else 'server ?'}"
                   f"  used {used}")
        _echo_deployment(deployment)
        _echo_layout(layout)
        click.echo("flags    " + "  ".join(f"{k}={v}" for k, v in flags_state.as_dict().items()))
        click.echo(f"fleet    {len(instances)} live instances"
                   + (f", pinned: {', '.join(data['fleet']['pinned'])}"
                      if data["fleet"]["pinned"] else ""))
        if bf:
            click.echo(f"backfill {bf.get('status')} run {bf.get('run_id')}: scanned "
                       f"{bf.get('scanned')}, migrated {bf.get('migrated')}, errors "
                       f"{bf.get('errors')}" + (" (engine alive)" if data["backfill_engine_alive"]
                                                 else ""))
        else:
            click.echo("backfill never run")
        if census_:
            click.echo(f"keyspace old {census_.old:,}  new {census_.new:,}  index "
                       f"{census_.index_entries:,}  (census "
                       f"{(c.now() - census_.ts) / 60:.0f} min ago)")
        else:
            click.echo("keyspace no census yet (relayctl census)")
        click.echo(f"phase    {state.phase}: {phase(number).title}"
                   + (" (rollout complete)" if state.complete else ""))
        _print_gates(results, "gates")
    sys.exit(overall(results) if not state.complete else EXIT_OK)


@cli.group("export")
def export_group() -> None:
    """Generate monitoring config from the gate thresholds."""


@export_group.command("alerts")
@click.pass_obj
def export_alerts(c: Context) -> None:
    """Prometheus alerting rules (YAML) for the seeds' alert thresholds."""
    from relayctl.core.alerts import alert_rules_yaml

    click.echo(alert_rules_yaml(c.config.thresholds), nl=False)


@export_group.command("grafana")
@click.pass_obj
def export_grafana(c: Context) -> None:
    """A Grafana dashboard (JSON) with the seeds' queries and thresholds."""
    from relayctl.core.alerts import grafana_dashboard

    emit_json(grafana_dashboard(c.config.thresholds))


@cli.command()
@click.option("--user", default=None, help="ACL user name (default relay-<role>).")
@click.option("--role", type=click.Choice(["console", "app", "operator"]), default=None,
              help="Only this role's rule (default: all three; the console's with --user).")
@click.option("--server-version", default=None, metavar="VERSION",
              help="Build the rules for this server (6.2, 7.0, valkey-9.1) [default: the "
                   "--redis-url server's, else Redis 7].")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def acl(c: Context, user: str | None, role: str | None, server_version: str | None,
        as_json: bool) -> None:
    """The least-privilege Redis ACL SETUSER rules (add a password when applying them)."""
    from relayctl.core.acl import caveats, rules_for
    from relayctl.core.engine_version import NEWEST, parse_version, server_identity

    target = parse_target(c.redis_url, c.allow_plaintext)
    if server_version is not None:
        server = parse_version(server_version)
    elif c.redis_url or os.environ.get("REDIS_URL"):
        server = server_identity(c.client()) or NEWEST
    else:
        server = NEWEST
    found = rules_for(role, user, c.config.schema, server=server, db=target.db)
    if as_json:
        emit_json({"server": server.as_dict(), "db": target.db, "caveats": caveats(server),
                   "users": [r.as_dict() for r in found]})
        return
    click.echo("# relayctl least-privilege Redis ACL; append >PASSWORD (or #SHA256) to each")
    click.echo(f"# for {server.label} (or newer), database {target.db}")
    for line in caveats(server):
        click.echo(f"# caveat: {line}")
    for r in found:
        click.echo(f"# {r.role}")
        click.echo(r.command)


@cli.command()
@click.option("--read-only", is_flag=True, help="Show write actions dimmed and refuse them.")
@click.option("--refresh", "refresh_s", type=click.FloatRange(0.5, 30), default=2.0,
              show_default=True, help="Seconds between refreshes.")
@click.pass_obj
def tui(c: Context, read_only: bool, refresh_s: float) -> None:
    """The operator console."""
    from relayctl.tui.app import RelayApp

    parse_target(c.redis_url, c.allow_plaintext)  # a bad URL fails here, not in the UI
    c.tls.check()
    RelayApp(redis_url=c.redis_url, allow_plaintext=c.allow_plaintext, tls=c.tls,
             metrics_urls=c.metrics_urls, actor=c.actor, read_only=read_only,
             refresh_s=refresh_s, schema=c.config.schema, clock=c.now).run()


@cli.command(hidden=True)
@click.option("--out", type=click.Path(file_okay=False), default="screenshots",
              show_default=True)
def screenshots(out: str) -> None:
    """Regenerate the README's console screenshots (SVG) on the embedded demo stack."""
    from relayctl.tui.screenshots import take_screenshots

    for path in take_screenshots(out):
        click.echo(str(path))


@cli.group()
def bench() -> None:
    """Benchmarks that print ratios against baselines measured in the same run."""


@bench.command("store")
@click.option("--keys", type=click.IntRange(1000, 10_000_000), default=200_000,
              show_default=True, help="Total jobs for the large list_jobs measurement.")
@click.option("--samples", type=click.IntRange(100, 100_000), default=2000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_store_cmd(c: Context, keys: int, samples: int, as_json: bool) -> None:
    """get_job vs raw HGETALL, dual-write vs single-schema enqueue, list_jobs at N vs N/100.

    Writes only under a private bench:<run>: prefix and removes it afterwards.
    """
    from relayctl.core.bench import bench_store

    _run_bench(c, bench_store, as_json, keys=keys, samples=samples)


@bench.command("backfill")
@click.option("--keys", type=click.IntRange(1000, 10_000_000), default=200_000,
              show_default=True, help="Legacy jobs to seed (under a private prefix).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--workers", "workers", type=click.IntRange(1, 64), multiple=True,
              help="Redis Cluster: run the engine with each of these --workers values "
                   "(repeatable; default 1 and 3 on a cluster).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_backfill_cmd(c: Context, keys: int, batch: int, workers: tuple[int, ...],
                       as_json: bool) -> None:
    """relayctl's keys/s vs a server-side Lua probe and a naive per-key loop, same data.

    On a Redis Cluster: the engine at each --workers value, with ratios to the first.
    """
    from relayctl.core.bench import bench_backfill
    from relayctl.core.cluster import is_cluster

    client = c.client()
    chosen = workers or ((1, 3) if is_cluster(client) else (1,))
    _run_bench(c, bench_backfill, as_json, keys=keys, batch=batch, workers=chosen)


@bench.command("tui")
@click.option("--keys", type=click.IntRange(1000, 10_000_000), default=100_000,
              show_default=True, help="Extra keys to add between the two measurements.")
@click.option("--ticks", type=click.IntRange(5, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_tui_cmd(c: Context, keys: int, ticks: int, as_json: bool) -> None:
    """Mean console refresh tick, against a PING and with N more keys present."""
    from relayctl.core.bench import bench_tui

    _run_bench(c, bench_tui, as_json, keys=keys, ticks=ticks, metrics_urls=c.metrics_urls,
               redis_url=c.redis_url)


def _run_bench(c: Context, fn: Callable[..., Any], as_json: bool, **kwargs: Any) -> None:
    """Progress on stderr unless --json, then the measurements and ratios."""
    progress = None if as_json else (lambda m: click.echo(f"... {m}", err=True))
    _render_bench(fn(c.client(), progress=progress, **kwargs).as_dict(), as_json)


def _render_bench(data: dict, as_json: bool) -> None:
    if as_json:
        emit_json(data)
        return
    click.echo(f"bench {data['bench']}")
    for k, v in data["measurements"].items():
        click.echo(f"  {k:32s} {v:12.1f}")
    for k, v in data["ratios"].items():
        target = data["targets"].get(k, "")
        click.echo(f"  ratio {k:26s} {v:8.2f}   target {target}")
    for note in data["notes"]:
        click.echo(f"  note: {note}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: map errors to one line on stderr and the exit codes of SPEC §10."""
    logging.basicConfig(level=os.environ.get("RELAYCTL_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rv = cli.main(args=argv, prog_name="relayctl", standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", EXIT_STOPPED)
    except click.exceptions.ClickException as exc:
        # one line like every other error (click's default is a multi-line usage block)
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        fail(message, EXIT_USAGE)
    except RedisUnavailableError as exc:
        fail(str(exc), EXIT_REDIS)
    except RelayError as exc:
        fail(str(exc), exc.exit_code)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        fail(f"lost connection to Redis: {describe_redis_error(exc)}", EXIT_REDIS)
    except redis.exceptions.NoPermissionError as exc:
        fail(f"Redis refused a command (permission): {describe_redis_error(exc)}", EXIT_USAGE)
    except redis.RedisError as exc:
        fail(f"Redis error: {describe_redis_error(exc)}", EXIT_PROBLEM)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)
