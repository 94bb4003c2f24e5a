"""Hostile input, property-based (hypothesis) over the real CLI entry point and the core.

Every hostile value must give: a non-zero exit in {1, 2, 3, 4}; no Python traceback; one
stderr line starting "relayctl: error:" when the exit is 2 or 4; no change in Redis (a digest
of every key's TYPE + DUMP before and after); and an answer within CALL_BOUND_S.

Complements (does not repeat) tests/core/test_validate.py, test_cursor.py, test_archive.py,
test_gates.py and test_config.py: those call the core with hand-picked damage; here generated
values go through argv, files and HTTP into the whole CLI.

The number of hostile inputs tried per category is written to hostile-input-counts.json in
the session's pytest tmp dir and printed by the last test (for the issue's closing note).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relayctl.core.connection import parse_target
from relayctl.core.errors import RelayError, UsageError
from relayctl.core.flags import FLAG_NAMES
from relayctl.core.jobs import STATUSES, JobStore
from relayctl.core.phases import find_item
from relayctl.core.validate import is_valid_job_id, is_valid_workspace_id

CALL_BOUND_S = 15.0
COUNTS: Counter[str] = Counter()

FAST = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SLOW = settings(max_examples=3, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# argv text: anything, including control characters, NUL and lone surrogates (surrogateescape)
argv_text = st.text(min_size=0, max_size=80)


def digest(url: str) -> str:
    """TYPE + DUMP (+ PTTL presence) of every key: any write shows up as a different digest."""
    client = redis.Redis.from_url(url)
    try:
        h = hashlib.sha256()
        for key in sorted(client.scan_iter(count=1000)):
            h.update(key + b"\0" + client.type(key) + b"\0" + (client.dump(key) or b"") + b"\1")
        return h.hexdigest()
    finally:
        client.close()


def seed(url: str) -> None:
    """A little state so that 'nothing changed' is checked against something."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.hset("ai:jobs:seeded1", mapping={"job_id": "seeded1", "workspace_id": "ws1",
                                                 "status": "pending"})
        client.hset("relay:flags", mapping={"AI_JOBS_NEW_SCHEMA": "on"})
        client.hset("relay:checklist", mapping={"phase": "1"})
        client.xadd("relay:audit", {"actor": "seed", "action": "seed"})
    finally:
        client.close()


def assert_hostile(res, category: str, *, allow: frozenset[int] = frozenset({1, 2, 3, 4}),
                   elapsed: float) -> None:
    COUNTS[category] += 1
    assert "Traceback" not in res.err, res.err
    assert res.code in allow and res.code != 0, (category, res.code, res.out, res.err)
    assert elapsed < CALL_BOUND_S, (category, elapsed)
    if res.code in (2, 4):
        lines = res.err.strip("\n").split("\n")
        assert len(lines) == 1, (category, res.err)
        assert lines[0].startswith("relayctl: error:"), (category, res.err)


@pytest.fixture
def seeded(redis_url: str) -> str:
    seed(redis_url)
    return redis_url


def timed(run_cli, *args: str):
    t0 = time.monotonic()
    res = run_cli(*args)
    return res, time.monotonic() - t0


def run_unchanged(run_cli, url: str, category: str, *args: str, **kw) -> None:
    before = digest(url)
    res, elapsed = timed(run_cli, "--redis-url", url, *args)
    assert_hostile(res, category, elapsed=elapsed, **kw)
    assert digest(url) == before, (category, args, "Redis changed")


# ---------------------------------------------------------------- identifiers in argv ----


@FAST
@given(ws=argv_text.filter(lambda s: not is_valid_workspace_id(s)))
def test_workspace_backfill_dry_run(run_cli, seeded, ws):
    run_unchanged(run_cli, seeded, "workspace: backfill --dry-run",
                  "backfill", "--dry-run", f"--workspace={ws}")


@FAST
@given(ws=argv_text.filter(lambda s: not is_valid_workspace_id(s)))
def test_workspace_verify(run_cli, seeded, ws):
    run_unchanged(run_cli, seeded, "workspace: verify", "verify", f"--workspace={ws}")


@FAST
@given(ws=argv_text.filter(lambda s: not is_valid_workspace_id(s)))
def test_workspace_verify_repair(run_cli, seeded, ws):
    run_unchanged(run_cli, seeded, "workspace: verify --repair",
                  "verify", "--repair", "--yes", f"--workspace={ws}")


@FAST
@given(items=st.lists(argv_text, min_size=1, max_size=3))
def test_checklist_mark_item_ids(run_cli, seeded, items):
    assume(any(find_item(i) is None for i in items))
    run_unchanged(run_cli, seeded, "checklist mark item id",
                  "checklist", "mark", "--reason", "fuzz", "--", *items)


