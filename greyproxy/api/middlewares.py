"""`GET /api/middlewares` (live status of the external middlewares) and
`GET /api/middlewares/events` (their audit trail: denials, blocks, rewrites, tagged passes)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.parse import int_arg, str_arg
from greyproxy.store.models import MiddlewareEvent
from greyproxy.timeutil import iso

bp = Blueprint("middlewares", __name__)


def reference_fields(status: dict[str, Any]) -> dict[str, Any]:
    """One middleware as the reference names it (url, kind, protocol_version, ...), followed by
    our own fields (transport, target, version, counters, last_error)."""
    websocket = status.get("transport") in ("websocket", "ws")
    return {
        "url": status.get("target"),  # the ws:// URL, or the stdio command line
        "kind": "ws" if websocket else "stdio",
        "name": status.get("name"),
        "connected": status.get("connected", False),
        "protocol_version": status.get("version"),
        "hooks": status.get("hooks", []),
        "max_body_bytes": status.get("max_body_bytes"),
        "timeout_ms": status.get("timeout_ms"),
        "on_disconnect": status.get("on_disconnect"),
        **status,
    }


@bp.get("/api/middlewares")
def list_middlewares() -> Any:
    items = [reference_fields(s) for s in runtime().middlewares.status()]
    # `middlewares` is the reference's shape; `items`/`total` (the same list) is what our list
    # routes return and what earlier clients of this route read.
    return {"middlewares": items, "items": items, "total": len(items)}


def event_to_json(row: MiddlewareEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": iso(row.timestamp),
        "middleware": row.middleware,
        "hook": row.hook,
        "action": row.action,
        "status_code": row.status_code,
        "reason": row.reason,
        "tags": json.loads(row.tags) if row.tags else None,
        "container_name": row.container_name,
        "destination_host": row.destination_host,
        "method": row.method,
        "url": row.url,
    }


@bp.get("/api/middlewares/events")
def list_events() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    runtime().flush_writes()  # events of a moment ago sit in the writer's queue
    query = MiddlewareEvent.select()
    for name, column in (("middleware", MiddlewareEvent.middleware), ("action", MiddlewareEvent.action),
                         ("container", MiddlewareEvent.container_name), ("hook", MiddlewareEvent.hook)):
        value = str_arg(name)
        if value:
            query = query.where(column == value)
    total = query.count()
    # Newest first by time: worker processes (docs/workers.md) each write their own rows, so
    # the ids follow the writes, not the requests.
    rows = query.order_by(MiddlewareEvent.timestamp.desc(), MiddlewareEvent.id.desc()).limit(limit).offset(offset)
    return {"items": [event_to_json(r) for r in rows], "total": total}
