"""Least-privilege Redis ACL rules for the three kinds of relayctl clients (SPEC §9).

- `app`: the application's JobStore (scripts, job reads, flags read, fleet heartbeat, the
  list-cursor secret);
- `console`: what one console tick and its read-only views read (no writes at all);
- `operator`: the CLI's writes as well (flags, checklist, audit, backfill, census/verify
  summaries, job copies, archive delete/restore).

Key patterns come from the configured KeySchema, so custom key templates are honoured. The
rules are built for the server in front of you: Redis 6.2 has no read-only key patterns (`%R~`)
and no PEXPIRETIME; a database other than 0 needs SELECT. The rules never contain a password:
the operator adds `>password` (or `#sha256`) when applying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from relayctl.core.engine_version import NEWEST, ServerIdentity
from relayctl.core.errors import UsageError
from relayctl.core.keys import (
    AUDIT_KEY,
    BACKFILL_PREFIX,
    CENSUS_KEY,
    CHECKLIST_KEY,
    CURSOR_SECRET_KEY,
    DEMO_CLOCK_KEY,
    FLAGS_KEY,
    FLEET_INDEX_KEY,
    FLEET_PREFIX,
    VERIFY_KEY,
    KeySchema,
)

ROLES = ("console", "app", "operator")
DEFAULT_USERS = {"console": "relay-console", "app": "relay-app", "operator": "relay-operator"}
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

# Every client: PING (connect()'s check), INFO (it tells a cluster node from a standalone
# server) and, on a cluster, the slot map and command table redis-py's cluster client reads.
# redis-py tolerates a refused CLIENT SETINFO.
_CONNECT = ("ping", "echo", "info", "cluster|slots", "command")

# Commands the job store's Lua scripts run (relayctl.core.lua): a script's inner commands
# are checked against the caller's ACL too.
_STORE_SCRIPTS = ("type", "get", "set", "exists", "hget", "hset", "hgetall", "pexpire",
                  "pttl", "zadd", "rpush")

_APP_COMMANDS = (
    *_CONNECT,
    "evalsha", "eval", "script|load", *_STORE_SCRIPTS,
    # reads of the job keys (get_job / list_jobs)
    "hmget", "zrange", "zmscore", "scan",
    # fleet heartbeat (relay:fleet:<instance> + the relay:fleet index), removed on close
    "zremrangebyscore", "zrem", "del",
)

# One console tick (relayctl.core.console.refresh) and its read-only views.
_CONSOLE_COMMANDS = (
    *_CONNECT,
    "info", "hgetall", "exists", "get", "xrevrange", "zrangebyscore",
)

# The CLI's writes: flags and checklist scripts, the audit stream, backfill state / lease /
# control (MULTI/EXEC pipelines and scripts that COPY, HINCRBY, UNLINK), census and verify
# summaries, archive export / delete / restore (DUMP, UNLINK, RESTORE).
_OPERATOR_COMMANDS = (
    *_CONSOLE_COMMANDS, *_APP_COMMANDS,
    "dbsize", "hlen", "hincrby", "copy", "xadd", "unlink", "persist", "zscore",
    "dump", "restore", "multi", "exec", "discard",
    # census counts each index key's entries
    "zcard",
    # a cluster backfill copies with the source's absolute expiry (Redis >= 7.0)
    "pexpiretime",
    # verify --repair and archive delete: compare-and-set under WATCH, orphan walks (ZSCAN),
    # partial copies filled (HSETNX), foreign-payload restores (PEXPIREAT), expiries on the
    # server clock (TIME)
    "watch", "unwatch", "zscan", "hsetnx", "pexpireat", "zcard", "time",
)
_SINCE_7 = {"pexpiretime"}


@dataclass(frozen=True)
class AclRule:
    role: str
    user: str
    rules: tuple[str, ...]

    @property
    def command(self) -> str:
        return f"ACL SETUSER {self.user} " + " ".join(self.rules)

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "user": self.user, "rules": list(self.rules),
                "command": self.command}


def _job_patterns(schema: KeySchema) -> list[str]:
    return [schema.old_pattern, schema.new_pattern, schema.index_pattern, schema.queue,
            schema.idempotency.replace("<ws>", "*").replace("<request_id>", "*")]


def _dedupe(items: list[str] | tuple[str, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def key_patterns(role: str, schema: KeySchema, backfill_prefix: str = BACKFILL_PREFIX,
                 server: ServerIdentity = NEWEST) -> list[str]:
    """ACL key patterns: `~p` read+write, `%R~p` read-only (Redis >= 7.0; on 6.2 `~p`, the
    role's commands alone keep it read-only)."""
    ro = "%R~" if server.has_selectors else "~"
    jobs = _job_patterns(schema)
    if role == "app":
        return [*(f"~{p}" for p in jobs), f"~{FLEET_INDEX_KEY}", f"~{FLEET_PREFIX}*",
                f"~{CURSOR_SECRET_KEY}", f"{ro}{FLAGS_KEY}"]
    relay = [FLAGS_KEY, AUDIT_KEY, FLEET_INDEX_KEY, f"{FLEET_PREFIX}*", CHECKLIST_KEY,
             CENSUS_KEY, VERIFY_KEY, f"{backfill_prefix}*"]
    # every CLI process reads the demo's clock key once (absent outside the demo)
    if role == "console":
        return [*(f"{ro}{p}" for p in relay), f"{ro}{schema.index_pattern}",
                f"{ro}{DEMO_CLOCK_KEY}"]
    if role == "operator":
        return [*(f"~{p}" for p in relay), *(f"~{p}" for p in jobs),
                f"~{CURSOR_SECRET_KEY}", f"{ro}{DEMO_CLOCK_KEY}"]
    raise UsageError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def commands(role: str, server: ServerIdentity = NEWEST, db: int = 0) -> list[str]:
    """The role's commands on this server: none it lacks, SELECT for a database other than 0."""
    table = {"app": _APP_COMMANDS, "console": _CONSOLE_COMMANDS,
             "operator": _OPERATOR_COMMANDS}
    if role not in table:
        raise UsageError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    chosen = [c for c in table[role] if server.at_least((7, 0)) or c not in _SINCE_7]
    # redis-py's handshake: CLIENT SETINFO (Redis >= 7.2) and, over RESP3, CLIENT
    # MAINT_NOTIFICATIONS; it tolerates both failing, but 6.2 checks the ACL before the
    # subcommand and logs every connection in ACL LOG. 6.2 takes rules for subcommands it does
    # not have; 7.0 and 7.1 reject the rule for SETINFO.
    if not server.at_least((7, 0)):
        chosen += ["client|setinfo", "client|maint_notifications"]
    elif server.at_least((7, 2)):
        chosen.append("client|setinfo")
    if db:
        chosen.append("select")
    return _dedupe(chosen)


def rule(role: str, schema: KeySchema | None = None, user: str | None = None,
         server: ServerIdentity = NEWEST, db: int = 0) -> AclRule:
    schema = schema or KeySchema()
    name = user or DEFAULT_USERS.get(role, "")
    if not _USER_RE.match(name or ""):
        raise UsageError(f"invalid ACL user name {name!r}: letters, digits, _ . @ - only")
    patterns = _dedupe(key_patterns(role, schema, server=server))
    rules = ("reset", "on", "resetchannels", "-@all",
             *(f"+{c}" for c in commands(role, server, db)), *patterns)
    return AclRule(role=role, user=name, rules=rules)


def caveats(server: ServerIdentity) -> list[str]:
    """What the rules cannot enforce on this server (printed with them)."""
    if server.has_selectors:
        return []
    return [f"{server.label} has no read-only key patterns (%R~, Redis >= 7.0): the app user "
            f"can write {FLAGS_KEY} with the HSET its job records need"]


def rules_for(role: str | None = None, user: str | None = None,
              schema: KeySchema | None = None, server: ServerIdentity = NEWEST,
              db: int = 0) -> list[AclRule]:
    """One rule per role; without a role all three, or the console's when a user is named.

    `server` and `db`: the server the rules are for and the database the clients select.
    """
    if role is None:
        if user is not None:
            return [rule("console", schema, user, server, db)]
        return [rule(r, schema, server=server, db=db) for r in ROLES]
    return [rule(role, schema, user, server, db)]
