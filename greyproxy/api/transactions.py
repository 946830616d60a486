"""Captured traffic (docs/decisions.md#audit-observability-traffic-tools): `/api/transactions` list and detail, HAR export, curl, replay."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, jsonify, request

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_arg, int_arg, json_body, path_id, str_arg, time_arg
from greyproxy.capture.curl import to_curl
from greyproxy.capture.diff import diff_transactions
from greyproxy.capture.har import har_document, har_stream
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.services.replay import ReplayDenied, ReplayFailed, ReplayInvalid, parse_modifications
from greyproxy.services.transactions import (
    MAX_EXPORT,
    TxnFilter,
    count_matching,
    export_all,
    export_entries,
    get_transaction,
    list_transactions,
    single_entry,
)

bp = Blueprint("transactions", __name__)


MAX_TEXT_ARG = 1000  # characters of a substring filter


def _tristate(name: str) -> bool | None:
    """A boolean filter: absent means "either"."""
    return bool_arg(name) if request.args.get(name, "").strip() else None


def _text(name: str) -> str | None:
    value = str_arg(name)
    if value is not None and (len(value) > MAX_TEXT_ARG or "\x00" in value):
        raise ApiError(400, f"query parameter '{name}' must be at most {MAX_TEXT_ARG} characters, without NUL")
    return value


def txn_filter() -> TxnFilter:
    since, until = time_arg("from_date"), time_arg("to_date")
    if since is not None and until is not None and since > until:
        raise ApiError(400, "'from_date' must not be after 'to_date'")
    status_min = int_arg("status_min", 0, minimum=0, maximum=999) if str_arg("status_min") else None
    status_max = int_arg("status_max", 0, minimum=0, maximum=999) if str_arg("status_max") else None
    if status_min is not None and status_max is not None and status_min > status_max:
        raise ApiError(400, "'status_min' must not be above 'status_max'")
    recording = int_arg("recording_id", 0, minimum=1) if str_arg("recording_id") else None
    # Transactions the proxy captured a moment ago may still sit in the writer's queue.
    runtime().flush_writes()
    return TxnFilter(
        container=_text("container"),
        destination=_text("destination"),
        method=_text("method"),
        session_id=_text("session_id"),
        since=since,
        until=until,
        status_min=status_min,
        status_max=status_max,
        has_error=_tristate("has_error"),
        is_websocket=_tristate("is_websocket"),
        search=_text("search"),
        path_contains=_text("path_contains"),
        recording_id=recording,
    )


def _attachment(response: Response, name: str) -> Response:
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


@bp.get("/api/transactions")
def get_transactions() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    return list_transactions(txn_filter(), limit, offset)


@bp.get("/api/transactions/export/har")
def export_har() -> Response:
    f = txn_filter()
    return har_response(f, f"greyproxy-{_stamp()}.har")


def har_response(f: TxnFilter, filename: str) -> Response:
    """Every matching transaction, streamed; with `limit` (and `offset`) only the newest `limit`
    of them, and the response says how many matched (X-Greyproxy-Matched, the HAR's comment)."""
    matched = count_matching(f)
    headers = {"X-Greyproxy-Matched": str(matched)}
    if str_arg("limit") is None and str_arg("offset") is None:
        entries, comment = export_all(f), None
    else:
        limit = int_arg("limit", MAX_EXPORT, minimum=1, maximum=MAX_EXPORT)
        offset = int_arg("offset", 0)
        entries = export_entries(f, limit, offset)
        shown = max(0, min(limit, matched - offset))
        comment = f"{shown} of {matched} matching transactions (limit {limit}, offset {offset}); omit limit for all"
        headers["X-Greyproxy-Limit"] = str(limit)
    if request.method == "HEAD":
        # A streamed body has no length; gevent's server would answer HEAD with a stray chunk.
        response = Response(b"", mimetype="application/json")
    else:
        # Streamed: entries are loaded and written one at a time.
        response = Response(har_stream(entries, comment), mimetype="application/json")
    response.headers.update(headers)
    return _attachment(response, filename)


@bp.get("/api/transactions/diff")
def diff() -> Any:
    ids = []
    for name in ("a", "b"):
        text = str_arg(name)
        if text is None:
            raise ApiError(400, f"query parameter '{name}' (a transaction id) is required")
        ids.append(path_id(text))
    runtime().flush_writes()
    return diff_transactions(get_transaction(ids[0]), get_transaction(ids[1]))


@bp.get("/api/transactions/<txn_id>")
def get_one(txn_id: str) -> Any:
    runtime().flush_writes()
    return transaction_to_json(get_transaction(path_id(txn_id)), bodies=True)


@bp.get("/api/transactions/<txn_id>/har")
def one_har(txn_id: str) -> Response:
    runtime().flush_writes()
    row = get_transaction(path_id(txn_id))
    return _attachment(jsonify(har_document([single_entry(row)])), f"greyproxy-transaction-{row.id}.har")


@bp.get("/api/transactions/<txn_id>/curl")
def one_curl(txn_id: str) -> Response:
    runtime().flush_writes()
    row = get_transaction(path_id(txn_id))
    return Response(to_curl(row), mimetype="text/plain")


@bp.post("/api/transactions/<txn_id>/replay")
def replay_one(txn_id: str) -> Any:
    runtime().flush_writes()
    row = get_transaction(path_id(txn_id))
    try:
        new = runtime().replayer.replay(row, parse_modifications(json_body(None)))
    except ReplayInvalid as exc:
        raise ApiError(400, str(exc)) from None
    except ReplayDenied as exc:
        return {"error": str(exc), "reason": exc.reason}, 403
    except ReplayFailed as exc:
        raise ApiError(502, f"replay failed: {exc}") from None
    return transaction_to_json(new, bodies=True), 201
