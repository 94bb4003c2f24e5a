"""Key names of the job store, built from configurable templates.

Templates use `<ws>`, `<job_id>`, `<request_id>` placeholders so that literal braces stay
available for Redis Cluster hash tags.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayctl.core.errors import UsageError

FLAGS_KEY = "relay:flags"
AUDIT_KEY = "relay:audit"
FLEET_PREFIX = "relay:fleet:"
FLEET_INDEX_KEY = "relay:fleet"
CURSOR_SECRET_KEY = "relay:cursor:secret"
CHECKLIST_KEY = "relay:checklist"
CENSUS_KEY = "relay:census"
VERIFY_KEY = "relay:verify:last"
DEMO_CLOCK_KEY = "relay:demo:clock"  # the embedded demo's scaled clock (demo.py)
BACKFILL_PREFIX = "relay:backfill:"

_GLOB_CHARS = set("*?[]\\")


def _check_template(name: str, template: str, required: tuple[str, ...]) -> None:
    for placeholder in required:
        if template.count(placeholder) != 1:
            raise UsageError(f"key template {name}={template!r} must contain {placeholder} once")
    if _GLOB_CHARS & set(template):
        raise UsageError(f"key template {name}={template!r} must not contain glob characters")


@dataclass(frozen=True)
class KeySchema:
    """The job store's key templates (SPEC §1 defaults)."""

    old_job: str = "ai:jobs:<job_id>"
    new_job: str = "ai:job:<ws>:<job_id>"
    index: str = "ai:jobidx:<ws>"
    queue: str = "ai:queue:pending"
    idempotency: str = "ai:idempotency:<ws>:<request_id>"

    def __post_init__(self) -> None:
        _check_template("old_job", self.old_job, ("<job_id>",))
        _check_template("new_job", self.new_job, ("<ws>", "<job_id>"))
        _check_template("index", self.index, ("<ws>",))
        _check_template("idempotency", self.idempotency, ("<ws>", "<request_id>"))
        _check_template("queue", self.queue, ())

    def old_key(self, job_id: str) -> str:
        return self.old_job.replace("<job_id>", job_id)

    def new_key(self, ws: str, job_id: str) -> str:
        return self.new_job.replace("<ws>", ws).replace("<job_id>", job_id)

    def index_key(self, ws: str) -> str:
        return self.index.replace("<ws>", ws)

    def idempotency_key(self, ws: str, request_id: str) -> str:
        return self.idempotency.replace("<ws>", ws).replace("<request_id>", request_id)

    @property
    def old_pattern(self) -> str:
        """SCAN MATCH pattern for every legacy job key."""
        return self.old_job.replace("<job_id>", "*")

    @property
    def new_pattern(self) -> str:
        """SCAN MATCH pattern for every workspace-scoped job key."""
        return self.new_job.replace("<ws>", "*").replace("<job_id>", "*")

    @property
    def index_pattern(self) -> str:
        return self.index.replace("<ws>", "*")

    def is_old_key(self, key: str) -> bool:
        head, _, tail = self.old_job.partition("<job_id>")
        return key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail)

    def classifier(self) -> KeyClassifier:
        return KeyClassifier(self)


class KeyClassifier:
    """Sorts key names into old / new / index from the templates alone (one SCAN pass)."""

    def __init__(self, schema: KeySchema) -> None:
        self.old_head, _, self.old_tail = schema.old_job.partition("<job_id>")
        head, _, rest = schema.new_job.partition("<ws>")
        mid, _, tail = rest.partition("<job_id>")
        self.new_head, self.new_mid, self.new_tail = head, mid, tail
        self.idx_head, _, self.idx_tail = schema.index.partition("<ws>")

    def classify(self, key: str) -> tuple[str, str | None] | None:
        """('old', None) | ('new', ws) | ('index', ws) | None for any other key."""
        if key.startswith(self.old_head) and key.endswith(self.old_tail) \
                and len(key) > len(self.old_head) + len(self.old_tail):
            body = key[len(self.old_head):len(key) - len(self.old_tail)]
            if ":" not in body:
                return ("old", None)
        if key.startswith(self.new_head) and key.endswith(self.new_tail):
            body = key[len(self.new_head):len(key) - len(self.new_tail)]
            ws, sep, job = body.partition(self.new_mid)
            if sep and ws and job and ":" not in ws:
                return ("new", ws)
        if key.startswith(self.idx_head) and key.endswith(self.idx_tail):
            ws = key[len(self.idx_head):len(key) - len(self.idx_tail)]
            if ws and ":" not in ws:
                return ("index", ws)
        return None
