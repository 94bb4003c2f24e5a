"""Redis connections: URL policy, TLS, redaction and a clear error when Redis is down."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from relayctl.core.errors import RedisUnavailableError, UsageError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SECRET_QUERY = {"password", "username", "user", "pass", "ssl_password", "token"}
_URL_IN_TEXT = re.compile(r"\b(rediss?|unix|https?)://[^\s'\"]+")


def redact_url(url: str) -> str:
    """The one way a URL is shown: userinfo and secret query parameters become ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"***@{hostport}" if userinfo else hostport
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

    def ssl_kwargs(self) -> dict:
        self.check()
        kwargs: dict = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
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

    @property
    def display(self) -> str:
        return redact_url(self.url)


def parse_target(url: str | None = None, allow_plaintext: bool = False) -> RedisTarget:
    """Check the URL's scheme and the plaintext policy before anything connects."""
    url = url or os.environ.get("REDIS_URL") or DEFAULT_URL
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid Redis URL {redact_url(url)}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise UsageError(
            f"invalid Redis URL {redact_url(url)}: scheme must be redis://, rediss:// or unix://"
        )
    host = parts.hostname or ""
    cluster, url = _cluster_option(url, parts.query)
    if scheme == "unix" and cluster:
        raise UsageError(f"invalid Redis URL {redact_url(url)}: a cluster needs a host and port")
    if scheme == "redis" and not is_loopback_host(host) and not allow_plaintext:
        raise UsageError(
            f"refusing plaintext Redis connection to non-loopback host {host}: "
            "use rediss:// or pass --allow-plaintext"
        )
    return RedisTarget(url=url, scheme=scheme, host=host or "localhost", port=port,
                       tls=scheme == "rediss", cluster=cluster)


_CLUSTER_WORDS = {"yes": True, "true": True, "1": True, "on": True,
                  "no": False, "false": False, "0": False, "off": False, "auto": None}


def _cluster_option(url: str, query: str) -> tuple[bool | None, str]:
    """`?cluster=yes|no|auto` in the URL, removed from it (redis-py does not know it)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    chosen = [v for k, v in pairs if k.lower() == "cluster"]
    if not chosen:
        return None, url
    word = chosen[-1].strip().lower()
    if word not in _CLUSTER_WORDS:
        raise UsageError(f"invalid Redis URL {redact_url(url)}: cluster= must be yes, no or auto")
    parts = urlsplit(url)
    rest = urlencode([(k, v) for k, v in pairs if k.lower() != "cluster"])
    return _CLUSTER_WORDS[word], urlunsplit(parts._replace(query=rest))


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
) -> redis.Redis:
    """Open a client for the URL; with check=True, PING it and fail with exit 4 if down.

    `tls` (default: the RELAYCTL_TLS_* environment) applies to rediss:// URLs.
    """
    target = parse_target(url, allow_plaintext)
    tls = TLSOptions.from_env() if tls is None else tls
    tls.check()
    kwargs: dict = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": decode_responses,
        "health_check_interval": 15,
    }
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if target.tls:
        kwargs.update(tls.ssl_kwargs())
    try:
        client = redis.Redis.from_url(target.url, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"invalid Redis URL {target.display}: {redact_text(str(exc))}"
        ) from None
    cluster = target.cluster
    if cluster is None and target.scheme != "unix":
        cluster = _cluster_enabled(client, target.display, strict=check)
    if cluster:
        client.close()
        return _connect_cluster(target, kwargs)
    if check:
        ping(client, target.display)
    return client


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


def _connect_cluster(target: RedisTarget, kwargs: dict) -> RedisCluster:
    """The cluster client; it discovers every node from the one in the URL."""
    kwargs = dict(kwargs)
    kwargs.pop("health_check_interval", None)
    max_connections = kwargs.pop("max_connections", None)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    try:
        return RedisCluster.from_url(target.url, **kwargs)
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
