"""Conversations: `GET /api/conversations` (top-level ones, newest first),
`GET /api/conversations/<id>` (with turns), `/<id>/subagents`, and
`POST /api/maintenance/rebuild-conversations`."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import int_arg, str_arg
from greyproxy.store.models import Conversation, Turn
from greyproxy.timeutil import iso

bp = Blueprint("conversations", __name__)


def conversation_to_json(row: Conversation, turns: list[Turn] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "container_name": row.container_name,
        "provider": row.provider,
        "client_name": row.client_name,
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at),
        "turn_count": row.turn_count,
        "system_prompt": row.system_prompt,
        "system_prompt_summary": row.system_prompt_summary,
        "first_prompt": row.first_prompt,
        "parent_conversation_id": row.parent_conversation_id,
        "last_turn_has_response": bool(row.last_turn_has_response),
        "metadata": json.loads(row.metadata_json or "{}"),
        "request_ids": json.loads(row.request_ids_json or "[]"),
        "incomplete": bool(row.incomplete),
        "incomplete_reason": row.incomplete_reason,
    }
    if turns is not None:
        data["turns"] = [{
            "turn_number": t.turn_number,
            "user_prompt": t.user_prompt,
            "steps": json.loads(t.steps_json or "[]"),
            "api_calls_in_turn": t.api_calls_in_turn,
            "request_ids": json.loads(t.request_ids_json or "[]"),
            "timestamp": iso(t.timestamp),
            "timestamp_end": iso(t.timestamp_end),
            "duration_ms": t.duration_ms,
            "model": t.model,
        } for t in turns]
    return data


def _get(conversation_id: str) -> Conversation:
    row = Conversation.get_or_none(Conversation.id == conversation_id)
    if row is None:
        raise ApiError(404, f"conversation {conversation_id} not found")
    return row


@bp.get("/api/conversations")
def list_conversations() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    query = Conversation.select().where(Conversation.parent_conversation_id.is_null())
    for name, column in (("container", Conversation.container_name), ("model", Conversation.model),
                         ("provider", Conversation.provider)):
        value = str_arg(name)
        if value:
            query = query.where(column == value)
    total = query.count()
    rows = query.order_by(Conversation.started_at.desc(), Conversation.id).limit(limit).offset(offset)
    return {"items": [conversation_to_json(r) for r in rows], "total": total}


@bp.get("/api/conversations/<path:conversation_id>")
def get_conversation(conversation_id: str) -> Any:
    row = _get(conversation_id)
    turns = list(Turn.select().where(Turn.conversation_id == row.id).order_by(Turn.turn_number))
    return conversation_to_json(row, turns)


@bp.get("/api/conversations/<path:conversation_id>/subagents")
def get_subagents(conversation_id: str) -> Any:
    row = _get(conversation_id)
    children = Conversation.select().where(Conversation.parent_conversation_id == row.id).order_by(Conversation.id)
    return {"items": [conversation_to_json(c) for c in children]}


@bp.post("/api/maintenance/rebuild-conversations")
def rebuild() -> Any:
    rt = runtime()
    if not rt.settings.values()["conversationsEnabled"]:
        raise ApiError(503, "conversations are turned off in the settings")
    rt.assembler.reset()
    return {"status": "rebuild started"}
