"""Defect 8: one age style on one clock. A census taken three hours ago reads "3.0h ago" in
`relayctl status`, in the console's keyspace panel and in the census gate's detail; it read
"census 14852 min old" in one place and "10.3d ago" in another."""

from __future__ import annotations

import time

from textual.pilot import Pilot

from relayctl.core.census import run_census
from relayctl.core.keys import KeySchema
from tests.tui.kit import live_app, relayctl, rendered_text, run_pilot, seed_legacy, wait_until

THREE_HOURS = 3 * 3600


def test_a_census_three_hours_old_reads_the_same_in_the_cli_and_the_console(redis_url, r):
    seed_legacy(r, 50)
    run_census(r, KeySchema(), now=lambda: time.time() - THREE_HOURS)
    status = relayctl(redis_url, "status")
    assert "census 3.0h ago" in status.stdout, status.stdout
    assert " min " not in status.stdout
    app = live_app(redis_url)
    seen: dict[str, str] = {}

    async def scenario(pilot: Pilot) -> None:
        def keyspace() -> str:
            return rendered_text(pilot.app.screen.query_one("#keyspace-body").content)

        await wait_until(pilot, lambda: "census" in keyspace() and app.state.gates, "a refresh")
        seen["panel"] = keyspace()
        seen["gates"] = " | ".join(g.detail for g in app.state.gates if "census" in g.detail)

    run_pilot(app, scenario)
    assert "census 3.0h ago" in seen["panel"], seen["panel"]
    assert "3.0h" in seen["gates"], seen["gates"]
