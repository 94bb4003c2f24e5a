"""relayctl configuration: key templates, thresholds and labelled workspaces from TOML."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from relayctl.core.errors import UsageError
from relayctl.core.keys import KeySchema
from relayctl.core.validate import validate_workspace_id

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_KEY_FIELDS = {"old_job", "new_job", "index", "queue", "idempotency"}


@dataclass(frozen=True)
class Config:
    schema: KeySchema = field(default_factory=KeySchema)
    labelled_workspaces: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    metric_names: dict[str, str] = field(default_factory=dict)
    prometheus_selector: str = ""


def load_config(path: str | Path | None) -> Config:
    """Read a --config TOML file; any defect is a one-line UsageError naming it."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {p}: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {p} is not valid TOML: {exc}") from None
    unknown = set(data) - {"keys", "workspaces", "thresholds", "metrics", "prometheus"}
    if unknown:
        raise UsageError(f"config file {p}: unknown section(s) {', '.join(sorted(unknown))}")
    keys = data.get("keys", {})
    if not isinstance(keys, dict) or set(keys) - _KEY_FIELDS:
        raise UsageError(f"config file {p}: [keys] accepts only {', '.join(sorted(_KEY_FIELDS))}")
    if not all(isinstance(v, str) for v in keys.values()):
        raise UsageError(f"config file {p}: key templates must be strings")
    schema = KeySchema(**keys)
    ws_section = data.get("workspaces", {})
    labelled = ws_section.get("labelled", []) if isinstance(ws_section, dict) else None
    if not isinstance(labelled, list):
        raise UsageError(f"config file {p}: workspaces.labelled must be a list")
    labelled_ids = tuple(validate_workspace_id(w) for w in labelled)
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in thresholds.values()
    ):
        raise UsageError(f"config file {p}: [thresholds] values must be numbers")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or set(metrics) - {"names"}:
        raise UsageError(f"config file {p}: [metrics] accepts only a [metrics.names] table")
    names = metrics.get("names", {})
    if not isinstance(names, dict) or not all(
            isinstance(v, str) and _METRIC_NAME.match(v) for v in names.values()):
        raise UsageError(f"config file {p}: [metrics.names] values must be metric names "
                         "([a-zA-Z_:][a-zA-Z0-9_:]*)")
    prom = data.get("prometheus", {})
    if not isinstance(prom, dict) or set(prom) - {"selector"} or not isinstance(
            prom.get("selector", ""), str):
        raise UsageError(f"config file {p}: [prometheus] accepts only selector = \"...\"")
    return Config(schema=schema, labelled_workspaces=labelled_ids,
                  thresholds={k: float(v) for k, v in thresholds.items()},
                  metric_names=dict(names), prometheus_selector=prom.get("selector", ""))
