"""`relayctl acl` (SPEC §9): the printed rules, applied on a real redis-server, let each role
run its flows and nothing more; a refused command is a clear one-line permission error.

On every engine of the matrix (Redis 7, Redis 6.2, Valkey) and on databases 0 and 3: the rules
are printed for the server `--redis-url` names, and each role's flows run under them there."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import pytest
import redis
from jobstore_kit import apply_flags

from relayctl.cli import main
from relayctl.core import audit
from relayctl.core.backfill import Backfill, BackfillOptions
from relayctl.core.console import ConsoleState, refresh
from relayctl.core.demo import legacy_record, seed_pre_migration
from relayctl.core.flags import DUAL_WRITE, FALLBACK_OLD, PREFERS_NEW, set_flag
from relayctl.core.jobs import JobStore
from relayctl.core.keys import CHECKLIST_KEY, FLAGS_KEY, KeySchema
from relayctl.core.metrics import Metrics

PASSWORD = "acl-test-Pw-9f3c"  # a throwaway test password

pytestmark = pytest.mark.engines()


@pytest.fixture(params=[0, 3], ids=["db0", "db3"])
def acl_db(request: pytest.FixtureRequest) -> int:
    """The database every client of the test selects (SELECT is then part of each role)."""
    return request.param


@pytest.fixture
def r(redis_url: str, engine_server, acl_db: int) -> Iterator[redis.Redis]:
    """The default user on the test's database of the test's engine."""
    client = redis.Redis(port=engine_server.port, db=acl_db, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def admin_url(engine_server, acl_db: int) -> str:
    return f"redis://127.0.0.1:{engine_server.port}/{acl_db}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def printed_rules(capsys, *args: str) -> dict[str, list[str]]:
    """role -> the ACL SETUSER arguments, parsed from `relayctl acl`'s text output."""
    code, out, err = run(capsys, *args, "acl")
    assert code == 0, err
    found: dict[str, list[str]] = {}
    role = None
    for line in out.splitlines():
        if line.startswith("# ") and line[2:] in ("console", "app", "operator"):
            role = line[2:]
        elif line.startswith("ACL SETUSER "):
            assert role is not None
            found[role] = line.split()[2:]
    return found


@pytest.fixture
def acl_users(capsys, r: redis.Redis, engine_server, acl_db: int,
              admin_url: str) -> Iterator[dict[str, str]]:
    """Create the three users from the rules printed for this server and database; yield
    role -> redis URL with password."""
    rules = printed_rules(capsys, "--redis-url", admin_url)
    assert set(rules) == {"console", "app", "operator"}
    urls = {}
    for role, args in rules.items():
        user, rest = args[0], args[1:]
        assert not any(a.startswith(">") or a.startswith("#") for a in rest)
        assert ("+select" in rest) == (acl_db != 0)
        r.execute_command("ACL", "SETUSER", user, *rest, f">{PASSWORD}")
        urls[role] = f"redis://{user}:{PASSWORD}@127.0.0.1:{engine_server.port}/{acl_db}"
    r.execute_command("ACL", "LOG", "RESET")
    yield urls
    for args in rules.values():
        r.execute_command("ACL", "DELUSER", args[0])


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_printed_rules_name_no_password_and_no_all_keys(capsys):
    rules = printed_rules(capsys)
    for _role, args in rules.items():
        assert "-@all" in args and "~*" not in args and "allkeys" not in args
        assert "+@all" not in args and not any(a.startswith(">") for a in args)
    assert not any(a.startswith("~") for a in rules["console"])  # read-only keys only
    assert not any(c in rules["console"] for c in ("+hset", "+eval", "+del", "+xadd"))
    assert "+restore" in rules["operator"] and "+restore" not in rules["app"]


def test_user_and_role_options_and_json(capsys):
    code, out, _ = run(capsys, "acl", "--role", "app", "--user", "web", "--json")
    assert code == 0
    users = json.loads(out)["users"]
    assert [(u["role"], u["user"]) for u in users] == [("app", "web")]
    assert users[0]["command"].startswith("ACL SETUSER web reset on")
    code, out, _ = run(capsys, "acl", "--user", "ops")
    assert code == 0 and "ACL SETUSER ops " in out and "# console" in out
    code, _, err = run(capsys, "acl", "--user", "bad user*")
    assert code == 2 and err.count("\n") == 1


