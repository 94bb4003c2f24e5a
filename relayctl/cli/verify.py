"""`relayctl verify`: parity of legacy records and their new copies (optionally repaired)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from relayctl.cli.common import Context, confirm_dangerous, emit_json
from relayctl.core.errors import UsageError
from relayctl.core.exitcodes import ExitCode

if TYPE_CHECKING:
    from relayctl.core.verify import VerifyReport


@click.command()
@click.option("--workspace", "workspaces", multiple=True, help="Only this workspace.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Check a uniform sample of N legacy records instead of all.")
@click.option("--repair", is_flag=True,
              help="Fill missing copies, fields, TTLs and index entries; remove index orphans; "
                   "overwrite a differing copy only when the legacy record is provably newer.")
@click.option("--prefer", type=click.Choice(["legacy"]), default=None,
              help="With --repair: overwrite differing copies with the legacy record anyway.")
@click.option("--reason", default="", help="Why (required with --repair; audited).")
@click.option("--force", is_flag=True, help="Repair even after fallback was turned off.")
@click.option("--ttl-tolerance", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds of TTL drift tolerated.")
@click.option("--yes", is_flag=True, help="Do not ask before --repair.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(c: Context, workspaces: tuple[str, ...], sample: int | None, repair: bool,
           prefer: str | None, reason: str, force: bool, ttl_tolerance: float, yes: bool,
           as_json: bool) -> None:
    """Compare legacy records with their new copies; exit 1 when anything differs."""
    from relayctl.core.verify import run_verify

    if repair and not reason.strip():
        raise UsageError("verify --repair needs --reason TEXT (it is audited)")
    client = c.client()
    if repair:
        confirm_dangerous(f"repair differing new records on {c.redis_display}", yes)
    report = run_verify(client, c.config.schema, workspaces=workspaces, sample=sample,
                        repair=repair, force=force, prefer_legacy=prefer == "legacy",
                        actor=c.actor, reason=reason or "verify --repair",
                        ttl_tolerance_s=ttl_tolerance, now=c.now)
    if as_json:
        emit_json(report.as_dict())
    else:
        _render(report, repair)
    sys.exit(ExitCode.OK if report.clean and not report.conflicts else ExitCode.ERRORS)


def _render(report: VerifyReport, repair: bool) -> None:
    invalid = ", ".join(f"{k} {n:,}" for k, n in report.invalid.items() if n)
    click.echo(f"verify ({report.mode}): checked {report.checked:,} legacy records, "
               f"{report.invalid_legacy} invalid{f' ({invalid})' if invalid else ''}, "
               f"in {report.duration_s:.2f}s"
               + (f", restarted {report.restarts}x (server changed)" if report.restarts else ""))
    for key in report.invalid_examples:
        click.echo(f"      invalid: {key}")
    for kind, n in report.counts.items():
        click.echo(f"  {kind:<20} {n:>8,}")
        for key in report.examples.get(kind, []):
            click.echo(f"      {key}")
    if repair:
        click.echo("repaired " + str(report.repaired) + " (" + ", ".join(
            f"{k} {n:,}" for k, n in report.repairs.items() if n) + ")")
        click.echo(f"conflicts {report.conflicts:,} (the copy is not provably older; "
                   "unchanged: --prefer legacy overwrites)")
        for key in report.conflict_examples:
            click.echo(f"      {key}")
    click.echo("CLEAN" if report.clean else "DIFFERENCES FOUND")
