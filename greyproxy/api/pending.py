"""Pending queue routes (§4.4, §5): list, count, allow/deny into a rule, dismiss, bulk."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import gevent
from flask import Blueprint

from greyproxy.api.context import API_ACTOR, runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import choice, id_list, int_arg, json_object, path_id, str_arg, str_field
from greyproxy.policy.durations import rule_duration
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.scopes import SCOPES
from greyproxy.services.rules import NotFound

bp = Blueprint("pending", __name__)

# Issue 13: a bulk call names at most MAX_BULK_IDS ids (a 400 beyond) and is worked through in
# chunks of at most BULK_CHUNK ids or BULK_SLICE seconds of work, whichever ends first, with a
# pause of BULK_PAUSE between them, so the proxy, DNS and the rest of the API keep being served
# while it runs (a decision costs a few database statements, ~3 ms: a chunk by count alone could
# hold the hub for long). The pause is a real timer, not sleep(0): sleep(0) only runs greenlets
# already ready and the bulk would get the hub back before the loop polls sockets again. Each rule
# patches the index in place (no rebuild); held connections are re-decided once per tick.
MAX_BULK_IDS = 10_000
BULK_CHUNK = 500
BULK_SLICE = 0.01
BULK_PAUSE = 0.001


def bulk_ids(body: Mapping[str, Any], name: str) -> list[int]:
    ids = id_list(body, name)
    if len(ids) > MAX_BULK_IDS:
        raise ApiError(400, f"'{name}' holds {len(ids)} ids: at most {MAX_BULK_IDS} per call, send several calls")
    return ids


def paced(ids: list[int]) -> Iterator[int]:
    """Every id in turn, with a yield to the other greenlets between chunks (see BULK_SLICE)."""
    started, count = time.monotonic(), 0
    for pid in ids:
        if count >= BULK_CHUNK or time.monotonic() - started >= BULK_SLICE:
            gevent.sleep(BULK_PAUSE)
            started, count = time.monotonic(), 0
        count += 1
        yield pid


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
    rule_duration(duration)  # D7: an unknown duration is a 400, never silently permanent
    return scope, duration, str_field(body, "notes")


def _resolve(pending_id: str, action: str) -> Any:
    pid = path_id(pending_id)
    body = json_object(optional=True)  # an empty body means scope=exact, duration=permanent
    rule = runtime().pending.resolve(pid, action, *decision_fields(body), actor=API_ACTOR)
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
    pending = runtime().pending
    rules = []
    refused = []
    for pid in paced(ids):
        try:
            rules.append(pending.resolve(pid, "allow", "exact", duration, None, actor=API_ACTOR))
        except NotFound:
            continue  # already resolved elsewhere (or a sibling of an earlier id): skip, as greyproxy does
        except PatternError as exc:  # a row no rule may name (D3, D30): it stays pending, the rest go on
            refused.append({"pending_id": pid, "error": str(exc)})
    out: dict[str, Any] = {"rules_created": rules, "pending_removed": len(rules)}
    if refused:
        out["refused"] = refused  # only when some row could not become a rule
    return out


@bp.post("/api/pending/bulk-dismiss")
def bulk_dismiss() -> Any:
    ids = bulk_ids(json_object(), "pending_ids")
    pending = runtime().pending
    removed = sum(1 for pid in paced(ids) if pending.dismiss(pid))
    return {"status": "ok", "removed": removed}
