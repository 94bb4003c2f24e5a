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
