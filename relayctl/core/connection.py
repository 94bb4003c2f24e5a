"""Redis connections: URL policy, TLS, redaction and a clear error when Redis is down."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError, Sentinel

from relayctl.core.cluster import as_client
from relayctl.core.engine_version import require_commands
from relayctl.core.errors import RedisUnavailableError, UsageError
from relayctl.core.packing import packer_kwargs

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SECRET_QUERY = {"password", "username", "user", "pass", "ssl_password", "token"}
_URL_IN_TEXT = re.compile(r"\b(rediss?(?:\+sentinel)?|unix|https?)://[^\s'\"]+")
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
# Every query parameter relayctl accepts; anything else is a usage error naming it.
QUERY_PARAMS = ("cluster", "db", "protocol", "ssl_cert_reqs", "username", "password")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
SENTINEL_PORT = 26379


def _userinfo_split(url: str) -> tuple[str, str | None, str]:
    """(scheme, userinfo or None, the rest): the userinfo is everything up to the LAST `@`, so
    a password with an unencoded `@`, `/`, `?` or `:` is never taken for host, path or query."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    if "@" in rest:
        userinfo, _, after = rest.rpartition("@")
        return scheme, userinfo, after
    return scheme, None, rest


def redact_url(url: str) -> str:
    """The one way a URL is shown: userinfo and secret query parameters become ***."""
    scheme, userinfo, rest = _userinfo_split(url)
    if not scheme:
        return "<unparseable url>"
    try:
        parts = urlsplit(f"{scheme}://{rest}")
    except ValueError:
        return f"{scheme}://***@..." if userinfo is not None else "<unparseable url>"
    netloc = f"***@{parts.netloc}" if userinfo else parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """Redact every URL found inside free text (exception messages, log lines)."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        trimmed = url.rstrip("?.,;:!)]}")
        return redact_url(trimmed) + url[len(trimmed):]

    return _URL_IN_TEXT.sub(one, text)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


TLS_ENV = {"ca": "RELAYCTL_TLS_CA", "cert": "RELAYCTL_TLS_CERT", "key": "RELAYCTL_TLS_KEY"}


@dataclass(frozen=True)
class TLSOptions:
    """Files for rediss:// connections: the CA to trust and an optional client certificate.

    Travels to child processes (spawned backfill engines) in RELAYCTL_TLS_* environment
    variables, never on the command line.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TLSOptions:
        env = os.environ if environ is None else environ
        return cls(**{k: env.get(v) or None for k, v in TLS_ENV.items()})

    def env(self) -> dict[str, str]:
        """The RELAYCTL_TLS_* variables that reproduce these options in a child process."""
        return {TLS_ENV[k]: v for k, v in (("ca", self.ca), ("cert", self.cert),
                                            ("key", self.key)) if v}

    def check(self) -> None:
        """Every given file must exist; a client certificate needs its key and vice versa."""
        for name, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert),
                           ("--tls-key", self.key)):
            if path and not os.path.isfile(path):
                raise UsageError(f"{name}: no such file: {path}")
        if bool(self.cert) != bool(self.key):
            raise UsageError("--tls-cert and --tls-key must be given together")

    def ssl_kwargs(self) -> dict[str, Any]:
        self.check()
        kwargs: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.ca:
            kwargs["ssl_ca_certs"] = self.ca
        if self.cert:
            kwargs["ssl_certfile"] = self.cert
            kwargs["ssl_keyfile"] = self.key
        return kwargs


@dataclass(frozen=True)
class RedisTarget:
    """A parsed, policy-checked Redis URL."""

    url: str
    scheme: str
    host: str
    port: int | None
    tls: bool
    cluster: bool | None = None  # None: ask the server (INFO cluster)
    cert_reqs: str = "required"  # rediss:// `?ssl_cert_reqs=`: required, optional or none
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None  # the Sentinel service (primary) name
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    protocol: int | None = None  # None: RESP3, or RESP2 where HELLO is unavailable

    @property
    def display(self) -> str:
        return redact_url(self.url)

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def verify_certs(self) -> bool:
        return self.cert_reqs == "required"


def _bad(url: str, why: str) -> UsageError:
    return UsageError(f"invalid Redis URL {redact_url(url)}: {why}")


