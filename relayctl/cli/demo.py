"""`relayctl simulate` (application traffic) and `relayctl demo` (an embedded stack)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import click

from relayctl.cli.common import Context, emit_json


def wait_for_signal(duration: float | None, tick: Callable[[], None] | None = None) -> None:
    """Block until SIGINT/SIGTERM or `duration` seconds; `tick` runs every second (it may
    raise to end the wait, as a dead simulator thread does)."""
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


@click.command()
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
    from relayctl.core.simulate import Simulator, SimulatorDied, workspace_names

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
            wait_for_signal(duration, tick=sim.raise_if_dead)
        except SimulatorDied:
            pass  # reported below, after the stats
        finally:
            sim.stop()
            if server:
                server.close()
    if as_json:
        emit_json({"stats": sim.stats.as_dict(), "effective_flags": store.flags.as_dict()})
    else:
        click.echo("stats: " + ", ".join(f"{k}={v}" for k, v in sim.stats.as_dict().items()
                                         if not isinstance(v, dict)))
        if sim.stats.by_error:
            click.echo("errors by type: " + ", ".join(
                f"{k}={v}" for k, v in sorted(sim.stats.by_error.items())))
    sim.raise_if_dead()


@click.command()
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
    """Embedded fake Redis on loopback + simulator + /metrics + the console."""
    from relayctl import __version__
    from relayctl.core.demo import start_demo

    stack = start_demo(c.config.schema, speed=speed, thresholds=c.config.thresholds,
                       redis_port=redis_port, metrics_port=metrics_port)
    sim = stack.simulator
    code = 0
    try:
        summary = stack.summary
        links = [("redis", stack.url), ("metrics", stack.metrics_url),
                 ("try", f"relayctl --redis-url {stack.url} backfill status")]
        click.echo(f"relayctl demo {__version__}")
        click.echo(f"  redis:   {stack.url}   (embedded fakeredis, pre-migration data: "
                   f"{summary.legacy} legacy jobs, {summary.in_both} also in the new schema, "
                   f"{summary.invalid} invalid records)")
        click.echo(f"  metrics: {stack.metrics_url}")
        click.echo(f"  traffic: {stack.rate:g} ops/s over {', '.join(stack.workspaces)}; "
                   f"clock x{speed:g}")
        click.echo(f"  try:     relayctl --redis-url {stack.url} flags")
        if no_tui:
            click.echo("Ctrl-C to stop.")
            wait_for_signal(duration)
        else:
            from relayctl.tui.app import RelayApp

            app = RelayApp(redis_url=stack.url, metrics_urls=[stack.metrics_url],
                           actor=c.actor, schema=c.config.schema, clock=stack.clock,
                           thresholds=stack.thresholds, demo=True, links=links)
            app.run()
            # a crash of the console must not look like a clean exit
            code = app.return_code or 0
    finally:
        stats = sim.stats.as_dict()  # type: ignore[attr-defined]
        stack.close()
        click.echo("stats: " + ", ".join(
            f"{k}={v}" for k, v in stats.items() if not isinstance(v, dict)))
    if code:
        raise SystemExit(code)
