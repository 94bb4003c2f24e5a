"""`relayctl tui` (the operator console) and the hidden `relayctl screenshots`."""

from __future__ import annotations

import click

from relayctl.cli.common import Context


@click.command()
@click.option("--read-only", is_flag=True, help="Show write actions dimmed and refuse them.")
@click.option("--refresh", "refresh_s", type=click.FloatRange(0.5, 30), default=2.0,
              show_default=True, help="Seconds between refreshes.")
@click.pass_obj
def tui(c: Context, read_only: bool, refresh_s: float) -> None:
    """The operator console."""
    from relayctl.core.connection import parse_target
    from relayctl.tui.app import RelayApp

    parse_target(c.redis_url, c.allow_plaintext)  # a bad URL fails here, not in the UI
    c.tls.check()
    # the gates' thresholds and sources exactly as `relayctl check` uses them
    RelayApp(redis_url=c.redis_url, allow_plaintext=c.allow_plaintext, tls=c.tls,
             metrics_urls=c.metrics_urls, prometheus_url=c.prometheus_url,
             thresholds=c.config.thresholds, actor=c.actor, read_only=read_only,
             refresh_s=refresh_s, schema=c.config.schema, config_path=c.config_path,
             clock=c.now, gates=c.gates()).run()


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="screenshots",
              show_default=True)
def screenshots(out: str) -> None:
    """Regenerate the README's console screenshots (SVG) on the embedded demo stack."""
    from relayctl.tui.screenshots import take_screenshots

    for path in take_screenshots(out):
        click.echo(str(path))