def parse_target(url: str | None = None, allow_plaintext: bool = False) -> RedisTarget:
    """Check the URL's scheme, parameters and the plaintext policy before anything connects.

    No message ever quotes the userinfo or Python's own parse error (which may quote it).
    """
    url = url or os.environ.get("REDIS_URL") or DEFAULT_URL
    scheme_raw, userinfo, _ = _userinfo_split(url)
    scheme = scheme_raw.lower()
    if scheme not in SCHEMES:
        raise _bad(url, "scheme must be redis://, rediss://, unix://, redis+sentinel:// or "
                   "rediss+sentinel://")
    if userinfo is not None and any(ch in userinfo for ch in "@/?#"):
        raise _bad(url, "the user name or password has an unencoded reserved character "
                   "(@ / ? #): percent-encode it")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _bad(url, "malformed host or port") from None
    options = _query_options(url, parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    username = options.pop("username", username)
    password = options.pop("password", password)
    tls = scheme.startswith("rediss")
    cert_reqs = options.get("ssl_cert_reqs", "required")
    protocol = int(options["protocol"]) if "protocol" in options else None
    cluster = options.get("cluster")
    if scheme.endswith("+sentinel"):
        sentinels, service, db = _sentinel_parts(url, parts)
        if cluster:
            raise _bad(url, "a Sentinel URL names a primary, not a cluster: drop cluster=")
        if "db" in options:
            db = int(options["db"])
        if not tls and not allow_plaintext:
            for host, _ in sentinels:
                _refuse_plaintext(host)
        return RedisTarget(url=url, scheme=scheme, host=sentinels[0][0], port=sentinels[0][1],
                           tls=tls, cluster=False, cert_reqs=cert_reqs, sentinels=sentinels,
                           service=service, db=db, username=username, password=password,
                           protocol=protocol)
    try:
        port = parts.port
    except ValueError:
        raise _bad(url, "the port must be a number from 0 to 65535") from None
    host = parts.hostname or ""
    if scheme == "unix" and cluster:
        raise _bad(url, "a cluster needs a host and port")
    if scheme == "redis" and not allow_plaintext:
        _refuse_plaintext(host)
    db = int(options["db"]) if "db" in options else _path_db(url, parts.path, scheme)
    if "cluster" in options:  # relayctl's own option: redis-py does not know it
        rest = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                          if k.lower() != "cluster"])
        url = urlunsplit(parts._replace(query=rest))
    return RedisTarget(url=url, scheme=scheme, host=host or "localhost", port=port,
                       tls=tls, cluster=cluster, cert_reqs=cert_reqs, db=db,
                       username=username, password=password, protocol=protocol)


def _refuse_plaintext(host: str) -> None:
    if not is_loopback_host(host):
        raise UsageError(
            f"refusing plaintext Redis connection to non-loopback host {host}: "
            "use rediss:// or pass --allow-plaintext"
        )


def _path_db(url: str, path: str, scheme: str) -> int:
    if scheme == "unix":
        return 0
    text = path.strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise _bad(url, "the path must be a database number (/0, /3)")
    return int(text)


def _sentinel_parts(url: str, parts: SplitResult) -> tuple[tuple[tuple[str, int], ...], str, int]:
    """`host1:26379,host2:26379/SERVICE/DB` -> the sentinels, the service and the database."""
    hostlist = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hostlist.split(","):
        host, sep, port = item.strip().rpartition(":") if "]" not in item.rpartition(":")[2] \
            else (item.strip(), "", "")
        if not sep:
            host, port = item.strip(), str(SENTINEL_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, "each sentinel must be host or host:port")
        sentinels.append((host, int(port)))
    segments = [seg for seg in parts.path.split("/") if seg]
    if not segments or len(segments) > 2:
        raise _bad(url, "a Sentinel URL's path is /SERVICE or /SERVICE/DB")
    if len(segments) == 2 and not segments[1].isdigit():
        raise _bad(url, "the database after the service must be a number")
    return tuple(sentinels), unquote(segments[0]), int(segments[1]) if len(segments) == 2 else 0


_CLUSTER_WORDS = {"yes": True, "true": True, "1": True, "on": True,
                  "no": False, "false": False, "0": False, "off": False, "auto": None}
_CERT_REQS = ("required", "optional", "none")


def _query_options(url: str, query: str) -> dict[str, Any]:
    """Every query parameter checked and parsed; an unknown one is a usage error naming it."""
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        name = key.lower()
        if name not in QUERY_PARAMS:
            shown = f"{key!r}" if _PARAM_NAME.match(key) else "(unprintable)"
            raise _bad(url, f"unknown parameter {shown}: relayctl supports "
                       f"{', '.join(QUERY_PARAMS)}")
        word = value.strip().lower()
        if name == "cluster":
            if word not in _CLUSTER_WORDS:
                raise _bad(url, "cluster= must be yes, no or auto")
            options[name] = _CLUSTER_WORDS[word]
        elif name == "db":
            if not word.isdigit():
                raise _bad(url, "db= must be a database number")
            options[name] = int(word)
        elif name == "protocol":
            if word not in ("2", "3"):
                raise _bad(url, "protocol= must be 2 or 3")
            options[name] = int(word)
        elif name == "ssl_cert_reqs":
            if word not in _CERT_REQS:
                raise _bad(url, "ssl_cert_reqs= must be required, optional or none")
            options[name] = word
        else:
            options[name] = value
    return options


