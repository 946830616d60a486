"""Held HTTP requests (docs/request-rules.md): list, count, one, allow, deny.

`GET /api/pending-http?status=pending|allowed|denied|expired|gone&container=` lists the waiting
ones first, then the last answered (kept in memory); `POST /api/pending-http/:id/allow|deny`
takes `{duration?: once (default) | 1h | … | permanent, reason? (deny), method_pattern?,
path_pattern?}`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import rule_creator, runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import choice_arg, int_arg, json_object, path_id, str_arg, str_field
from greyproxy.services.pending_http import MAX_REASON, answer_request
from greyproxy.services.rules import NotFound

bp = Blueprint("pending_http", __name__)
STATUSES = ("pending", "allowed", "denied", "expired", "gone")
KEYS = {"duration", "reason", "method_pattern", "path_pattern"}


def caught_up() -> None:
    """serve --workers N (docs/workers.md): what the workers announced so far is listed."""
    workers = runtime().workers
    if workers is not None:
        workers.barrier()


@bp.get("/api/pending-http")
def list_held() -> Any:
    limit = int_arg("limit", 100, minimum=1, maximum=1000)
    caught_up()
    rows = runtime().request_holds.list(choice_arg("status", STATUSES), str_arg("container"))
    offset = int_arg("offset", 0)
    return {"items": [r.to_json() for r in rows[offset:offset + limit]], "total": len(rows)}


@bp.get("/api/pending-http/count")
def count_held() -> Any:
    caught_up()
    return {"count": runtime().request_holds.count()}


@bp.get("/api/pending-http/<request_id>")
def get_held(request_id: str) -> Any:
    rid = path_id(request_id)
    caught_up()
    held = runtime().request_holds.get(rid)
    if held is None:
        raise NotFound(f"held request {rid} not found")
    return held.to_json()


def answer_fields(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - KEYS - {"command", "request_id"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    return {
        "duration": str_field(body, "duration", max_length=64),
        "reason": str_field(body, "reason", max_length=MAX_REASON),
        "method_pattern": str_field(body, "method_pattern", max_length=256),
        "path_pattern": str_field(body, "path_pattern", max_length=2048),
    }


def _answer(request_id: str, allow: bool) -> Any:
    rid = path_id(request_id)
    fields = answer_fields(json_object(optional=True))
    rt = runtime()
    return answer_request(rt.request_holds, rt.rules, rid, allow, actor=rule_creator(), **fields)


@bp.post("/api/pending-http/<request_id>/allow")
def allow_held(request_id: str) -> Any:
    return _answer(request_id, True)


@bp.post("/api/pending-http/<request_id>/deny")
def deny_held(request_id: str) -> Any:
    return _answer(request_id, False)
