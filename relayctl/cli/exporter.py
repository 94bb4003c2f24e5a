"""`relayctl exporter`: serve the migration's Redis state on /metrics until interrupted."""

from __future__ import annotations

import click

from relayctl.cli.common import Context


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=9465, show_default=True,
              help="Port of /metrics (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Seconds to run (default: until interrupted).")
@click.pass_obj
def exporter(c: Context, port: int, host: str, duration: float | None) -> None:
    """Export phase, flags, fleet, backfill, census, verify and gate verdicts from Redis
    (read-only: runs under the console ACL role)."""
    from relayctl.cli.demo import wait_for_signal
    from relayctl.core.exporter import MigrationCollector, serve

    gates = c.gates()
    c.client().ping()  # an unreachable Redis or a bad URL fails here, not on every scrape
    server = serve(MigrationCollector(connect=c.client, gates=gates, now=c.now), port, host)
    click.echo(f"exporting the migration state of {c.redis_display} on {server.url}")
    try:
        wait_for_signal(duration)
    finally:
        server.close()
