"""Read /metrics endpoints (summed) and a Prometheus server's HTTP API, with hard limits."""

from __future__ import annotations

import base64
import json
import math
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relayctl.core.connection import redact_url
from relayctl.core.errors import RelayError, UsageError

MAX_BODY = 8 * 1024 * 1024
TIMEOUT_S = 3.0

Sample = tuple[str, frozenset[tuple[str, str]]]


class SourceError(RelayError):
    """A metrics endpoint or Prometheus server is down, slow, or returned garbage."""


def _get(url: str, timeout: float, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SourceError(f"unsupported metrics URL {redact_url(url)}: expected http(s)://")
    # `timeout` bounds each socket operation; the deadline bounds the whole body, so an
    # endpoint trickling a byte at a time cannot hold the caller for longer than ~2x timeout
    deadline = time.monotonic() + timeout
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_BODY:
                if time.monotonic() > deadline:
                    raise SourceError(f"{redact_url(url)} too slow: body not complete "
                                      f"within {timeout:g}s")
                chunk = resp.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"{redact_url(url)} unreachable: {reason}") from None
    if len(body) > MAX_BODY:
        raise SourceError(f"{redact_url(url)} returned more than {MAX_BODY} bytes")
    return body


@dataclass
class Snapshot:
    """Counter values summed over every endpoint, taken at `ts`."""

    values: dict[Sample, float] = field(default_factory=dict)
    ts: float = 0.0

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, lbls), v in self.values.items() if n == name and want <= lbls)

    def minus(self, earlier: Snapshot) -> Snapshot:
        """Per-sample deltas; a counter that went down (restart) counts from zero."""
        out = {}
        for key, value in self.values.items():
            before = earlier.values.get(key, 0.0)
            out[key] = value - before if value >= before else value
        return Snapshot(values=out, ts=self.ts)

    def to_json(self) -> str:
        return json.dumps([[n, sorted(lbls), v] for (n, lbls), v in self.values.items()])

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        return cls(values={(n, frozenset((k, v) for k, v in lbls)): float(val)
                           for n, lbls, val in json.loads(text)})


