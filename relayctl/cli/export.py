"""`relayctl export alerts | dashboard` (alias grafana) and `relayctl acl`, from core."""

from __future__ import annotations

import click

from relayctl.cli.common import Context, emit_json


@click.group("export")
def export_group() -> None:
    """Generate monitoring config from the gate thresholds."""


@export_group.command("alerts")
@click.pass_obj
def export_alerts(c: Context) -> None:
    """Prometheus alerting rules (YAML) for the seeds' alert thresholds."""
    from relayctl.core.alerts import alert_rules_yaml

    click.echo(alert_rules_yaml(c.config.thresholds), nl=False)


@export_group.command("dashboard")
@click.pass_obj
def export_dashboard(c: Context) -> None:
    """A Grafana dashboard (JSON) with the seeds' queries and thresholds."""
    from relayctl.core.alerts import grafana_dashboard

    emit_json(grafana_dashboard(c.config.thresholds))


export_group.add_command(export_dashboard, "grafana")  # the name it had first


@click.command()
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
    import os

    from relayctl.core.acl import caveats, rules_for
    from relayctl.core.connection import parse_target
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