@FAST
@given(name=argv_text.filter(lambda s: s.strip().upper() not in FLAG_NAMES))
def test_flags_set_names(run_cli, seeded, name):
    run_unchanged(run_cli, seeded, "flags set name",
                  "flags", "set", "--reason", "fuzz", "--yes", "--", name, "on")


@FAST
@given(value=argv_text | st.integers().map(str))
def test_phase_values(run_cli, seeded, value):
    assume(value.strip() not in {str(n) for n in range(7)})
    run_unchanged(run_cli, seeded, "--phase (check)", "check", "--json", f"--phase={value}")
    run_unchanged(run_cli, seeded, "--phase (checklist show)",
                  "checklist", "show", f"--phase={value}")


# ------------------------------------------------------------------------- --config ----

_toml_scalar = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                         st.text(max_size=20), st.lists(st.integers(), max_size=3))


def _toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


@st.composite
def hostile_toml(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "wrong-type", "unknown-section", "template"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "wrong-type":
        section = draw(st.sampled_from(["keys", "thresholds", "workspaces"]))
        field = draw(st.sampled_from(["old_job", "new_job", "labelled", "max_age_s", "x"]))
        value = draw(_toml_scalar.filter(lambda v: not isinstance(v, str)) if section == "keys"
                     else _toml_scalar.filter(lambda v: isinstance(v, str | bool | list)))
        if section == "workspaces" and field == "labelled" and isinstance(value, list):
            value = draw(st.lists(argv_text.filter(lambda s: not is_valid_workspace_id(s)),
                                  min_size=1, max_size=3))
        return f"[{section}]\n{field} = {_toml_value(value)}\n".encode()
    if kind == "unknown-section":
        name = draw(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
            lambda s: s not in {"keys", "workspaces", "thresholds"}))
        return f"[{name}]\na = 1\n".encode()
    field = draw(st.sampled_from(["old_job", "new_job", "index", "idempotency"]))
    base = {"old_job": "ai:jobs:<job_id>", "new_job": "ai:job:<ws>:<job_id>",
            "index": "ai:jobidx:<ws>", "idempotency": "ai:idempotency:<ws>:<request_id>"}[field]
    how = draw(st.sampled_from(["glob", "missing", "twice"]))
    if how == "glob":
        template = base + draw(st.sampled_from(list("*?[]\\")))
    elif how == "missing":
        template = base.replace("<job_id>", "").replace("<ws>", "").replace("<request_id>", "")
    else:
        template = base + ":" + base
    return f"[keys]\n{field} = {json.dumps(template)}\n".encode()


@FAST
@given(body=hostile_toml())
def test_config_files(run_cli, seeded, tmp_path_factory, body):
    path = tmp_path_factory.mktemp("cfg") / "relayctl.toml"
    path.write_bytes(body)
    try:
        from relayctl.core.config import load_config

        load_config(path)
        assume(False)  # the generator happened to make a valid config: not hostile
    except UsageError:
        pass
    run_unchanged(run_cli, seeded, "--config file", "--config", str(path), "flags", "--json")
    run_unchanged(run_cli, seeded, "--config file",
                  "--config", str(path), "flags", "set", "--yes", "--reason", "r",
                  "AI_JOBS_NEW_SCHEMA", "off")


# -------------------------------------------------------------------------- archives ----

HEADER = {"format": "relayctl-archive", "version": 2, "pattern": "ai:jobs:*"}


