"""Starting an engine from the console: `relayctl backfill` in its own process, so the run
outlives the console that started it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading

import redis

from relayctl.core.backfill.options import BackfillOptions
from relayctl.core.connection import TLS_ENV, TLSOptions
from relayctl.core.errors import UsageError
from relayctl.core.validate import validate_workspace_id


def engine_args(options: BackfillOptions) -> list[str]:
    """The `relayctl backfill` options that reproduce `options`, every one of them."""
    args = ["--execute" if options.execute else "--dry-run",
            "--batch", str(options.batch), "--rps", str(options.rps),
            "--workers", str(options.workers), "--retry-for", str(options.retry_for_s)]
    for ws in options.workspaces:
        args += ["--workspace", validate_workspace_id(ws)]
    if options.max_keys:
        args += ["--max-keys", str(options.max_keys)]
    if options.max_latency_ms is not None:
        args += ["--max-latency-ms", str(options.max_latency_ms)]
    if options.resume:
        args.append("--resume")
    if options.fresh:
        args.append("--fresh")
    if options.force:
        args.append("--force")
    args += ["--max-memory-pct", f"{options.max_memory_pct:g}",
             "--critical-memory-pct", f"{options.critical_memory_pct:g}",
             "--max-replica-lag-s", f"{options.max_replica_lag_s:g}"]
    if options.max_memory_bytes is not None:
        args += ["--max-memory-bytes", str(options.max_memory_bytes)]
    if options.max_replica_lag_bytes is not None:
        args += ["--max-replica-lag-bytes", str(options.max_replica_lag_bytes)]
    if options.allow_evicting_policy:
        args.append("--allow-evicting-policy")
    if options.wait_replicas:
        args += ["--wait-replicas", str(options.wait_replicas)]
    return args


def spawn_engine(redis_url: str, options: BackfillOptions, *, actor: str, reason: str,
                 client: redis.Redis, allow_plaintext: bool = False,
                 tls: TLSOptions | None = None, config_path: str | None = None) -> int:
    """Start `relayctl backfill` as its own process (it outlives the console).

    Every option is forwarded, and the console's --config (key templates). The URL and the
    TLS files travel in the environment, never on the command line, so `ps` shows no
    credentials. The engine audits its own start with this actor and reason once it holds
    the lease, as from the CLI, so a refused engine leaves no `backfill.start`. Its stderr
    goes to `engine_log(pid)`; a thread reaps it whenever it exits (no zombie).
    """
    if not reason.strip():
        raise UsageError("a reason is required to start a backfill")
    options.validate()
    del client  # the engine writes everything itself
    args = [sys.executable, "-m", "relayctl"]
    if allow_plaintext:
        args.append("--allow-plaintext")
    if config_path:
        args += ["--config", config_path]
    args += ["--actor", actor, "backfill", *engine_args(options), "--reason", reason, "--json"]
    env = {k: v for k, v in os.environ.items() if k not in TLS_ENV.values()}
    env.update((tls if tls is not None else TLSOptions.from_env()).env())
    env["REDIS_URL"] = redis_url
    fd, tmp = tempfile.mkstemp(prefix="relayctl-engine-", suffix=".err")
    try:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=fd, start_new_session=True)
    finally:
        os.close(fd)
    os.replace(tmp, engine_log(proc.pid))
    _SPAWNED[proc.pid] = proc
    threading.Thread(target=proc.wait, name=f"reap-engine-{proc.pid}", daemon=True).start()
    return proc.pid


_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def engine_log(pid: int) -> str:
    """Where a spawned engine's stderr goes: its refusal, if it is refused."""
    return os.path.join(tempfile.gettempdir(), f"relayctl-engine-{pid}.err")


def spawned_exit(pid: int) -> int | None:
    """The exit code of an engine this process spawned, None while it runs (or unknown)."""
    proc = _SPAWNED.get(pid)
    return None if proc is None else proc.poll()


def engine_error(pid: int) -> str:
    """The last line a spawned engine wrote to stderr (its one-line refusal), or ""."""
    try:
        with open(engine_log(pid), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
