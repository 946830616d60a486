"""JSON shape of a stored transaction (the API's transaction object), shared by the REST API and `transaction.new`."""

from __future__ import annotations

import json
from typing import Any

from greyproxy.store.models import HttpTransaction
from greyproxy.timeutil import iso


def parse_json_column(text: str | None) -> Any:
    """A JSON column's value; None when empty or unreadable (a hand-edited row must not 500)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def body_text(body: bytes | memoryview | None) -> str | None:
    """Stored bodies are text-like by construction; bytes that are not UTF-8 show as U+FFFD."""
    return None if body is None else bytes(body).decode("utf-8", errors="replace")


def transaction_to_json(row: HttpTransaction, bodies: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "timestamp": iso(row.timestamp),
        "container_name": row.container_name,
        "destination_host": row.destination_host,
        "destination_port": row.destination_port,
        "method": row.method,
        "url": row.url,
        "request_headers": parse_json_column(row.request_headers),
        "request_body_size": row.request_body_size,
        "request_body_truncated": bool(row.request_body_truncated),
        "request_content_type": row.request_content_type,
        "status_code": row.status_code,
        "response_headers": parse_json_column(row.response_headers),
        "response_body_size": row.response_body_size,
        "response_body_truncated": bool(row.response_body_truncated),
        "response_content_type": row.response_content_type,
        "duration_ms": row.duration_ms,
        "rule_id": row.rule_id,
        "result": row.result,
        "substituted_credentials": parse_json_column(row.substituted_credentials),
        "session_id": row.session_id,
        "replay_of": row.replay_of,
        "recording_id": getattr(row, "recording_id", None),
        "middleware_actions": parse_json_column(row.middleware_actions) or [],  # the middleware badges
        "node_id": getattr(row, "node_id", None),  # which node captured it (fleet mode)
    }
    if bodies:
        data["request_body"] = body_text(row.request_body)
        data["response_body"] = body_text(row.response_body)
    return data
