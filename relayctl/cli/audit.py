"""`relayctl audit`: read the audit log (who changed what, when and why)."""

from __future__ import annotations

import click

from relayctl.cli.common import Context, emit_json


@click.command("audit")
@click.option("--since", default=None, metavar="WHEN",
              help="Only entries after WHEN: 90m, 2h, 3d, 1w, or a UTC ISO time.")
@click.option("--actor", default=None, help="Only this actor's entries.")
@click.option("--action", default=None,
              help="Only this action (flag.set); a prefix ending in '.' (backfill.) for a group.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of entries.")
@click.pass_obj
def audit(c: Context, since: str | None, actor: str | None, action: str | None, limit: int,
          as_json: bool) -> None:
    """The audit log, newest first."""
    from relayctl.core import formatting as fmt
    from relayctl.core.audit_query import AuditQuery, entry_json, parse_since, query

    start = parse_since(since, c.now()) if since else None
    entries = query(c.client(), AuditQuery(since=start, actor=actor, action=action,
                                           limit=limit))
    if as_json:
        emit_json([entry_json(e) for e in entries])
        return
    if not entries:
        click.echo("no audit entries match")
        return
    for e in entries:
        change = f"{e.before} -> {e.after}" if (e.before or e.after) else ""
        click.echo(f"{fmt.iso(e.ts)}  {e.actor:<14} {e.action:<20} {e.target:<22} "
                   f"{change}  ({e.reason})".rstrip())
