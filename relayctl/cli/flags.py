"""`relayctl flags` and `relayctl flags set`."""

from __future__ import annotations

import click

from relayctl.cli.common import Context, confirm_dangerous, emit_json
from relayctl.core.errors import UsageError


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def flags(ctx: click.Context, as_json: bool) -> None:
    """Show the migration flags (stored, effective here, and across the fleet)."""
    if ctx.invoked_subcommand is not None:
        return
    from relayctl.core import fleet
    from relayctl.core.flags import env_pins
    from relayctl.core.overview import flag_rows

    c: Context = ctx.obj
    client = c.client()
    pins = env_pins()
    instances = fleet.live_instances(client)
    rows = [row.as_dict() for row in flag_rows(client, instances, pins=pins)]
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
        when = row["changed_at"] or "-"
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
    from relayctl.core.flags import check_flag_name, set_flag

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
