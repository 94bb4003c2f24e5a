"""`relayctl verify`: parity of legacy records and their new copies (optionally repaired)."""

from __future__ import annotations

import sys

import click

from relayctl.cli.common import Context, confirm_dangerous, emit_json
from relayctl.core.exitcodes import ExitCode


@click.command()
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
    from relayctl.core.verify import verify_audited

    client = c.client()
    if repair:
        confirm_dangerous(f"repair differing new records on {c.redis_display}", yes)
    report = verify_audited(client, c.config.schema, actor=c.actor, workspaces=workspaces,
                            sample=sample, repair=repair, force=force,
                            ttl_tolerance_s=ttl_tolerance, now=c.now)
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
    sys.exit(ExitCode.OK if report.clean else ExitCode.ERRORS)