@st.composite
def hostile_archive(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "gzip-lines", "header+garbage", "wrong-version",
                                 "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "gzip-lines":
        lines = draw(st.lists(st.text(max_size=60).filter(lambda s: "\n" not in s),
                              max_size=5))
        return gzip.compress("\n".join(lines).encode("utf-8", "surrogatepass"))
    if kind == "wrong-version":
        version = draw(st.one_of(st.integers().filter(lambda v: v not in (1, 2)),
                                 st.text(max_size=5), st.none(), st.just(True)))
        return gzip.compress((json.dumps({**HEADER, "version": version}) + "\n").encode())
    head = json.dumps(HEADER) + "\n"
    if kind == "truncated":
        data = gzip.compress((head + json.dumps({"k": "ai:jobs:a", "x": -1, "d": "AA==",
                                                 "h": "0" * 64}) + "\n").encode())
        return data[:draw(st.integers(1, len(data) - 1))]
    garbage = draw(st.lists(st.one_of(
        st.text(max_size=60).filter(lambda s: "\n" not in s),
        st.dictionaries(st.sampled_from(["k", "x", "d", "h", "manifest"]),
                        st.one_of(st.text(max_size=10), st.integers(), st.none()),
                        max_size=4).map(json.dumps)), min_size=0, max_size=4))
    return gzip.compress((head + "\n".join(garbage)).encode("utf-8", "surrogatepass"))


def test_archive_header_matches_export(run_cli, redis_url, tmp_path):
    out = tmp_path / "real.jsonl.gz"
    res = run_cli("--redis-url", redis_url, "archive", "export", str(out))
    assert res.code == 0, res.err
    with gzip.open(out, "rt") as f:
        header = json.loads(f.readline())
    assert {k: header.get(k) for k in HEADER} == HEADER


@FAST
@given(body=hostile_archive())
def test_archive_files(run_cli, seeded, tmp_path_factory, body):
    path = tmp_path_factory.mktemp("arc") / "export.jsonl.gz"
    path.write_bytes(body)
    run_unchanged(run_cli, seeded, "archive file (restore)",
                  "archive", "restore", str(path), "--reason", "fuzz", "--yes")
    run_unchanged(run_cli, seeded, "archive file (delete --from)",
                  "archive", "delete", "--from", str(path), "--reason", "fuzz", "--yes",
                  "--force")


# ------------------------------------------------------------------- metrics endpoints ----


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "bytes"
    body = b""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        cls = type(self)
        try:
            if cls.mode == "sleep":
                time.sleep(4.5)  # past scrape.TIMEOUT_S
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if cls.mode == "trickle":
                self.end_headers()
                for _ in range(40):  # one byte every 0.5 s: each recv is "fast"
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    time.sleep(0.5)
                return
            self.send_header("Content-Length", str(len(cls.body)))
            self.end_headers()
            self.wfile.write(cls.body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def metrics_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def _check(run_cli, redis_url, url, category):
    res, elapsed = timed(run_cli, "--redis-url", redis_url, "--metrics-url", url,
                         "check", "--json", "--phase", "2")
    assert_hostile(res, category, allow=frozenset({1, 3}), elapsed=elapsed)
    data = json.loads(res.out)
    assert data["exit"] == res.code


@FAST
@given(body=st.binary(max_size=2000) | st.text(max_size=400).map(
    lambda s: s.encode("utf-8", "surrogatepass")))
def test_metrics_garbage(run_cli, redis_url, metrics_server, body):
    _Handler.mode, _Handler.body = "bytes", body
    _check(run_cli, redis_url, metrics_server, "metrics: garbage body")


@SLOW
@given(extra=st.integers(1, 4096), byte=st.binary(min_size=1, max_size=1))
def test_metrics_huge(run_cli, redis_url, metrics_server, extra, byte):
    _Handler.mode, _Handler.body = "bytes", byte * (8 * 1024 * 1024 + extra)
    _check(run_cli, redis_url, metrics_server, "metrics: huge body")


@pytest.mark.parametrize("mode", ["sleep", "trickle"])
def test_metrics_slow(run_cli, redis_url, metrics_server, mode):
    _Handler.mode = mode
    try:
        _check(run_cli, redis_url, metrics_server, f"metrics: {mode}")
    finally:
        _Handler.mode = "bytes"


@FAST
@given(url=argv_text.filter(lambda s: not s.startswith(("http://", "https://"))))
def test_metrics_url_strings(run_cli, redis_url, url):
    assume(url.strip())
    res, elapsed = timed(run_cli, "--redis-url", redis_url, "--metrics-url", url,
                         "check", "--json", "--phase", "2")
    assert_hostile(res, "metrics: url string", allow=frozenset({1, 3}), elapsed=elapsed)


# ------------------------------------------------------------------------ --redis-url ----


def _safe_redis_url(text: str, own_port: int) -> bool:
    """Never let a generated URL reach 6379, our own server, or a remote host."""
    try:
        target = parse_target(text)
    except UsageError:
        return True  # refused before any connection
    except Exception:
        return True  # a crash: let the CLI show it
    if target.scheme == "unix":
        return not Path(text.split("://", 1)[1].split("?")[0] or "/").exists()
    if target.host not in ("127.0.0.1", "localhost", "::1"):
        return False
    return target.port is not None and target.port not in (6379, own_port)


@st.composite
def hostile_redis_url(draw) -> str:
    kind = draw(st.sampled_from(["text", "scheme", "port", "plaintext"]))
    if kind == "text":
        return draw(argv_text.filter(bool))
    if kind == "scheme":
        scheme = draw(st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True).filter(
            lambda s: s not in ("redis", "rediss", "unix")))
        return f"{scheme}://127.0.0.1:{draw(st.integers(1, 65535))}/0"
    if kind == "port":
        port = draw(st.one_of(st.integers(65536, 10**9), st.integers(-10**6, -1),
                              st.text(max_size=6).filter(lambda s: not s.isdigit()),
                              st.integers(1, 1023)))
        return f"redis://127.0.0.1:{port}/0"
    host = draw(st.sampled_from(["10.0.0.1", "192.168.1.20", "203.0.113.7",
                                 "redis.example.com", "[2001:db8::1]"]))
    return f"redis://user:s3cret@{host}:{draw(st.integers(1, 65535))}/0"


@FAST
@given(url=hostile_redis_url())
def test_redis_urls(run_cli, redis_server, url):
    assume(_safe_redis_url(url, redis_server.port))
    before = digest(redis_server.url)
    res, elapsed = timed(run_cli, "--redis-url", url, "flags", "--json")
    assert_hostile(res, "--redis-url", elapsed=elapsed)
    assert "s3cret" not in res.err + res.out
    res2, elapsed2 = timed(run_cli, "--redis-url", url, "flags", "set", "--yes", "--reason",
                           "fuzz", "AI_JOBS_NEW_SCHEMA", "on")
    assert_hostile(res2, "--redis-url", elapsed=elapsed2)
    assert digest(redis_server.url) == before


# ------------------------------------------------------------------- the core directly ----

job_ids = st.one_of(argv_text, st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,63}", fullmatch=True))
ws_ids = st.one_of(argv_text, st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True))
statuses = st.one_of(st.sampled_from(list(STATUSES)), argv_text, st.none())
limits = st.one_of(st.integers(-10, 2000), st.floats(allow_nan=True), st.text(max_size=3),
                   st.none(), st.booleans())
