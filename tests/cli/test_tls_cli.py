"""The CLI over rediss:// (SPEC §9, §10): --tls-ca / --tls-cert / --tls-key, wrong CA (exit 4),
missing files (exit 2), and the plaintext policy for non-loopback hosts."""

from __future__ import annotations

import json
import time

import pytest


@pytest.fixture
def tls_cli(run_cli, tls_redis_url, tls_files, monkeypatch):
    for var in ("RELAYCTL_TLS_CA", "RELAYCTL_TLS_CERT", "RELAYCTL_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)

    def run(*args: str):
        return run_cli("--redis-url", tls_redis_url, "--tls-ca", str(tls_files.ca),
                       "--actor", "tls-test", *args)

    return run


def test_flags_set_and_read_over_tls(tls_cli, tls_redis_server):
    res = tls_cli("flags", "set", "AI_JOBS_NEW_SCHEMA", "on", "--reason", "tls", "--yes")
    assert res.code == 0, res.err
    res = tls_cli("flags", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert data["redis"].startswith("rediss://127.0.0.1:")
    row = next(r for r in data["flags"] if r["flag"] == "AI_JOBS_NEW_SCHEMA")
    assert row["stored"] == "on" and row["changed_by"] == "tls-test"
    admin = tls_redis_server.admin(decode_responses=True)
    assert admin.hget("relay:flags", "AI_JOBS_NEW_SCHEMA") == "on"
    admin.close()


@pytest.mark.parametrize("args,codes", [
    (("census", "--json"), {0}),
    (("check", "--json"), {0, 1, 3}),
    (("backfill", "--dry-run", "--json"), {0}),
    (("backfill", "status", "--json"), {0, 3}),
    (("status", "--json"), {0, 1, 3}),
    (("verify", "--json"), {0, 1}),
])
def test_reporting_commands_over_tls(tls_cli, args, codes):
    res = tls_cli(*args)
    assert res.code in codes, (res.code, res.err)
    assert "error" not in res.err.lower()


def test_redis_tls_gate_passes_over_rediss(tls_cli):
    res = tls_cli("check", "--all", "--json")
    assert "rediss://" in res.out


def test_wrong_ca_fails_with_one_line_and_exit_4(run_cli, tls_redis_url, tls_files):
    res = run_cli("--redis-url", tls_redis_url, "--tls-ca", str(tls_files.other_ca), "flags")
    assert res.code == 4
    assert res.err.count("\n") == 1 and res.err.startswith("relayctl: error:")
    assert "Traceback" not in res.err


def test_no_ca_fails_exit_4(run_cli, tls_redis_url, monkeypatch):
    monkeypatch.delenv("RELAYCTL_TLS_CA", raising=False)
    res = run_cli("--redis-url", tls_redis_url, "flags")
    assert res.code == 4 and res.err.count("\n") == 1


def test_missing_tls_file_is_usage_error(run_cli, tls_redis_url, tmp_path):
    for flag in ("--tls-ca", "--tls-cert"):
        extra = ("--tls-key", str(tmp_path / "k.pem")) if flag == "--tls-cert" else ()
        res = run_cli("--redis-url", tls_redis_url, flag, str(tmp_path / "missing.pem"),
                      *extra, "flags")
        assert res.code == 2, res.err
        assert res.err.count("\n") == 1 and "no such file" in res.err


def test_env_variables_work_like_the_flags(run_cli, tls_redis_url, tls_files, monkeypatch):
    monkeypatch.setenv("RELAYCTL_TLS_CA", str(tls_files.ca))
    res = run_cli("--redis-url", tls_redis_url, "flags", "--json")
    assert res.code == 0, res.err


def test_client_certificate_when_the_server_requires_one(run_cli, tls_mtls_redis_server,
                                                         tls_files, monkeypatch):
    for var in ("RELAYCTL_TLS_CA", "RELAYCTL_TLS_CERT", "RELAYCTL_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    url = tls_mtls_redis_server.url
    res = run_cli("--redis-url", url, "--tls-ca", str(tls_files.ca),
                  "--tls-cert", str(tls_files.client_cert),
                  "--tls-key", str(tls_files.client_key), "census", "--json")
    assert res.code == 0, res.err
    res = run_cli("--redis-url", url, "--tls-ca", str(tls_files.ca), "census")
    assert res.code == 4 and res.err.count("\n") == 1


@pytest.mark.parametrize("args", [("flags",), ("status",), ("census",), ("tui",)])
def test_plaintext_to_non_loopback_is_refused(run_cli, args):
    res = run_cli("--redis-url", "redis://10.255.0.1:6380/0", *args)
    assert res.code == 2
    assert res.err.count("\n") == 1
    assert "plaintext" in res.err and "--allow-plaintext" in res.err


def test_allow_plaintext_lifts_the_refusal(run_cli):
    res = run_cli("--allow-plaintext", "--redis-url", "redis://10.255.0.1:6380/0", "flags")
    # whatever answers (or not) at that address in the test network, it is not the refusal
    assert res.code in (1, 4)
    assert "plaintext" not in res.err and res.err.count("\n") == 1


@pytest.mark.parametrize("via_env", [False, True])
def test_console_connects_over_tls(tls_redis_url, tls_files, monkeypatch, via_env):
    """RelayApp gets the same TLS settings (explicitly from the CLI, or from the env)."""
    from relayctl.core.connection import TLSOptions
    from relayctl.tui.app import RelayApp
    from tests.tui.kit import run_pilot

    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    for var in ("RELAYCTL_TLS_CA", "RELAYCTL_TLS_CERT", "RELAYCTL_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    if via_env:
        monkeypatch.setenv("RELAYCTL_TLS_CA", str(tls_files.ca))
        app = RelayApp(redis_url=tls_redis_url, refresh_s=0.5)
    else:
        app = RelayApp(redis_url=tls_redis_url, refresh_s=0.5,
                       tls=TLSOptions(ca=str(tls_files.ca)))
    seen: list[str] = []

    async def scenario(pilot) -> None:
        deadline = time.monotonic() + 15
        while app.state.redis_status != "CONNECTED" and time.monotonic() < deadline:
            await pilot.pause(0.1)
        seen.append(app.state.redis_status + " " + app.state.redis_error)

    run_pilot(app, scenario)
    assert seen == ["CONNECTED "]
