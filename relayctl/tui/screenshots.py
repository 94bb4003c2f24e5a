"""Regenerate screenshots/ with the console's own SVG export, on the embedded demo stack."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.census import run_census
from relayctl.core.checklist import mark
from relayctl.core.connection import connect
from relayctl.core.demo import seed_pre_migration, start_embedded_redis
from relayctl.core.flags import set_flag
from relayctl.core.jobs import JobStore
from relayctl.core.keys import CHECKLIST_KEY, KeySchema
from relayctl.core.metrics import Metrics
from relayctl.core.simulate import Simulator, workspace_names
from relayctl.tui.app import RelayApp

SHOTS = ("dashboard-160x48.svg", "dashboard-80x24.svg", "checklist-160x48.svg",
         "confirmation-160x48.svg", "help-160x48.svg", "disconnected-160x48.svg")


async def _shoot(outdir: Path) -> list[Path]:
    embedded = start_embedded_redis()
    names = workspace_names(4)
    metrics = Metrics(labelled_workspaces=names)
    server = metrics.serve(0)
    client = connect(embedded.url)
    schema = KeySchema()
    summary = seed_pre_migration(client, schema, names, jobs=6000)
    mark(client, ["env-dual-off", "env-prefers-on", "env-fallback-on"], actor="sre-alice",
         reason="reviewed")
    for flag, value, why in (("READ_PREFERS_NEW", True, "phase 1: read-routing"),
                             ("AI_JOBS_NEW_SCHEMA", True, "phase 3: dual-write")):
        set_flag(client, flag, value, actor="sre-alice", reason=why)
    run_census(client, schema)
    client.hset(CHECKLIST_KEY, "phase", "4")  # staged: the walkthrough is at the backfill
    store = JobStore(client, schema=schema, metrics=metrics)
    sim = Simulator(store, rate=60, workspaces=names, seed=5, known_jobs=summary.jobs[-3000:])
    sim.start()
    engine = Backfill(connect(embedded.url), BackfillOptions(execute=True, rps=250, batch=100),
                      schema=schema)
    worker = threading.Thread(target=engine.run, daemon=True)
    worker.start()
    written: list[Path] = []
    outdir.mkdir(parents=True, exist_ok=True)

    def save(app: RelayApp, name: str) -> None:
        written.append(Path(app.save_screenshot(name, str(outdir))))

    try:
        app = RelayApp(redis_url=embedded.url, metrics_urls=[server.url], actor="sre-alice",
                       refresh_s=0.5)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(6)
            save(app, "dashboard-160x48.svg")
            await pilot.press("c")
            await pilot.pause(1.5)
            save(app, "checklist-160x48.svg")
            await pilot.press("escape")
            await pilot.press("question_mark")
            await pilot.pause(0.5)
            save(app, "help-160x48.svg")
            await pilot.press("escape")
            await pilot.press("2")
            await pilot.pause(0.5)
            save(app, "confirmation-160x48.svg")
            await pilot.press("escape")
            engine.request_stop()
            worker.join(timeout=10)
            sim.stop()
            store.close()
            embedded.close()
            await pilot.pause(5)
            save(app, "disconnected-160x48.svg")
        embedded = start_embedded_redis(embedded.port)
        client = connect(embedded.url)
        seed_pre_migration(client, schema, names, jobs=2000)
        run_census(client, schema)
        small = RelayApp(redis_url=embedded.url, metrics_urls=[server.url], actor="sre-alice")
        async with small.run_test(size=(80, 24)) as pilot:
            await pilot.pause(3)
            save(small, "dashboard-80x24.svg")
    finally:
        sim.stop()
        server.close()
        embedded.close()
    return written


def take_screenshots(outdir: str | Path = "screenshots") -> list[Path]:
    return asyncio.run(_shoot(Path(outdir)))
