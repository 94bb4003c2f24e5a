"""`relayctl status`: one screen of what the console shows, from the same read."""

from __future__ import annotations

import sys
import textwrap

import click

from relayctl.cli.common import Context, emit_json, print_gates
from relayctl.core.exitcodes import ExitCode


def _echo_deployment(deployment: dict) -> None:
    if deployment["kind"] == "standalone":
        click.echo("deploy   standalone")
        return
    found = deployment["shards"]
    click.echo(f"deploy   cluster, {len(found)} shards")
    width = max(len(s["name"]) for s in found)
    for s in found:
        head = f"         shard {s['name']:<{width}}  {s['primary']}  slots "
        click.echo(textwrap.fill(s["slots"].replace(",", ", "), 80, initial_indent=head,
                                 subsequent_indent=" " * len(head)))


def _echo_layout(layout) -> None:
    """The dual-write's atomic groups; each line is one step with what its keys hash."""
    if not layout.cluster:
        click.echo("layout   one atomic script per dual-write (standalone)")
        return
    if layout.atomic:
        click.echo(f"layout   one atomic script per dual-write (all keys hash "
                   f"{layout.records[0].hashed_display})")
        return
    click.echo(f"layout   dual-write in {len(layout.split)} steps, not atomic with each other:")
    names = ["+".join(g) for g in layout.split]
    width = max(len(n) for n in names)
    for name, group in zip(names, layout.split, strict=True):
        click.echo(f"         {name:<{width}}  hashes {layout.record(group[0]).hashed_display}")
    if not layout.together("new_job", "index"):
        from relayctl.core.layout import hash_tagged

        new_job, index = layout.record("new_job"), layout.record("index")
        click.echo(f'         fix: [keys] new_job = "{hash_tagged(new_job.template)}"')
        click.echo(f'              [keys] index = "{hash_tagged(index.template)}"')


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(c: Context, as_json: bool) -> None:
    """One screen: deployment and slot layout, flags, fleet, backfill, keyspace, current phase
    and its gates."""
    from relayctl.core import formatting as fmt
    from relayctl.core.backfill import state_json
    from relayctl.core.cluster import is_cluster
    from relayctl.core.engine_version import server_identity
    from relayctl.core.flags import word
    from relayctl.core.gates import overall
    from relayctl.core.layout import slot_layout
    from relayctl.core.overview import deployment, read_overview
    from relayctl.core.phases import phase

    client = c.client()
    deploy = deployment(client)
    layout = slot_layout(c.config.schema, cluster=is_cluster(client))
    view = read_overview(client, c.gates(), now=c.now)
    bf, census_, mem, state = view.backfill, view.census, view.memory, view.checklist
    pinned = [i.instance for i in view.instances if i.pinned]
    server = server_identity(client)
    data = {
        "redis": c.redis_display,
        "server": server.as_dict() if server else None,
        "deployment": deploy,
        "layout": layout.as_dict(),
        "flags": [row.as_dict() for row in view.flags],
        "fleet": {"instances": len(view.instances), "pinned": pinned},
        "backfill": state_json({k: bf[k] for k in ("run_id", "status", "scanned", "migrated",
                                                   "errors", "cursor") if k in bf})
        if bf else None,
        "backfill_engine_alive": view.engine_alive,
        "census": census_.as_dict() if census_ else None,
        "memory": mem or None,
        "phase": state.phase, "complete": state.complete,
        "gates": [r.as_dict() for r in view.gates],
    }
    if as_json:
        emit_json(data)
    else:
        used = f"{mem['used'] / 2**20:,.1f} MiB" if mem else "n/a"
        click.echo(f"redis    {c.redis_display}  {server.label if server else 'server ?'}"
                   f"  used {used}")
        _echo_deployment(deploy)
        _echo_layout(layout)
        click.echo("flags    " + "  ".join(f"{row.name}={word(row.value)}" for row in view.flags))
        click.echo(f"fleet    {len(view.instances)} live instances"
                   + (f", pinned: {', '.join(pinned)}" if pinned else ""))
        if bf:
            click.echo(f"backfill {bf.get('status')} run {bf.get('run_id')}: scanned "
                       f"{bf.get('scanned')}, migrated {bf.get('migrated')}, errors "
                       f"{bf.get('errors')}" + (" (engine alive)" if view.engine_alive
                                                 else ""))
        else:
            click.echo("backfill never run")
        if census_:
            click.echo(f"keyspace old {census_.old:,}  new {census_.new:,}  index "
                       f"{census_.index_entries:,}  (census {fmt.ago(census_.ts, c.now())})")
        else:
            click.echo("keyspace no census yet (relayctl census)")
        click.echo(f"phase    {state.phase}: {phase(view.phase_number).title}"
                   + (" (rollout complete)" if state.complete else ""))
        print_gates(view.gates, "gates")
    sys.exit(overall(view.gates) if not state.complete else ExitCode.OK)
