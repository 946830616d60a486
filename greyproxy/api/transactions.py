"""Captured traffic (§5, D17): `/api/transactions` list and detail, HAR export, curl, replay."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, jsonify, request

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import int_arg, path_id, str_arg, time_arg
from greyproxy.capture.curl import to_curl
from greyproxy.capture.har import har_document, har_stream
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.services.replay import ReplayDenied, ReplayFailed, ReplayInvalid, replay
from greyproxy.services.transactions import (
    MAX_EXPORT,
    TxnFilter,
    export_entries,
    get_transaction,
    list_transactions,
    single_entry,
)

bp = Blueprint("transactions", __name__)


def txn_filter() -> TxnFilter:
    since, until = time_arg("from_date"), time_arg("to_date")
    if since is not None and until is not None and since > until:
        raise ApiError(400, "'from_date' must not be after 'to_date'")
    # Transactions the proxy captured a moment ago may still sit in the writer's queue.
    runtime().writer.flush()
    return TxnFilter(
        container=str_arg("container"),
        destination=str_arg("destination"),
        method=str_arg("method"),
        session_id=str_arg("session_id"),
        since=since,
        until=until,
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
    limit = int_arg("limit", 1000, minimum=1, maximum=MAX_EXPORT)
    offset = int_arg("offset", 0)
    entries = export_entries(txn_filter(), limit, offset)
    if request.method == "HEAD":
        # A streamed body has no length; gevent's server would answer HEAD with a stray chunk.
        return _attachment(Response(b"", mimetype="application/json"), f"greyproxy-{_stamp()}.har")
    # Streamed: entries are loaded and written one at a time.
    return _attachment(Response(har_stream(entries), mimetype="application/json"), f"greyproxy-{_stamp()}.har")


@bp.get("/api/transactions/<txn_id>")
def get_one(txn_id: str) -> Any:
    runtime().writer.flush()
    return transaction_to_json(get_transaction(path_id(txn_id)), bodies=True)


@bp.get("/api/transactions/<txn_id>/har")
def one_har(txn_id: str) -> Response:
    runtime().writer.flush()
    row = get_transaction(path_id(txn_id))
    return _attachment(jsonify(har_document([single_entry(row)])), f"greyproxy-transaction-{row.id}.har")


@bp.get("/api/transactions/<txn_id>/curl")
def one_curl(txn_id: str) -> Response:
    runtime().writer.flush()
    row = get_transaction(path_id(txn_id))
    return Response(to_curl(row), mimetype="text/plain")


@bp.post("/api/transactions/<txn_id>/replay")
def replay_one(txn_id: str) -> Any:
    runtime().writer.flush()
    row = get_transaction(path_id(txn_id))
    try:
        new = replay(runtime(), row)
    except ReplayInvalid as exc:
        raise ApiError(400, str(exc)) from None
    except ReplayDenied as exc:
        return {"error": str(exc), "reason": exc.reason}, 403
    except ReplayFailed as exc:
        raise ApiError(502, f"replay failed: {exc}") from None
    return transaction_to_json(new, bodies=True), 201