def test_custom_key_templates_are_honoured(capsys, tmp_path):
    cfg = tmp_path / "relayctl.toml"
    cfg.write_text('[keys]\nold_job = "legacy:{jobs}:<job_id>"\n'
                   'new_job = "jobs:{<ws>}:<job_id>"\nindex = "jobs:{<ws>}:idx"\n')
    rules = printed_rules(capsys, "--config", str(cfg))
    assert "~legacy:{jobs}:*" in rules["app"]
    assert "~jobs:{*}:*" in rules["app"]
    assert "%R~jobs:{*}:idx" in rules["console"]
    assert "~ai:jobs:*" not in rules["operator"]


def test_app_user_runs_the_job_store_under_every_flag_combination(acl_users, r, combo, engine,
                                                                  capsys, admin_url):
    client = client_for(acl_users["app"])
    store = JobStore(client, background=False, pins={}, instance="web-acl",
                     metrics=Metrics(labelled_workspaces=["ws-a"]))
    try:
        apply_flags(r, combo, store)
        res = store.enqueue("ws-a", action_provider="openai", action_name="draft",
                            params={"n": 1}, request_id="req-1")
        again = store.enqueue("ws-a", action_provider="openai", action_name="draft",
                              params={"n": 1}, request_id="req-1")
        assert again.job_id == res.job_id
        # a job written only to the old schema is invisible when reads prefer new without
        # fallback (SPEC §2): that is the flags' meaning, not an ACL refusal
        visible = combo.dual or not combo.prefers_new or combo.fallback
        job = store.get_job("ws-a", res.job_id)
        assert (job is not None and job.status == "pending") if visible else job is None
        store.update_status("ws-a", res.job_id, "running")
        store.update_status("ws-a", res.job_id, "completed", result={"ok": True})
        if visible:
            assert store.get_job("ws-a", res.job_id).status == "completed"
        page = store.list_jobs("ws-a")
        ids = [j.job_id for j in page.jobs]
        cursor = page.cursor
        while cursor:
            page = store.list_jobs("ws-a", cursor=cursor)
            ids += [j.job_id for j in page.jobs]
            cursor = page.cursor
        assert ids == ([res.job_id] if visible else [])
    finally:
        store.close()
    assert r.execute_command("ACL", "LOG") == []  # nothing was refused along the way
    if engine == "redis62":  # no read-only key patterns before 7.0: the printed caveat
        assert "no read-only key patterns" in run(capsys, "--redis-url", admin_url, "acl")[1]
    else:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.hset(FLAGS_KEY, DUAL_WRITE, "on")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    client.close()


def test_app_user_background_threads_heartbeat_and_refresh_flags(acl_users, r):
    client = client_for(acl_users["app"])
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="setup")
    store = JobStore(client, background=True, refresh_interval=0.05, heartbeat_interval=0.05,
                     instance="web-bg", metrics=Metrics(labelled_workspaces=["ws-a"]))
    try:
        deadline = time.monotonic() + 5
        while not r.exists("relay:fleet:web-bg") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.exists("relay:fleet:web-bg")
        assert store.flags.dual_write is True
        store.enqueue("ws-a", action_provider="openai", action_name="draft")
        time.sleep(0.2)
    finally:
        store.close()
    assert not r.exists("relay:fleet:web-bg")
    assert r.execute_command("ACL", "LOG") == []
    client.close()


def _seed_console_data(r: redis.Redis) -> None:
    set_flag(r, DUAL_WRITE, True, actor="pytest", reason="setup")
    seed_pre_migration(r, KeySchema(), ["ws-a", "ws-b"], jobs=30, recent_share=0.2, invalid=0)
    assert Backfill(r, BackfillOptions(execute=True, force=True)).run() == 0
    r.hset(CHECKLIST_KEY, "phase", "4")
    store = JobStore(r, background=False, pins={}, instance="web-1")
    store.close()


