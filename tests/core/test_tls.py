"""TLS connections (SPEC §9): rediss:// with a test CA, client certificates, wrong CA, missing
files, the plaintext policy, and TLS settings reaching spawned backfill engines."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from relayctl.core.backfill import BackfillOptions, spawn_engine
from relayctl.core.connection import TLS_ENV, TLSOptions, connect, parse_target
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.flags import DUAL_WRITE, set_flag


def test_connect_over_tls_with_the_test_ca(tls_redis_url, tls_files):
    client = connect(tls_redis_url, tls=TLSOptions(ca=str(tls_files.ca)))
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == "v"
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(tls_files.ca)
    client.close()


def test_tls_options_default_to_the_environment(tls_redis_url, tls_files, monkeypatch):
    monkeypatch.setenv("RELAYCTL_TLS_CA", str(tls_files.ca))
    assert TLSOptions.from_env() == TLSOptions(ca=str(tls_files.ca))
    assert connect(tls_redis_url).ping()


def test_wrong_ca_is_unreachable_with_one_line(tls_redis_url, tls_files):
    with pytest.raises(RedisUnavailableError) as info:
        connect(tls_redis_url, tls=TLSOptions(ca=str(tls_files.other_ca)))
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 4


def test_missing_file_is_a_usage_error(tls_redis_url, tmp_path):
    missing = str(tmp_path / "nope.pem")
    for opts in (TLSOptions(ca=missing), TLSOptions(cert=missing, key=missing)):
        with pytest.raises(UsageError) as info:
            connect(tls_redis_url, tls=opts)
        assert "no such file" in str(info.value) and info.value.exit_code == 2


def test_cert_without_key_is_a_usage_error(tls_redis_url, tls_files):
    with pytest.raises(UsageError, match="together"):
        connect(tls_redis_url, tls=TLSOptions(ca=str(tls_files.ca),
                                              cert=str(tls_files.client_cert)))


def test_client_certificate_is_used_when_required(tls_mtls_redis_server, tls_files):
    url = tls_mtls_redis_server.url
    with_cert = TLSOptions(ca=str(tls_files.ca), cert=str(tls_files.client_cert),
                           key=str(tls_files.client_key))
    assert connect(url, tls=with_cert).ping()
    with pytest.raises(RedisUnavailableError):
        connect(url, tls=TLSOptions(ca=str(tls_files.ca)))


def test_plaintext_to_non_loopback_is_refused_unless_allowed():
    with pytest.raises(UsageError) as info:
        parse_target("redis://10.255.0.1:6380/0")
    assert "\n" not in str(info.value) and "--allow-plaintext" in str(info.value)
    assert parse_target("redis://10.255.0.1:6380/0", allow_plaintext=True).host == "10.255.0.1"
    assert parse_target("rediss://10.255.0.1:6380/0").tls
    assert not parse_target("redis://127.0.0.1:6380/0").tls


def test_tls_env_round_trip():
    opts = TLSOptions(ca="/a", cert="/b", key="/c")
    env = opts.env()
    assert env == {TLS_ENV["ca"]: "/a", TLS_ENV["cert"]: "/b", TLS_ENV["key"]: "/c"}
    assert TLSOptions.from_env(env) == opts
    assert TLSOptions().env() == {}


def test_spawned_engine_gets_tls_through_the_environment_not_argv(
        tls_redis_url, tls_files, monkeypatch):
    """The engine reaches the TLS server only if the CA travelled; argv never carries it."""
    monkeypatch.delenv("RELAYCTL_TLS_CA", raising=False)
    seen: dict = {}
    real_popen = subprocess.Popen

    def spy(args, **kwargs):
        seen["args"], seen["env"] = list(args), dict(kwargs.get("env") or {})
        return real_popen(args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    tls = TLSOptions(ca=str(tls_files.ca))
    client = connect(tls_redis_url, tls=tls)
    set_flag(client, DUAL_WRITE, True, actor="pytest", reason="test")
    pid = spawn_engine(tls_redis_url, BackfillOptions(execute=True), actor="pytest",
                       reason="tls test", client=client, tls=tls)
    assert seen["env"]["RELAYCTL_TLS_CA"] == str(tls_files.ca)
    assert seen["env"]["REDIS_URL"] == tls_redis_url
    assert not any(str(tls_files.ca) in a or "rediss" in a for a in seen["args"])
    # the engine finished its dry run over TLS: it recorded a state
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break
        time.sleep(0.1)
    state = {k: v for k, v in client.hgetall("relay:backfill:state").items()}
    assert state, "the spawned engine wrote no backfill state over TLS"
    client.close()


def test_engine_subprocess_over_tls_via_env(tls_redis_url, tls_files):
    env = {k: v for k, v in os.environ.items() if k not in TLS_ENV.values()}
    env.update(REDIS_URL=tls_redis_url, RELAYCTL_TLS_CA=str(tls_files.ca))
    proc = subprocess.run([sys.executable, "-m", "relayctl", "flags", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    env.pop("RELAYCTL_TLS_CA")
    proc = subprocess.run([sys.executable, "-m", "relayctl", "flags", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4 and proc.stderr.count("\n") == 1