_WARNED: set[str] = set()


def _warn(message: str) -> None:
    """A one-line warning on stderr, once per process and message."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"relayctl: warning: {message}", file=sys.stderr)


def connect(
    url: str | None = None,
    *,
    allow_plaintext: bool = False,
    socket_timeout: float = 5.0,
    connect_timeout: float = 3.0,
    decode_responses: bool = True,
    check: bool = True,
    max_connections: int | None = None,
    tls: TLSOptions | None = None,
    sentinel_password: str | None = None,
) -> redis.Redis:
    """Open a client for the URL; with check=True, PING it and fail with exit 4 if down, and
    refuse (exit 2) a server lacking a command relayctl needs.

    `tls` (default: the RELAYCTL_TLS_* environment) applies to rediss:// URLs;
    `sentinel_password` (default: RELAYCTL_SENTINEL_PASSWORD) authenticates to the sentinels.
    """
    target = parse_target(url, allow_plaintext)
    tls = TLSOptions.from_env() if tls is None else tls
    tls.check()
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": decode_responses,
        "health_check_interval": 15,
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }
    if target.protocol is not None:
        kwargs["protocol"] = target.protocol
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if target.tls:
        kwargs.update(tls.ssl_kwargs())
        kwargs["ssl"] = True
        if not target.verify_certs:
            kwargs["ssl_cert_reqs"] = target.cert_reqs
            kwargs["ssl_check_hostname"] = False
            _warn(f"TLS without certificate verification for {target.display} "
                  "(ssl_cert_reqs): the redis_tls gate fails")
    if target.sentinel:
        if sentinel_password is None:
            sentinel_password = os.environ.get(SENTINEL_PASSWORD_ENV) or None
        def build_sentinel(kw: dict[str, Any]) -> redis.Redis:
            return _connect_sentinel(target, kw, sentinel_password)

        client = _negotiate(build_sentinel(kwargs), target, kwargs, build_sentinel,
                            strict=check)
        if check:
            ping(client, target.display)
            require_commands(client, target.display, cluster=False)
        return client
    try:
        client = _plain_client(target, kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"invalid Redis URL {target.display}: {redact_text(str(exc))}"
        ) from None
    client = _negotiate(client, target, kwargs, lambda kw: _plain_client(target, kw),
                        strict=check)
    cluster = target.cluster
    if cluster is None and target.scheme != "unix":
        cluster = _cluster_enabled(client, target.display, strict=check)
    if cluster:
        client.close()
        cclient = _connect_cluster(target, kwargs)
        if check:
            require_commands(cclient, target.display, cluster=True)
        return as_client(cclient)
    if check:
        ping(client, target.display)
        require_commands(client, target.display, cluster=False)
    return client


SENTINEL_PASSWORD_ENV = "RELAYCTL_SENTINEL_PASSWORD"


def _bare_url(target: RedisTarget) -> str:
    """The URL without userinfo and query (both already parsed into keyword arguments)."""
    parts = urlsplit(target.url)
    if target.scheme == "unix":
        return urlunsplit(("unix", "", parts.path, "", ""))
    host = f"[{target.host}]" if ":" in target.host else target.host
    port = f":{target.port}" if target.port else ""
    return f"{target.scheme}://{host}{port}/{target.db}"


def _plain_client(target: RedisTarget, kwargs: dict[str, Any]) -> redis.Redis:
    """A standalone client from the checked target, built as redis-py builds one from a URL."""
    kw = packer_kwargs(dict(kwargs))
    kw.pop("ssl", None)  # rediss:// says it
    return redis.Redis.from_url(_bare_url(target), **kw)


def _connect_sentinel(target: RedisTarget, kwargs: dict[str, Any],
                      sentinel_password: str | None) -> redis.Redis:
    """The primary of the Sentinel service; the client follows it across failovers."""
    node = dict(kwargs)
    node.pop("health_check_interval", None)
    sentinel_kwargs = {k: v for k, v in node.items()
                       if k.startswith("ssl") or k in ("socket_timeout",
                                                       "socket_connect_timeout", "protocol")}
    sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **node)
    assert target.service is not None
    client: redis.Redis = sentinel.master_for(target.service, redis_class=redis.Redis)
    return client


class _QuietHelloFallback(logging.Filter):
    """redis-py >= 8.2 falls back to RESP2 by itself and logs a warning on every connection;
    relayctl detects that fallback and rebuilds the client for RESP2, so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not support HELLO" not in record.getMessage()


