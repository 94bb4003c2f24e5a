"""`relayctl check`, `relayctl checklist show | mark | apply | advance` and `rollback`."""

from __future__ import annotations

import sys

import click

from relayctl.cli.common import Context, confirm_dangerous, emit_json, print_gates
from relayctl.core.connection import redact_text
from relayctl.core.errors import UsageError


@click.command()
@click.option("--phase", "phase_no", type=click.IntRange(0, 6), default=None,
              help="Phase to check (default: the checklist's current phase).")
@click.option("--all", "all_phases", is_flag=True, help="Every phase.")
@click.option("--window", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between two /metrics scrapes for rates.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def check(c: Context, phase_no: int | None, all_phases: bool, window: float | None,
          as_json: bool) -> None:
    """Evaluate gates: exit 0 all pass, 1 a gate fails, 3 none fails but some wait/unknown,
    4 Redis unreachable."""
    from relayctl.core.evaluation import ALL_PHASES, check_phases

    numbers = ALL_PHASES if all_phases else [phase_no] if phase_no is not None else None
    report = check_phases(c.gates(window), c.client, numbers, now=c.now)
    if as_json:
        emit_json(report.as_dict())
    else:
        for p in report.phases:
            print_gates(p.gates, f"Phase {p.number}: {p.title}")
        if report.metrics_read:
            click.echo("metrics read: " + ", ".join(report.metrics_read))
    if report.redis_error is not None:
        click.echo(f"relayctl: error: {redact_text(report.redis_error)}", err=True)
    sys.exit(report.exit)


@click.group(invoke_without_command=True)
@click.pass_context
def checklist(ctx: click.Context) -> None:
    """The shared six-phase walkthrough (show | mark | apply | advance)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(checklist_show)


@checklist.command("show")
@click.option("--phase", "phase_no", type=click.IntRange(0, 6), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def checklist_show(c: Context, phase_no: int | None = None, as_json: bool = False) -> None:
    """Phases with their state; the current phase's items, gates and rollback triggers."""
    from relayctl.core.checklist import read_checklist
    from relayctl.core.evaluation import gate_context
    from relayctl.core.gates import evaluate
    from relayctl.core.phases import LAST_PHASE, PHASES, PROCEDURES, phase

    client = c.client()
    state = read_checklist(client)
    number = phase_no if phase_no is not None else min(state.phase, LAST_PHASE)
    p = phase(number)
    ctx = gate_context(c.gates(), client, state, number, now=c.now)
    gates = evaluate(ctx, p.gates)
    triggers = evaluate(ctx, p.trigger_gates)
    if as_json:
        emit_json({
            "current_phase": state.phase, "complete": state.complete,
            "phases": [{"number": q.number, "id": q.id, "title": q.title, "window": q.window,
                        "state": ("done" if q.number < state.phase else
                                  "current" if q.number == state.phase else "pending")}
                       for q in PHASES],
            "selected": {
                "number": p.number, "title": p.title,
                "target_flags": {k: "on" if v else "off"
                                 for k, v in (p.target_flags or {}).items()},
                "items": [{"id": i.id, "text": i.text, "gate": i.gate,
                           "done": state.done(i.id) if i.manual else None} for i in p.items],
                "gates": [g.as_dict() for g in gates],
                "triggers": [{"text": t.text, "gate": t.gate, "procedure": t.procedure}
                             for t in p.triggers],
                "trigger_gates": [g.as_dict() for g in triggers],
                "rollback": p.rollback,
            },
        })
        return
    for q in PHASES:
        mark_ = "x" if q.number < state.phase else (">" if q.number == state.phase else " ")
        click.echo(f"[{mark_}] {q.number}. {q.title} ({q.window})")
    click.echo("")
    click.echo(f"Phase {p.number}: {p.title}")
    if p.target_flags:
        click.echo("  flags: " + ", ".join(f"{k}={'on' if v else 'off'}"
                                           for k, v in p.target_flags.items()))
    for item in p.items:
        if item.manual:
            box = "x" if state.done(item.id) else " "
            click.echo(f"  [{box}] {item.id:<18} {item.text}")
        else:
            click.echo(f"  [gate] {item.id:<16} {item.text}  -> {item.gate}")
    print_gates(gates, "gates")
    if p.triggers:
        by_gate = {g.gate: g for g in triggers}
        click.echo("rollback triggers:")
        for t in p.triggers:
            g = by_gate.get(t.gate) if t.gate else None
            live = "FIRING" if g is not None and g.status == "FAIL" else (g.status if g else "-")
            proc = PROCEDURES[t.procedure].title if t.procedure else "investigate"
            click.echo(f"  [{live:>7}] {t.text}  => {proc}")


@checklist.command("mark")
@click.argument("items", nargs=-1, required=True)
@click.option("--undo", is_flag=True, help="Re-open the items.")
@click.option("--reason", default="", help="Optional note for the audit stream.")
@click.pass_obj
def checklist_mark(c: Context, items: tuple[str, ...], undo: bool, reason: str) -> None:
    """Check off manual items (actor and time recorded)."""
    from relayctl.core.checklist import mark

    mark(c.client(), list(items), actor=c.actor, reason=reason, undo=undo, now=c.now())
    click.echo(f"{'re-opened' if undo else 'checked off'}: {', '.join(items)} (by {c.actor})")


@checklist.command("apply")
@click.option("--reason", required=True)
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def checklist_apply(c: Context, reason: str, yes: bool, as_json: bool) -> None:
    """Set the current phase's target flags (audited) and record the gate baselines."""
    from relayctl.core.checklist import apply, read_checklist
    from relayctl.core.phases import LAST_PHASE, phase

    client = c.client()
    state = read_checklist(client)
    p = phase(min(state.phase, LAST_PHASE))
    flags_txt = ", ".join(f"{k}={'on' if v else 'off'}"
                          for k, v in (p.target_flags or {}).items()) or "no flag changes"
    confirm_dangerous(f"apply phase {p.number} ({flags_txt}) on {c.redis_display}", yes)
    applied, changes = apply(client, actor=c.actor, reason=reason, metrics_urls=c.metrics_urls,
                             now=c.now(), seen_phase=state.phase)
    if as_json:
        emit_json({"phase": applied.number, "changes": [
            {"flag": ch.name, "before": ch.before, "after": ch.after} for ch in changes]})
    else:
        click.echo(f"phase {applied.number} applied: " + (", ".join(
            f"{ch.name} {ch.before}->{ch.after}" for ch in changes) or "baseline recorded"))


@checklist.command("advance")
@click.option("--override", "overrides", multiple=True, metavar="GATE",
              help="Advance despite this gate (repeatable; needs --reason).")
@click.option("--reason", default="", help="Why the override is safe (audited).")
@click.option("--window", type=click.FloatRange(min=0.1), default=None)
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def checklist_advance(c: Context, overrides: tuple[str, ...], reason: str,
                      window: float | None, yes: bool, as_json: bool) -> None:
    """Move to the next phase; refused while a gate fails unless overridden with a reason."""
    from relayctl.core.checklist import advance, read_checklist
    from relayctl.core.evaluation import gate_context

    if overrides and not reason.strip():
        raise UsageError("--override needs --reason")
    client = c.client()
    state = read_checklist(client)
    ctx = gate_context(c.gates(window), client, state, state.phase, now=c.now)
    if overrides:
        confirm_dangerous(f"override {', '.join(overrides)} and advance phase {state.phase}",
                          yes)
    result = advance(client, ctx, actor=c.actor, overrides=dict.fromkeys(overrides, reason),
                     now=c.now, seen_phase=state.phase)
    if as_json:
        emit_json({"advanced": result.advanced, "from": result.phase_from,
                   "to": result.phase_to, "blocking": result.blocking,
                   "open_items": result.open_items, "overridden": result.overridden,
                   "gates": [g.as_dict() for g in result.gates]})
    else:
        print_gates(result.gates, f"Phase {result.phase_from} gates")
        if result.advanced:
            click.echo(f"advanced: phase {result.phase_from} -> {result.phase_to}")
    if not result.advanced:
        parts = []
        if result.blocking:
            parts.append("gates not passing: " + ", ".join(result.blocking))
        if result.open_items:
            parts.append("items not checked off: " + ", ".join(result.open_items))
        raise UsageError(f"phase {result.phase_from} cannot advance: " + "; ".join(parts))


@click.command()
@click.argument("procedure")
@click.option("--reason", required=True)
@click.option("--yes", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rollback(c: Context, procedure: str, reason: str, yes: bool, as_json: bool) -> None:
    """Apply a documented rollback procedure's flag changes (read-routing, dual-write,
    fallback-disable, emergency, backfill)."""
    from relayctl.core.checklist import rollback as do_rollback
    from relayctl.core.phases import PROCEDURES

    client = c.client()
    proc = PROCEDURES.get(procedure)
    if proc is None:
        raise UsageError(f"unknown rollback procedure {procedure!r}: expected one of "
                         f"{', '.join(PROCEDURES)}")
    confirm_dangerous(f"run rollback '{proc.title}' on {c.redis_display}", yes)
    result = do_rollback(client, procedure, actor=c.actor, reason=reason, now=c.now())
    if as_json:
        emit_json({"procedure": result.procedure, "backfill_stopped": result.backfill_stopped,
                   "changes": [{"flag": ch.name, "before": ch.before, "after": ch.after}
                               for ch in result.changes], "steps": list(result.steps)})
        return
    click.echo(f"rollback {proc.title}:")
    for ch in result.changes:
        click.echo(f"  {ch.name}: {ch.before} -> {ch.after}")
    if proc.stop_backfill:
        click.echo(f"  backfill stop {'requested' if result.backfill_stopped else 'not needed'}")
    click.echo("remaining steps:")
    for step in result.steps:
        click.echo(f"  - {step}")
