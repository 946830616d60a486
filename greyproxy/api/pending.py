"""Pending queue routes (docs/user-guide.md#rules-pending-requests-and-holds): list, count, allow/deny into a rule, dismiss, bulk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint

from greyproxy.api.context import rule_creator, runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import choice, id_list, int_arg, json_object, path_id, str_arg, str_field
from greyproxy.policy.durations import rule_duration
from greyproxy.policy.scopes import SCOPES
from greyproxy.services.rules import NotFound

bp = Blueprint("pending", __name__)

# Issue 13: a bulk call names at most MAX_BULK_IDS ids (a 400 beyond); the service works through
# them in chunks that leave the proxy, DNS and the rest of the API served meanwhile.
MAX_BULK_IDS = 10_000


def bulk_ids(body: Mapping[str, Any], name: str) -> list[int]:
    ids = id_list(body, name)
    if len(ids) > MAX_BULK_IDS:
        raise ApiError(400, f"'{name}' holds {len(ids)} ids: at most {MAX_BULK_IDS} per call, send several calls")
    return ids


@bp.get("/api/pending")
def list_pending() -> Any:
    limit = int_arg("limit", 100, minimum=1, maximum=1000)
    items, total = runtime().pending.list(
        str_arg("container"), str_arg("destination"), limit, int_arg("offset", 0)
    )
    return {"items": items, "total": total}


@bp.get("/api/pending/count")
def count_pending() -> Any:
    return {"count": runtime().pending.count()}


def decision_fields(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(scope, duration, notes) of an allow/deny, validated before anything is looked up."""
    scope = choice(str_field(body, "scope"), "scope", SCOPES)
    duration = str_field(body, "duration")
    rule_duration(duration)  # an unknown duration is a 400, never silently permanent
    return scope, duration, str_field(body, "notes")


def _resolve(pending_id: str, action: str) -> Any:
    pid = path_id(pending_id)
    body = json_object(optional=True)  # an empty body means scope=exact, duration=permanent
    rule = runtime().pending.resolve(pid, action, *decision_fields(body), actor=rule_creator())
    return {"rule": rule, "pending_removed": True}


@bp.post("/api/pending/<pending_id>/allow")
def allow_pending(pending_id: str) -> Any:
    return _resolve(pending_id, "allow")


@bp.post("/api/pending/<pending_id>/deny")
def deny_pending(pending_id: str) -> Any:
    return _resolve(pending_id, "deny")


@bp.delete("/api/pending/<pending_id>")
def dismiss_pending(pending_id: str) -> Any:
    pid = path_id(pending_id)
    if not runtime().pending.dismiss(pid):
        raise NotFound(f"pending request {pid} not found")
    return {"status": "ok", "removed": True}


@bp.post("/api/pending/bulk-allow")
def bulk_allow() -> Any:
    body = json_object()
    ids = bulk_ids(body, "pending_ids")
    duration = str_field(body, "duration")
    rule_duration(duration)  # a bad duration fails the whole request before anything changes
    rules, refused = runtime().pending.resolve_many(ids, "allow", duration, rule_creator())
    out: dict[str, Any] = {"rules_created": rules, "pending_removed": len(rules)}
    if refused:
        out["refused"] = refused  # only when some row could not become a rule
    return out


@bp.post("/api/pending/bulk-dismiss")
def bulk_dismiss() -> Any:
    ids = bulk_ids(json_object(), "pending_ids")
    return {"status": "ok", "removed": runtime().pending.dismiss_many(ids)}