def _fell_back_to_resp2(client: redis.Redis) -> bool:
    """True when the probed connection speaks RESP2 although nobody asked for it."""
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except TypeError:  # redis-py before 6 wants a command name
        conn = pool.get_connection("PING")
    try:
        return str(getattr(conn, "protocol", "")) == "2"
    finally:
        pool.release(conn)


def _negotiate(client: redis.Redis, target: RedisTarget, kwargs: dict[str, Any],
               build: Callable[[dict[str, Any]], redis.Redis], *, strict: bool) -> redis.Redis:
    """Speak RESP3 where the server offers HELLO, else RESP2 (older servers, some proxies):
    one probe per client, then a client built for RESP2 (its reply parsers differ);
    `?protocol=` in the URL skips it."""
    if target.protocol is not None:
        return client
    quiet = _QuietHelloFallback()
    redis_log = logging.getLogger("redis.connection")
    redis_log.addFilter(quiet)
    try:
        client.ping()
        if not _fell_back_to_resp2(client):
            return client
    except redis.ResponseError as exc:
        if "hello" not in str(exc).lower():
            return client
    except (redis.ConnectionError, redis.TimeoutError, OSError, redis.AuthenticationError,
            MasterNotFoundError):
        if strict:
            ping(client, target.display)  # raises the one-line unavailable/credentials error
        return client
    finally:
        redis_log.removeFilter(quiet)
    client.close()
    kwargs["protocol"] = 2
    return build(kwargs)


def _cluster_enabled(client: redis.Redis, display: str, *, strict: bool) -> bool:
    """INFO cluster says whether the server is a cluster node; a server without INFO is not."""
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.ResponseError:
        return False  # INFO refused (a strict ACL, the embedded demo): treat as standalone
    except (redis.ConnectionError, redis.TimeoutError, OSError, redis.AuthenticationError):
        if strict:
            ping(client, display)  # raises the one-line unavailable/credentials error
        return False


def _connect_cluster(target: RedisTarget, kwargs: dict[str, Any]) -> RedisCluster:
    """The cluster client; it discovers every node from the one in the URL."""
    kwargs = dict(kwargs)
    kwargs.pop("health_check_interval", None)
    if kwargs.pop("db", 0):
        raise UsageError(f"invalid Redis URL {target.display}: a cluster has only database 0")
    if kwargs.get("max_connections") is None:
        kwargs.pop("max_connections", None)
    try:
        kwargs.pop("ssl", None)
        return RedisCluster.from_url(_bare_url(target), **kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid Redis URL {target.display}: {redact_text(str(exc))}") from None
    except redis.AuthenticationError:
        raise RedisUnavailableError(f"Redis at {target.display} rejected the credentials") from None
    except redis.exceptions.NoPermissionError:
        raise  # reported like any refused command: a one-line permission error, exit 2
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailableError(
            f"cannot reach Redis Cluster at {target.display}: {describe_redis_error(exc)}"
        ) from None
    except RedisClusterException as exc:
        if "not enabled" in str(exc) and target.cluster:
            raise UsageError(f"Redis at {target.display} is not a cluster node: drop "
                             "cluster=yes from the URL") from None
        if "not enabled" in str(exc):
            raise UsageError(f"Redis at {target.display} is a cluster node but refused its "
                             "slot map (CLUSTER SLOTS): grant it, see `relayctl acl`") from None
        raise RedisUnavailableError(
            f"cannot reach Redis Cluster at {target.display}: {describe_redis_error(exc)}"
        ) from None


def ping(client: redis.Redis, display: str) -> None:
    """PING, translating connection failures into RedisUnavailableError."""
    try:
        client.ping()
    except MasterNotFoundError:
        raise RedisUnavailableError(
            f"no sentinel of {display} reached or none names a primary for that service"
        ) from None
    except redis.AuthenticationError:
        raise RedisUnavailableError(f"Redis at {display} rejected the credentials") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailableError(
            f"cannot reach Redis at {display}: {describe_redis_error(exc)}"
        ) from None


def describe_redis_error(exc: BaseException) -> str:
    """A short, credential-free description of a redis-py or socket error."""
    text = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return text or type(exc).__name__
