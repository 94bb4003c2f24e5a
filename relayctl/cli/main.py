"""The `relayctl` group, its global options, and the entry point's error-to-exit mapping."""

from __future__ import annotations

import logging
import os
import sys

import click
import redis

from relayctl import __version__
from relayctl.cli import (
    archive,
    audit,
    backfill,
    bench,
    census,
    checklist,
    console,
    demo,
    export,
    exporter,
)
from relayctl.cli import flags as flags_cmd
from relayctl.cli import status as status_cmd
from relayctl.cli import verify as verify_cmd
from relayctl.cli.common import Context, PromFlags, fail
from relayctl.core.audit import default_actor
from relayctl.core.config import load_config
from relayctl.core.connection import TLSOptions, describe_redis_error
from relayctl.core.errors import RedisUnavailableError, RelayError
from relayctl.core.exitcodes import ExitCode


def _split_env_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relayctl")
@click.option("--redis-url", envvar="REDIS_URL", default=None, show_default=False,
              help="Redis URL [env REDIS_URL; default redis://127.0.0.1:6379/0].")
@click.option("--metrics-url", multiple=True,
              help="A /metrics endpoint to read (repeatable) [env RELAYCTL_METRICS_URL].")
@click.option("--prometheus-url", envvar="RELAYCTL_PROMETHEUS_URL", default=None,
              help="Prometheus server for windowed gates [env RELAYCTL_PROMETHEUS_URL].")
@click.option("--prometheus-selector", envvar="RELAYCTL_PROMETHEUS_SELECTOR", default=None,
              metavar="MATCHERS", help='Label matchers added to every Prometheus query, e.g. '
              'job="relay-api",env="prod" [env RELAYCTL_PROMETHEUS_SELECTOR; config '
              '[prometheus] selector].')
@click.option("--prometheus-bearer-token-file", envvar="RELAYCTL_PROMETHEUS_BEARER_TOKEN_FILE",
              default=None, metavar="FILE", help="File holding a bearer token for Prometheus.")
@click.option("--prometheus-ca", envvar="RELAYCTL_PROMETHEUS_CA", default=None, metavar="FILE",
              help="CA bundle to verify an https:// Prometheus.")
@click.option("--prometheus-header", multiple=True, metavar="'NAME: VALUE'",
              help="Header sent to Prometheus (repeatable), e.g. 'X-Scope-OrgID: tenant'.")
@click.option("--actor", envvar="RELAYCTL_ACTOR", default=None,
              help="Who is acting, for the audit log [env RELAYCTL_ACTOR; default login].")
@click.option("--allow-plaintext", is_flag=True,
              help="Allow redis:// to a non-loopback host.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML file: key templates, thresholds, labelled workspaces.")
@click.option("--tls-ca", envvar="RELAYCTL_TLS_CA", default=None, metavar="FILE",
              help="CA bundle to verify a rediss:// server [env RELAYCTL_TLS_CA].")
@click.option("--tls-cert", envvar="RELAYCTL_TLS_CERT", default=None, metavar="FILE",
              help="Client certificate for rediss:// [env RELAYCTL_TLS_CERT].")
@click.option("--tls-key", envvar="RELAYCTL_TLS_KEY", default=None, metavar="FILE",
              help="Client certificate's private key [env RELAYCTL_TLS_KEY].")
@click.option("--sentinel-password", envvar="RELAYCTL_SENTINEL_PASSWORD", default=None,
              metavar="PASSWORD", help="Password of the sentinels of a redis+sentinel:// URL "
              "[env RELAYCTL_SENTINEL_PASSWORD, preferred: not visible in ps].")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, metrics_url: tuple[str, ...],
        prometheus_url: str | None, prometheus_selector: str | None,
        prometheus_bearer_token_file: str | None, prometheus_ca: str | None,
        prometheus_header: tuple[str, ...], actor: str | None, allow_plaintext: bool,
        config_path: str | None, tls_ca: str | None, tls_cert: str | None,
        tls_key: str | None, sentinel_password: str | None) -> None:
    """Run the Relay job store's zero-downtime Redis key-schema migration."""
    if sentinel_password:  # connect() and spawned engines read it from the environment
        os.environ["RELAYCTL_SENTINEL_PASSWORD"] = sentinel_password
    urls = list(metrics_url) or _split_env_list(os.environ.get("RELAYCTL_METRICS_URL"))
    ctx.obj = Context(
        redis_url=redis_url, metrics_urls=urls, prometheus_url=prometheus_url,
        actor=actor or default_actor(), allow_plaintext=allow_plaintext,
        config=load_config(config_path),
        tls=TLSOptions(ca=tls_ca or None, cert=tls_cert or None, key=tls_key or None),
        config_path=os.path.abspath(config_path) if config_path else None,
        prometheus=PromFlags(selector=prometheus_selector,
                             bearer_token_file=prometheus_bearer_token_file,
                             ca=prometheus_ca, headers=prometheus_header),
    )


for _command in (
    flags_cmd.flags, demo.simulate, demo.demo, backfill.backfill, census.census,
    verify_cmd.verify, archive.archive, checklist.check, checklist.checklist,
    checklist.rollback, status_cmd.status, export.export_group, export.acl, console.tui,
    console.screenshots, bench.bench, exporter.exporter, audit.audit,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: map errors to one line on stderr and the exit codes of SPEC §10."""
    logging.basicConfig(level=os.environ.get("RELAYCTL_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rv = cli.main(args=argv, prog_name="relayctl", standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", ExitCode.STOPPED)
    except click.exceptions.ClickException as exc:
        # one line like every other error (click's default is a multi-line usage block)
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        fail(message, ExitCode.USAGE)
    except RedisUnavailableError as exc:
        fail(str(exc), ExitCode.LOST)
    except RelayError as exc:
        fail(str(exc), exc.exit_code)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        fail(f"lost connection to Redis: {describe_redis_error(exc)}", ExitCode.LOST)
    except redis.exceptions.NoPermissionError as exc:
        fail(f"Redis refused a command (permission): {describe_redis_error(exc)}",
             ExitCode.USAGE)
    except redis.RedisError as exc:
        fail(f"Redis error: {describe_redis_error(exc)}", ExitCode.ERRORS)
    sys.exit(rv if isinstance(rv, int) else ExitCode.OK)
