"""`GET /api/audit`: the audit log (docs/decisions.md#audit-observability-traffic-tools), newest first, with time, kind and actor filters."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint

from greyproxy.api.errors import ApiError
from greyproxy.api.parse import int_arg, str_arg, time_arg
from greyproxy.store.models import AuditEntry

bp = Blueprint("audit", __name__)


def entry_to_json(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": row.timestamp,
        "actor": row.actor,
        "kind": row.kind,
        "target": row.target,
        "before": json.loads(row.before) if row.before else None,
        "after": json.loads(row.after) if row.after else None,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def _text(value: Any) -> str:
    # Stored times are fixed-width ISO text with microseconds: compare in that same form.
    return value.isoformat(timespec="microseconds") + "Z"


@bp.get("/api/audit")
def list_audit() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    since, until = time_arg("since"), time_arg("until")
    if since is not None and until is not None and since > until:
        raise ApiError(400, "'since' must not be after 'until'")
    query = AuditEntry.select()
    if since is not None:
        query = query.where(AuditEntry.timestamp >= _text(since))
    if until is not None:
        query = query.where(AuditEntry.timestamp <= _text(until))
    kind = str_arg("kind")
    if kind:  # "rule" matches every rule.* kind; "rule.update" only that one
        query = query.where((AuditEntry.kind == kind) | AuditEntry.kind.startswith(f"{kind}."))
    actor = str_arg("actor")
    if actor:
        query = query.where(AuditEntry.actor == actor)
    total = query.count()
    rows = query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    return {"items": [entry_to_json(r) for r in rows], "total": total}