def scrape(urls: Iterable[str], timeout: float = TIMEOUT_S) -> Snapshot:
    """Scrape and sum every endpoint; any failure raises SourceError (never partial data)."""
    snap = Snapshot(ts=time.time())
    for url in urls:
        body = _get(url, timeout)
        try:
            families = list(text_string_to_metric_families(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError) as exc:
            raise SourceError(f"{redact_url(url)} returned malformed metrics: "
                              f"{type(exc).__name__}") from None
        for family in families:
            # relay_* plus every counter: `[metrics.names]` may map a gate to a fleet's own
            for sample in family.samples:
                if not (sample.name.startswith("relay_") or family.type == "counter"):
                    continue
                key = (sample.name, frozenset(sample.labels.items()))
                snap.values[key] = snap.values.get(key, 0.0) + float(sample.value)
    return snap


# label op "value", comma-separated: the only selector syntax accepted, so a typo cannot
# turn every query into a PromQL parse error (or widen it) without a clear message
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def parse_selector(text: str | None) -> str:
    """`job="relay-api", env="prod"` normalised to `job="relay-api",env="prod"`; a
    UsageError naming the defect otherwise."""
    text = (text or "").strip().strip("{}").strip()
    if not text:
        return ""
    matchers: list[str] = []
    pos = 0
    while pos < len(text):
        m = _MATCHER.match(text, pos)
        if m is None:
            raise UsageError(f'--prometheus-selector: expected label="value" at '
                             f"{text[pos:pos + 20]!r}")
        matchers.append(f'{m.group(1)}{m.group(2)}"{m.group(3)}"')
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise UsageError(f"--prometheus-selector: expected ',' at {text[pos:pos + 20]!r}")
            pos += 1
    return ",".join(matchers)


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` from a repeatable --prometheus-header; the value is never echoed."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name) or "\n" in value or "\r" in value:
        raise UsageError(f"--prometheus-header must be 'Name: value' (got a header named "
                         f"{name[:40]!r})")
    return name, value.strip()


@dataclass(frozen=True)
class PromOptions:
    """How to reach one Prometheus (or Mimir / Thanos) and which series are the fleet's."""

    url: str
    selector: str = ""
    bearer_token_file: str | None = None
    ca: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def display(self) -> str:
        return redact_url(self.url)


class Prometheus:
    """The HTTP API with the credentials applied; every failure is a credential-free
    SourceError, every query evaluated at the one `at` time it is given."""

    def __init__(self, options: PromOptions, timeout: float = TIMEOUT_S) -> None:
        self.options = options
        self.timeout = timeout
        try:
            parts = urllib.parse.urlsplit(options.url.strip())
            host = parts.hostname
        except ValueError:
            raise UsageError(f"--prometheus-url {redact_url(options.url)} is not a URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise UsageError(f"--prometheus-url {redact_url(options.url)}: expected "
                             "http(s)://[user:password@]host[:port][/path]")
        self.headers: dict[str, str] = dict(options.headers)
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        if options.bearer_token_file:
            self.headers["Authorization"] = f"Bearer {_read_token(options.bearer_token_file)}"
        netloc = host if ":" not in host else f"[{host}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"),
                                             "", ""))
        self.context: ssl.SSLContext | None = None
        if options.ca:
            if not Path(options.ca).is_file():
                raise UsageError(f"--prometheus-ca: no such file: {options.ca}")
            try:
                self.context = ssl.create_default_context(cafile=options.ca)
            except (ssl.SSLError, OSError) as exc:
                raise UsageError(f"--prometheus-ca {options.ca}: not a CA bundle "
                                 f"({type(exc).__name__})") from None

    @property
    def display(self) -> str:
        return self.base

    def _api(self, path: str, params: dict[str, str]) -> object:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            data = json.loads(_get(url, self.timeout, self.headers, self.context))
        except ValueError:
            raise SourceError(f"Prometheus at {self.display} returned garbage") from None
        if not isinstance(data, dict) or data.get("status") != "success":
            error = data.get("error", "") if isinstance(data, dict) else ""
            raise SourceError(f"Prometheus at {self.display} refused the request: "
                              f"{str(error)[:200]}".rstrip(": "))
        return data.get("data")

    def query(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
        """One instant query at `at`: each returned series' labels and value."""
        data = self._api("/api/v1/query", {"query": promql, "time": f"{at:.3f}"})
        try:
            assert isinstance(data, dict)
            out = []
            for r in data["result"]:
                value = float(r["value"][1])
                if not math.isnan(value):
                    out.append((dict(r["metric"]), value))
            return out
        except (AssertionError, KeyError, TypeError, ValueError, IndexError):
            raise SourceError(f"Prometheus at {self.display} returned garbage") from None

    def scrape_intervals(self) -> list[float] | None:
        """Scrape intervals of the active targets the selector matches (None: no targets
        API, as behind Mimir or Thanos)."""
        try:
            data = self._api("/api/v1/targets", {"state": "active"})
        except SourceError:
            return None
        try:
            assert isinstance(data, dict)
            return [_duration_s(t["scrapeInterval"]) for t in data["activeTargets"]
                    if selector_matches(self.options.selector, t.get("labels", {}))
                    and t.get("scrapeInterval")]
        except (AssertionError, KeyError, TypeError, ValueError):
            return None


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prometheus-bearer-token-file {path}: cannot read it "
                         f"({type(exc).__name__})") from None
    if not token or "\n" in token:
        raise UsageError(f"--prometheus-bearer-token-file {path}: expected one token line")
    return token


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration_s(text: str) -> float:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(text)
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Whether a target's labels satisfy a parse_selector() selector (RE2 ~ re, anchored)."""
    for m in _MATCHER.finditer(selector):
        name, op, raw = m.groups()
        value = raw.encode().decode("unicode_escape")
        have = labels.get(name, "")
        if (op == "=" and have != value) or (op == "!=" and have == value):
            return False
        if op in ("=~", "!~") and bool(re.fullmatch(value, have)) != (op == "=~"):
            return False
    return True
