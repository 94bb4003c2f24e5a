"""`relayctl archive export | delete | restore` (phase 6)."""

from __future__ import annotations

import click

from relayctl.cli.common import Context, confirm_dangerous, emit_json


@click.group()
def archive() -> None:
    """Phase 6: export legacy keys, delete verified ones, restore them."""


@archive.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def archive_export(c: Context, file: str, as_json: bool) -> None:
    """Stream every legacy key (DUMP + TTL + checksums) into FILE (gzip JSON lines)."""
    from relayctl.core.archive import export_audited

    summary = export_audited(c.client(), c.config.schema, file, actor=c.actor)
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo(f"exported {summary.count:,} legacy keys to {file} "
                   f"(manifest sha256 {summary.sha256[:16]}…) in {summary.duration_s:.2f}s"
                   + (f", restarted {summary.restarts}x (server changed)"
                      if summary.restarts else ""))
        excluded = ", ".join(f"{k} {n:,}" for k, n in summary.excluded.items() if n)
        if excluded:
            click.echo(f"left out (not legacy job keys): {excluded}")
            for key in summary.excluded_examples:
                click.echo(f"      {key}")


@archive.command("delete")
@click.option("--from", "file", required=True, type=click.Path(dir_okay=False),
              help="The export made by `relayctl archive export`.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--rps", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keys per second (0 = unlimited).")
@click.option("--reason", required=True, help="Why; recorded in the audit stream.")
@click.option("--force", is_flag=True, help="Delete even while READ_FALLBACK_OLD is on.")
@click.option("--override", "overrides", multiple=True, type=click.Choice(["verify_fresh"]),
              help="Delete without a fresh clean verify (audited with --reason).")
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def archive_delete(c: Context, file: str, batch: int, rps: float, reason: str, force: bool,
                   overrides: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Delete legacy keys that are in FILE, unchanged since, and equal in the new schema."""
    from relayctl.core.archive import check_archive, delete_verified

    client = c.client()
    count = check_archive(file, c.config.schema)
    confirm_dangerous(f"delete up to {count:,} legacy keys on {c.redis_display}", yes)
    summary = delete_verified(client, c.config.schema, file, actor=c.actor, reason=reason,
                              batch=batch, rps=rps, force=force, overrides=overrides,
                              now=c.now)
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
    """Put archived legacy keys back (RESTORE, or HSET + PEXPIREAT when the payload is from
    another engine); never overwrites an existing key."""
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
