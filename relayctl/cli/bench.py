"""`relayctl bench store | backfill | tui`: measurements with ratios to same-run baselines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from relayctl.cli.common import Context, emit_json


@click.group()
def bench() -> None:
    """Benchmarks that print ratios against baselines measured in the same run."""


@bench.command("store")
@click.option("--keys", type=click.IntRange(1000, 10_000_000), default=200_000,
              show_default=True, help="Total jobs for the large list_jobs measurement.")
@click.option("--samples", type=click.IntRange(100, 100_000), default=2000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_store_cmd(c: Context, keys: int, samples: int, as_json: bool) -> None:
    """get_job vs raw HGETALL, dual-write vs single-schema enqueue, list_jobs at N vs N/100.

    Writes only under a private bench:<run>: prefix and removes it afterwards.
    """
    from relayctl.core.bench import bench_store

    _run_bench(c, bench_store, as_json, keys=keys, samples=samples)


@bench.command("backfill")
@click.option("--keys", type=click.IntRange(1000, 10_000_000), default=200_000,
              show_default=True, help="Legacy jobs to seed (under a private prefix).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--workers", "workers", type=click.IntRange(1, 64), multiple=True,
              help="Redis Cluster: run the engine with each of these --workers values "
                   "(repeatable; default 1 and 3 on a cluster).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_backfill_cmd(c: Context, keys: int, batch: int, workers: tuple[int, ...],
                       as_json: bool) -> None:
    """relayctl's keys/s vs a server-side Lua probe and a naive per-key loop, same data.

    On a Redis Cluster: the engine at each --workers value, with ratios to the first.
    """
    from relayctl.core.bench import bench_backfill
    from relayctl.core.cluster import is_cluster

    client = c.client()
    chosen = workers or ((1, 3) if is_cluster(client) else (1,))
    _run_bench(c, bench_backfill, as_json, keys=keys, batch=batch, workers=chosen)


@bench.command("tui")
@click.option("--keys", type=click.IntRange(1000, 10_000_000), default=100_000,
              show_default=True, help="Extra keys to add between the two measurements.")
@click.option("--ticks", type=click.IntRange(5, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_tui_cmd(c: Context, keys: int, ticks: int, as_json: bool) -> None:
    """Mean console refresh tick, against a PING and with N more keys present."""
    from relayctl.core.bench import bench_tui

    _run_bench(c, bench_tui, as_json, keys=keys, ticks=ticks, metrics_urls=c.metrics_urls,
               redis_url=c.redis_url)


def _run_bench(c: Context, fn: Callable[..., Any], as_json: bool, **kwargs: Any) -> None:
    """Progress on stderr unless --json, then the measurements and ratios."""
    progress = None if as_json else (lambda m: click.echo(f"... {m}", err=True))
    _render_bench(fn(c.client(), progress=progress, **kwargs).as_dict(), as_json)


def _render_bench(data: dict, as_json: bool) -> None:
    if as_json:
        emit_json(data)
        return
    click.echo(f"bench {data['bench']}")
    for k, v in data["measurements"].items():
        click.echo(f"  {k:32s} {v:12.1f}")
    for k, v in data["ratios"].items():
        target = data["targets"].get(k, "")
        click.echo(f"  ratio {k:26s} {v:8.2f}   target {target}")
    for note in data["notes"]:
        click.echo(f"  note: {note}")
