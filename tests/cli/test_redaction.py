"""Redaction (SPEC §9): a password in the Redis URL and a secret in job params never appear in
stdout, stderr or DEBUG logs of any command, nor in the audit stream or /metrics of a
simulate run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from relayctl.core.jobs import JobStore
from relayctl.core.keys import AUDIT_KEY
from relayctl.core.metrics import Metrics
from tests.conftest import free_port

PASSWORD = "SECRETPW"  # the strings this test hunts for
TOKEN = "SECRETTOKEN"
USER = "redact-user"
RELAYCTL = [sys.executable, "-m", "relayctl"]


@pytest.fixture
def secret_url(r: redis.Redis, redis_server) -> Iterator[str]:
    r.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "&*",
                      "+@all")
    store = JobStore(r, background=False, pins={}, metrics=Metrics())
    for i in range(3):
        store.enqueue(f"ws-{i}", action_provider="openai", action_name="draft",
                      params={"api_key": TOKEN, "n": i})
    store.close()
    yield f"redis://{USER}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    r.execute_command("ACL", "DELUSER", USER)


def relayctl(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYCTL_TLS_")}
    env.update(REDIS_URL=url, RELAYCTL_LOG="DEBUG", RELAYCTL_ACTOR="redaction-test")
    return subprocess.run([*RELAYCTL, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_clean(what: str, *texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, TOKEN):
            assert secret not in text, f"{secret} leaked by {what}: {text[-2000:]}"


COMMANDS = [
    ("flags",),
    ("flags", "--json"),
    ("flags", "set", "AI_JOBS_NEW_SCHEMA", "on", "--reason", "redaction", "--yes"),
    ("status",),
    ("status", "--json"),
    ("check",),
    ("check", "--all", "--json"),
    ("checklist", "show"),
    ("checklist", "show", "--json"),
    ("census",),
    ("census", "--json"),
    ("verify",),
    ("verify", "--json"),
    ("backfill", "--dry-run"),
    ("backfill", "--dry-run", "--json"),
    ("backfill", "status"),
    ("backfill", "status", "--json"),
    ("export", "alerts"),
    ("bench", "tui", "--keys", "1000", "--ticks", "5"),
    ("acl",),
]


def test_every_command_keeps_the_password_and_the_token_out(secret_url, r):
    seen = []
    for args in COMMANDS:
        proc = relayctl(secret_url, *args)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.returncode in (0, 1, 3), (args, proc.returncode, proc.stderr)
        assert_clean(" ".join(args), proc.stdout, proc.stderr)
        seen.append(proc.stdout + proc.stderr)
    # the URL is shown, redacted, somewhere (so the test would notice a leak)
    assert any("***@127.0.0.1" in text for text in seen)
    assert_clean("audit stream", repr(r.xrange(AUDIT_KEY)))


@pytest.mark.parametrize("make_url", [
    lambda port: f"redis://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/0",  # nothing listens
    lambda port: f"redis://{USER}:wrong-{PASSWORD}@127.0.0.1:{port}/0",  # bad credentials
    lambda port: f"redis://{USER}:{PASSWORD}@127.0.0.1:notaport/0",  # unparseable
    lambda port: f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/0",  # wrong scheme
    lambda port: f"redis://{USER}:{PASSWORD}@10.255.0.1:{port}/0",  # plaintext refused
    lambda port: f"redis://127.0.0.1:{port}/0?username={USER}&password=x{PASSWORD}",  # query
])
def test_failing_connections_keep_the_password_out(secret_url, redis_server, make_url):
    url = make_url(redis_server.port)
    for args in (("flags",), ("status", "--json"), ("census",)):
        proc = relayctl(url, *args, timeout=60)
        assert proc.returncode in (1, 2, 4), (args, proc.returncode, proc.stderr)
        assert proc.stderr.startswith("relayctl: error:") or "Error" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert_clean(f"{url.split('@')[-1]} {args}", proc.stdout, proc.stderr)


def test_password_given_on_the_command_line_is_redacted_in_output(secret_url, redis_server):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["RELAYCTL_LOG"] = "DEBUG"
    proc = subprocess.run([*RELAYCTL, "--redis-url", secret_url, "flags", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert_clean("flags --redis-url", proc.stdout, proc.stderr)
    assert "***@127.0.0.1" in proc.stdout


def test_simulate_keeps_secrets_out_of_output_audit_and_metrics(secret_url, r):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYCTL_TLS_")}
    env.update(REDIS_URL=secret_url, RELAYCTL_LOG="DEBUG")
    proc = subprocess.Popen([*RELAYCTL, "simulate", "--rate", "200", "--workspaces", "3",
                             "--duration", "4", "--metrics-port", str(port), "--seed", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    bodies = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=2) as resp:
                    bodies.append(resp.read().decode())
                if len(bodies) >= 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert bodies and "relay_" in bodies[-1]
    assert_clean("simulate output", out, err)
    assert_clean("simulate /metrics", *bodies)
    assert_clean("audit stream", repr(r.xrange(AUDIT_KEY)))
    # the jobs carrying the token are still there (the test would see a leak of them)
    assert any(TOKEN in (r.hget(k, "params") or "") for k in r.scan_iter(match="ai:jobs:*"))


def test_console_screenshot_keeps_secrets_out(secret_url, r, monkeypatch):
    """The console, connected with the password and showing the token's jobs' workspaces,
    draws neither (header, audit, flags: the whole SVG screenshot)."""
    from relayctl.tui.app import RelayApp
    from tests.tui.kit import run_pilot

    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    app = RelayApp(redis_url=secret_url, refresh_s=0.5)
    shots: list[str] = []

    async def scenario(pilot) -> None:
        deadline = time.monotonic() + 15
        while app.state.redis_status != "CONNECTED" and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert app.state.redis_status == "CONNECTED", app.state.redis_error
        await pilot.pause(0.3)
        shots.append(app.export_screenshot())

    run_pilot(app, scenario)
    assert shots and "127.0.0.1" in shots[0]
    assert_clean("console screenshot", *shots)
