"""Maintenance of stored traffic: retro-active header redaction, retro-active secret
scrubbing and retention.

`GET /api/maintenance/redact-headers` (the job's last progress) and `POST
/api/maintenance/prune` (run retention now instead of at the next 10-minute tick) are ours;
greyproxy has neither.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.conversations.assembler import ASSEMBLER_VERSION
from greyproxy.services.audit import current_actor
from greyproxy.store.models import ConversationProcessingState

bp = Blueprint("maintenance", __name__)


@bp.post("/api/maintenance/redact-headers")
def redact_headers() -> Any:
    # Rows still queued in the writer would otherwise miss this run.
    runtime().flush_writes()
    runtime().redaction.start()  # Conflict (409) while a run is in progress
    return {"status": "redaction started"}


@bp.get("/api/maintenance/redact-headers")
def redact_headers_status() -> Any:
    return {k: v for k, v in runtime().redaction.status.items()}


@bp.post("/api/maintenance/scrub-secrets")
def scrub_secrets() -> Any:
    # Stored rows from before capture-time scrubbing (echoed secrets, raw redacted values).
    runtime().flush_writes()
    runtime().scrub_job.start(current_actor.get())  # Conflict (409) while a run is in progress
    return {"status": "scrubbing started"}


@bp.get("/api/maintenance/scrub-secrets")
def scrub_secrets_status() -> Any:
    return {k: v for k, v in runtime().scrub_job.status.items()}


@bp.get("/api/maintenance/status")
def maintenance_status() -> Any:
    """The reference's shape (is a conversation rebuild due?) and, beyond it, the last progress of
    each background job, as the `maintenance.progress` events report it."""
    rt = runtime()
    stored = rt.assembler.stored_version() if hasattr(rt.assembler, "stored_version") else _stored_version()
    return {
        "assembler_version_current": ASSEMBLER_VERSION,
        "assembler_version_stored": stored,
        "needs_rebuild": stored != ASSEMBLER_VERSION,
        "tasks": {"redact_headers": dict(rt.redaction.status), "scrub_secrets": dict(rt.scrub_job.status)},
    }


def _stored_version() -> str | None:
    row = ConversationProcessingState.get_or_none(ConversationProcessingState.key == "assembler_version")
    return row.value if row is not None else None


@bp.post("/api/maintenance/prune")
def prune() -> Any:
    runtime().flush_writes()
    return {"status": "ok", **runtime().retention.prune()}
