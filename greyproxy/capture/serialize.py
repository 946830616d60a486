"""JSON shape of a stored transaction (§5 Txn)."""

from __future__ import annotations

import json
from typing import Any

from greyproxy.store.models import HttpTransaction
from greyproxy.timeutil import iso


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _text(body: bytes | None) -> str | None:
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
        "request_headers": _json(row.request_headers),
        "request_body_size": row.request_body_size,
        "request_body_truncated": bool(row.request_body_truncated),
        "request_content_type": row.request_content_type,
        "status_code": row.status_code,
        "response_headers": _json(row.response_headers),
        "response_body_size": row.response_body_size,
        "response_body_truncated": bool(row.response_body_truncated),
        "response_content_type": row.response_content_type,
        "duration_ms": row.duration_ms,
        "rule_id": row.rule_id,
        "result": row.result,
        "substituted_credentials": _json(row.substituted_credentials),
        "session_id": row.session_id,
        "replay_of": row.replay_of,
    }
    if bodies:
        data["request_body"] = _text(row.request_body)
        data["response_body"] = _text(row.response_body)
    return data
