"""Rough connection strings (issue 14): unknown parameters are one-line usage errors naming
them, disabled certificate verification connects with a warning and fails the redis_tls gate,
and no byte of a URL's credentials is ever printed, however malformed the URL."""

from __future__ import annotations

import json

import pytest

from relayctl.core.connection import parse_target, redact_url
from relayctl.core.errors import UsageError

SECRET = "Zq@Xv:Wk/Jm?Hy#Tb"  # unencoded @ : / ? # in a password


def tls_gate(out: str) -> dict:
    return next(g for p in json.loads(out)["phases"] for g in p["gates"]
                if g["gate"] == "redis_tls")


def windows(text: str, n: int = 2) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


@pytest.mark.parametrize("param", ["sentinel=mymaster", "ssl_cert_req=none"])
def test_an_unknown_query_parameter_is_a_one_line_usage_error_naming_it(run_cli, redis_url,
                                                                        param):
    res = run_cli("--redis-url", f"{redis_url}?{param}", "flags")
    assert res.code == 2, res.err
    assert res.err.count("\n") == 1 and "Traceback" not in res.err
    assert f"unknown parameter '{param.split('=')[0]}'" in res.err


def test_a_password_with_unencoded_reserved_characters_is_never_echoed(run_cli, redis_server):
    url = f"redis://user:{SECRET}@127.0.0.1:{redis_server.port}/0"
    res = run_cli("--redis-url", url, "flags")
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert "percent-encode" in res.err
    leaked = [w for w in windows(SECRET) if w in res.out + res.err]
    assert leaked == [], (leaked, res.err)


@pytest.mark.parametrize("password", [
    SECRET, "p@ss:w/rd", "a/b@c", "x?y@z", "#frag@", "@@@", "::@//", "sp ace@x", "ü@ñ/ß",
    "50%@x", "[::1]@h",
])
@pytest.mark.parametrize("shape", [
    "redis://u:{p}@127.0.0.1:6380/0", "rediss://u:{p}@h:1/0?cluster=yes", "redis://{p}@h/0",
    "redis+sentinel://u:{p}@h1:26379,h2:26379/mymaster/0", "redis://u:{p}@h:notaport/0",
    "unix://u:{p}@/tmp/redis.sock", "redis://u:{p}@h:1/0?ssl_cert_req=none",
])
def test_no_credential_byte_appears_in_any_error_or_display(shape, password):
    def shown(url: str) -> str:
        try:
            text = parse_target(url, allow_plaintext=True).display
        except UsageError as exc:
            text = str(exc)
            assert "\n" not in text
        return text + " " + redact_url(url)

    text = shown(shape.format(p=password))
    # what the same URL shows with a password of reserved characters only: scheme, host and
    # message words, which any password may happen to share three characters with
    public = shown(shape.format(p="@/?#")) + shown(shape.format(p="x"))
    secret = [w for w in windows(password, 3) if w not in public]
    assert [w for w in secret if w in text] == [], text


def test_disabled_certificate_verification_connects_warns_and_fails_the_tls_gate(
        run_cli, tls_redis_url, tls_files, monkeypatch):
    for var in ("RELAYCTL_TLS_CA", "RELAYCTL_TLS_CERT", "RELAYCTL_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    url = f"{tls_redis_url}?ssl_cert_reqs=none"
    # no CA that signed the server: only an unverified connection can succeed
    res = run_cli("--redis-url", url, "--tls-ca", str(tls_files.other_ca), "check", "--all",
                  "--json")
    assert res.code in (0, 1, 3), res.err
    assert "warning: TLS without certificate verification" in res.err
    gate = tls_gate(res.out)
    assert gate["status"] == "FAIL", gate
    assert "TLS without certificate verification" in json.dumps(gate)
    verified = run_cli("--redis-url", tls_redis_url, "--tls-ca", str(tls_files.ca), "check",
                       "--all", "--json")
    assert tls_gate(verified.out)["status"] == "PASS"
