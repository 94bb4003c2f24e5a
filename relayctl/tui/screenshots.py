"""Regenerate screenshots/ with the console's own SVG export, on the embedded demo stack."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from relayctl.core import audit
from relayctl.core.backfill import BackfillOptions, spawn_engine
from relayctl.core.census import run_census
from relayctl.core.checklist import mark
from relayctl.core.connection import connect
from relayctl.core.demo import start_demo
from relayctl.core.flags import set_flag
from relayctl.core.keys import CHECKLIST_KEY, KeySchema
from relayctl.tui.app import RelayApp

SCREENS = ("dashboard", "checklist", "help", "confirmation", "audit-zoom", "dead-backfill",
           "disconnected", "backfill-form")
SIZES = ((160, 48), (80, 24))
SHOTS = tuple(f"{name}-{w}x{h}.svg" for name in SCREENS for w, h in SIZES)


def _history(client: object) -> None:
    """A realistic audit log: weeks of checklist, flag and backfill entries, long JSON."""
    for i in range(12):
        audit.record(client, "sre-bob" if i % 2 else "sre-alice", "checklist.apply",  # type: ignore[arg-type]
                     f"phase {i % 4}", "", json.dumps(
                         {"AI_JOBS_NEW_SCHEMA": i % 4 >= 3, "READ_PREFERS_NEW": True,
                          "READ_FALLBACK_OLD": True, "baseline": "recorded", "window": "1h"}),
                     "change CHG-4211 approved in the weekly review")


async def _wait(pilot: object, predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        await pilot.pause(0.2)  # type: ignore[attr-defined]


async def _shoot(outdir: Path) -> list[Path]:
    schema = KeySchema()
    stack = start_demo(schema, speed=1, jobs=6000)
    client = connect(stack.url)
    written: list[Path] = []
    outdir.mkdir(parents=True, exist_ok=True)
    pids: list[int] = []

    async def save(app: RelayApp, pilot: object, name: str) -> None:
        """The screen at both sizes: 160x48, then 80x24 from the same state, then back."""
        for i, (w, h) in enumerate(SIZES):
            if i:
                await pilot.resize_terminal(w, h)  # type: ignore[attr-defined]
                await pilot.pause(0.6)  # type: ignore[attr-defined]
            written.append(Path(app.save_screenshot(f"{name}-{w}x{h}.svg", str(outdir))))
        await pilot.resize_terminal(*SIZES[0])  # type: ignore[attr-defined]
        await pilot.pause(0.6)  # type: ignore[attr-defined]

    try:
        _history(client)
        mark(client, ["env-dual-off", "env-prefers-on", "env-fallback-on"], actor="sre-alice",
             reason="reviewed")
        for flag, value, why in (("READ_PREFERS_NEW", True, "phase 1: read-routing"),
                                 ("AI_JOBS_NEW_SCHEMA", True, "phase 3: dual-write")):
            set_flag(client, flag, value, actor="sre-alice", reason=why)
        run_census(client, schema)
        client.hset(CHECKLIST_KEY, "phase", "4")  # staged: the walkthrough is at the backfill
        os.environ["RELAYCTL_BACKFILL_LEASE_MS"] = "1500"  # the killed engine goes DEAD soon
        pids.append(spawn_engine(stack.url, BackfillOptions(execute=True, rps=60, batch=20),
                                 actor="sre-alice", reason="phase 4 campaign", client=client))
        app = RelayApp(redis_url=stack.url, metrics_urls=[stack.metrics_url],
                       actor="sre-alice", refresh_s=0.5, links=[("redis", stack.url),
                                                                ("metrics", stack.metrics_url)])
        async with app.run_test(size=(160, 48)) as pilot:
            await _wait(pilot, lambda: app.state.engine_alive and app.state.rates.seconds
                        and int(app.state.backfill.get("scanned", 0) or 0) >= 200)
            await pilot.pause(4)
            await save(app, pilot, "dashboard")
            await pilot.press("c")
            await pilot.pause(1.0)
            await save(app, pilot, "checklist")
            await pilot.press("escape", "question_mark")
            await pilot.pause(0.5)
            await save(app, pilot, "help")
            await pilot.press("escape", "f", "down", "enter")
            await pilot.pause(0.5)
            await save(app, pilot, "confirmation")
            await pilot.press("escape", "8", "z")
            await pilot.pause(0.5)
            await save(app, pilot, "audit-zoom")
            await pilot.press("escape")
            os.kill(pids[0], signal.SIGKILL)  # an engine that dies mid-run: DEAD, no rate
            await _wait(pilot, lambda: not app.state.engine_alive)
            await pilot.press("4")
            await pilot.pause(1.5)
            await save(app, pilot, "dead-backfill")
            stack.redis.close()
            await pilot.pause(4)
            await save(app, pilot, "disconnected")
    finally:
        os.environ.pop("RELAYCTL_BACKFILL_LEASE_MS", None)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        stack.close()
    stack = start_demo(schema, speed=1, jobs=3000)
    try:
        client = connect(stack.url)
        _history(client)
        run_census(client, schema)
        form = RelayApp(redis_url=stack.url, metrics_urls=[stack.metrics_url],
                        actor="sre-alice", refresh_s=0.5)
        async with form.run_test(size=SIZES[0]) as pilot:
            await pilot.pause(2)
            await pilot.press("b")
            await pilot.pause(0.5)
            await save(form, pilot, "backfill-form")
    finally:
        stack.close()
    return written


def take_screenshots(outdir: str | Path = "screenshots") -> list[Path]:
    return asyncio.run(_shoot(Path(outdir)))