cursors = st.one_of(st.none(), argv_text, st.binary(max_size=40).map(
    lambda b: __import__("base64").urlsafe_b64encode(b).decode()))


@pytest.fixture
def store(seeded):
    client = redis.Redis.from_url(seeded, decode_responses=True)
    s = JobStore(client, background=False)  # makes the cursor secret now, not mid-property
    yield s
    s.close()
    client.close()


def _core_call(category: str, url: str, fn) -> None:
    COUNTS[category] += 1
    before = digest(url)
    t0 = time.monotonic()
    try:
        fn()
    except RelayError:
        assert digest(url) == before, (category, "raised but wrote")
    else:
        # a clean call may write keys with a short TTL: start the next example afresh so a
        # key expiring mid-call cannot pass for a write
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()
        seed(url)
    # any other exception type propagates and fails the test
    assert time.monotonic() - t0 < CALL_BOUND_S


@FAST
@given(ws=ws_ids, job=job_ids)
def test_core_get_job(store, seeded, ws, job):
    _core_call("core: get_job", seeded, lambda: store.get_job(ws, job))


@FAST
@given(ws=ws_ids, status=statuses, cursor=cursors, limit=limits)
def test_core_list_jobs(store, seeded, ws, status, cursor, limit):
    _core_call("core: list_jobs", seeded,
               lambda: store.list_jobs(ws, status=status, cursor=cursor, limit=limit))


@FAST
@given(ws=ws_ids, job=st.one_of(st.none(), job_ids),
       request_id=st.one_of(st.none(), argv_text),
       ttl=st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-5, 10**9)))
def test_core_enqueue(store, seeded, ws, job, request_id, ttl):
    assume(not (is_valid_workspace_id(ws) and (job is None or is_valid_job_id(job))
                and request_id is None and ttl is None))
    _core_call("core: enqueue", seeded,
               lambda: store.enqueue(ws, action_provider="p", action_name="n", job_id=job,
                                     request_id=request_id, ttl_seconds=ttl))


@FAST
@given(ws=ws_ids, job=job_ids, status=statuses)
def test_core_update_status(store, seeded, ws, job, status):
    _core_call("core: update_status", seeded, lambda: store.update_status(ws, job, status))


# ------------------------------------------------------------------------------ totals ----


def test_zz_hostile_input_counts(tmp_path_factory):
    """Last in the module: the totals per category, for the closing note."""
    out = tmp_path_factory.getbasetemp() / "hostile-input-counts.json"
    totals = dict(sorted(COUNTS.items()))
    out.write_text(json.dumps({"total": sum(totals.values()), "by_category": totals},
                              indent=2))
    print(f"\nhostile inputs tried: {sum(totals.values())} {totals}")
    assert sum(totals.values()) > 0
