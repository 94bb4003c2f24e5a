"""`relayctl census`: count the keyspace once and store the result for the gates."""

from __future__ import annotations

import sys
import time

import click

from relayctl.cli.common import Context, emit_json


@click.command()
@click.option("--by-workspace", is_flag=True, help="Also count per workspace.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def census(c: Context, by_workspace: bool, as_json: bool) -> None:
    """Count legacy keys, new keys and index entries (one SCAN pass; stored for the gates)."""
    from relayctl.core.census import Census, run_census

    show = sys.stderr.isatty() and not as_json
    last = [0.0]

    def progress(cs: Census, fraction: float) -> None:
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
    if any(result.invalid.values()):
        click.echo(f"invalid keys  {sum(result.invalid.values()):>12,}  (not UTF-8)")
        for key in result.invalid_examples:
            click.echo(f"      {key}")
    click.echo(f"scanned {result.scanned:,} keys in {result.duration_s:.2f}s "
               f"({result.keys_per_s:,.0f} keys/s)")
    for ws, counts in result.by_workspace.items():
        click.echo(f"  {ws:<24} new {counts.get('new', 0):>10,}  "
                   f"indexed {counts.get('index_entries', 0):>10,}")
