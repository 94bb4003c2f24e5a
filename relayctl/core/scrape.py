"""Read /metrics endpoints (summed) and a Prometheus server's HTTP API, with hard limits."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from relayctl.core.connection import redact_url
from relayctl.core.errors import RelayError

MAX_BODY = 8 * 1024 * 1024
TIMEOUT_S = 3.0

Sample = tuple[str, frozenset[tuple[str, str]]]


class SourceError(RelayError):
    """A metrics endpoint or Prometheus server is down, slow, or returned garbage."""


def _get(url: str, timeout: float) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SourceError(f"unsupported metrics URL {redact_url(url)}: expected http(s)://")
    # `timeout` bounds each socket operation; the deadline bounds the whole body, so an
    # endpoint trickling a byte at a time cannot hold the caller for longer than ~2x timeout
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
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
            for sample in family.samples:
                if not sample.name.startswith("relay_"):
                    continue
                key = (sample.name, frozenset(sample.labels.items()))
                snap.values[key] = snap.values.get(key, 0.0) + float(sample.value)
    return snap


def prom_query(base_url: str, promql: str, timeout: float = TIMEOUT_S) -> float | None:
    """One instant query; the sum of the returned vector, None when it is empty."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        data = json.loads(_get(url, timeout))
        if data.get("status") != "success":
            raise SourceError(f"Prometheus at {redact_url(base_url)} refused the query")
        result = data["data"]["result"]
        if not result:
            return None
        return sum(float(r["value"][1]) for r in result)
    except (KeyError, TypeError, ValueError, IndexError):
        raise SourceError(f"Prometheus at {redact_url(base_url)} returned garbage") from None