def test_console_user_refreshes_without_error_and_cannot_write(acl_users, r, capsys,
                                                               admin_url):
    _seed_console_data(r)
    # the operator's census and verify summaries are part of what the console reads
    assert run(capsys, "--redis-url", admin_url, "census")[0] == 0
    assert run(capsys, "--redis-url", admin_url, "verify")[0] == 0
    client = client_for(acl_users["console"])
    state = ConsoleState()
    for _ in range(2):
        refresh(state, client, [], acl_users["console"])
        assert state.redis_status == "CONNECTED", state.redis_error
        assert state.redis_error == ""
    assert state.flags and state.census is not None and state.backfill
    assert state.verify is not None and state.checklist.phase == 4 and state.audit
    assert state.instances == 0 and state.memory
    for write in (lambda: client.hset(FLAGS_KEY, DUAL_WRITE, "off"),
                  lambda: client.xadd("relay:audit", {"a": "b"}),
                  lambda: client.delete("relay:checklist"),
                  lambda: client.hgetall("ai:jobs:x")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    assert r.hget(FLAGS_KEY, DUAL_WRITE) == "on"
    client.close()


def test_console_user_runs_read_only_cli_views(acl_users, r, capsys):
    _seed_console_data(r)
    url = acl_users["console"]
    for args in (("flags", "--json"), ("backfill", "status", "--json"),
                 ("checklist", "show", "--json")):
        code, out, err = run(capsys, "--redis-url", url, *args)
        assert code in (0, 3), (args, err)
        assert PASSWORD not in out + err


def test_operator_user_runs_the_cli_flows(acl_users, r, capsys, tmp_path, admin_url):
    url = acl_users["operator"]
    rng = random.Random(7)
    for i in range(40):
        ws = ("ws-a", "ws-b")[i % 2]
        rec = legacy_record(rng, ws, f"job-{i}", time.time() - 3600)
        r.hset(f"ai:jobs:job-{i}", mapping=rec)
    base = ("--redis-url", url, "--actor", "oncall")

    def ok(*args: str, codes=(0,)) -> str:
        code, out, err = run(capsys, *base, *args)
        assert code in codes, (args, code, err)
        assert PASSWORD not in out + err
        return out

    ok("flags", "set", DUAL_WRITE, "on", "--reason", "acl test", "--yes")
    ok("flags", "--json")
    r.hset(CHECKLIST_KEY, "phase", "1")
    ok("checklist", "apply", "--reason", "acl test", "--yes", codes=(0, 1, 3))
    ok("checklist", "show", "--json", codes=(0, 1, 3))
    ok("flags", "set", DUAL_WRITE, "on", "--reason", "backfill needs it", "--yes")
    ok("backfill", "--dry-run", "--json")
    ok("backfill", "--execute", "--json")
    ok("backfill", "status", "--json", codes=(0, 3))
    for action in ("pause", "resume", "stop"):
        ok("backfill", action, "--reason", "acl test", codes=(0, 1, 2, 3))
    census = json.loads(ok("census", "--json"))
    code, out, err = run(capsys, "--redis-url", admin_url, "census", "--json")
    assert code == 0, err
    by_default_user = json.loads(out)
    counts = ("old", "new", "index_entries", "index_keys")
    assert {k: census[k] for k in counts} == {k: by_default_user[k] for k in counts}
    assert census["index_entries"] > 0 and census["index_keys"] > 0
    ok("verify", "--json")
    ok("status", "--json", codes=(0, 1, 3))
    ok("check", "--json", codes=(0, 1, 3))
    path = str(tmp_path / "legacy.jsonl.gz")
    ok("archive", "export", path, "--json")
    set_flag(r, FALLBACK_OLD, False, actor="pytest", reason="setup")
    set_flag(r, PREFERS_NEW, True, actor="pytest", reason="setup")
    ok("verify", "--json")  # archive delete needs a fresh verify after the flag changes
    r.delete("ai:job:ws-a:job-0")
    ok("verify", "--repair", "--force", "--reason", "acl", "--yes", "--json", codes=(1,))
    ok("verify", "--json")  # clean again: the repair's own report still shows what it found
    ok("archive", "delete", "--from", path, "--reason", "acl", "--yes", "--json")
    assert not list(r.scan_iter(match="ai:jobs:*"))
    ok("archive", "restore", path, "--reason", "acl", "--yes", "--json")
    assert len(list(r.scan_iter(match="ai:jobs:*"))) == 40
    actions = {e.action for e in audit.recent(r, 200)}
    assert {"flag.set", "archive.export"} <= actions


@pytest.mark.parametrize("role,args", [
    ("console", ("flags", "set", DUAL_WRITE, "on", "--reason", "x", "--yes")),
    ("console", ("census",)),
    ("app", ("flags", "set", DUAL_WRITE, "on", "--reason", "x", "--yes")),
])
def test_refused_command_is_a_one_line_permission_error(acl_users, r, capsys, role, args):
    code, out, err = run(capsys, "--redis-url", acl_users[role], *args)
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("relayctl: error:")
    assert "permission" in err.lower()
    assert PASSWORD not in out + err
    assert r.hget(FLAGS_KEY, DUAL_WRITE) is None
