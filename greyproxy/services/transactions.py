"""Read side of captured transactions (§5 `/api/transactions`, D17 exports)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peewee

from greyproxy.capture.har import WS_METHODS, is_upgrade, pair_frames, to_entry, ws_key, ws_message
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.services.rules import NotFound
from greyproxy.store.models import HttpTransaction

MAX_EXPORT = 10_000  # rows in one HAR export
MAX_FRAMES = 10_000  # WebSocket frames attached to one upgrade entry
MAX_WS_BYTES = 32 * 1024 * 1024  # frame payload attached to one upgrade entry
FRAME_CHUNK = 200


@dataclass(frozen=True, slots=True)
class TxnFilter:
    container: str | None = None  # substring of container_name
    destination: str | None = None  # substring of destination_host
    method: str | None = None  # exact, WS_REQ / WS_RESP included
    session_id: str | None = None
    since: dt.datetime | None = None  # naive UTC, inclusive
    until: dt.datetime | None = None  # naive UTC, inclusive


def _where(query: peewee.ModelSelect, f: TxnFilter) -> peewee.ModelSelect:
    if f.container:
        query = query.where(HttpTransaction.container_name.contains(f.container))
    if f.destination:
        query = query.where(HttpTransaction.destination_host.contains(f.destination))
    if f.method:
        query = query.where(HttpTransaction.method == f.method)
    if f.session_id:
        query = query.where(HttpTransaction.session_id == f.session_id)
    if f.since is not None:
        query = query.where(HttpTransaction.timestamp >= f.since)
    if f.until is not None:
        query = query.where(HttpTransaction.timestamp <= f.until)
    return query


def _listing_columns() -> list[peewee.Field]:
    """Every column but the bodies: a page of 1000 rows must not pull 4 GiB of blobs."""
    skip = {"request_body", "response_body"}
    return [f for name, f in HttpTransaction._meta.fields.items() if name not in skip]


def list_transactions(f: TxnFilter, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    query = _where(HttpTransaction.select(*_listing_columns()), f)
    total = query.count()
    rows = query.order_by(HttpTransaction.timestamp.desc(), HttpTransaction.id.desc()).limit(limit).offset(offset)
    return {
        "items": [transaction_to_json(r) for r in rows],
        "total": total,
        "page": offset // limit + 1,
        "pages": math.ceil(total / limit) if total else 0,
    }


def get_transaction(txn_id: int) -> HttpTransaction:
    row = HttpTransaction.get_or_none(HttpTransaction.id == txn_id)
    if row is None:
        raise NotFound(f"transaction {txn_id} not found")
    return row


def _meta_columns() -> list[peewee.Field]:
    """What pairing frames with upgrades needs, and nothing heavy."""
    t = HttpTransaction
    return [t.id, t.method, t.status_code, t.url, t.container_name, t.destination_host, t.destination_port]


def _load_messages(frame_ids: list[int]) -> tuple[list[dict[str, Any]], bool]:
    """The frames' messages in id order, fetched a chunk at a time, at most MAX_WS_BYTES of
    payload; (messages, cut short)."""
    messages: list[dict[str, Any]] = []
    payload = 0
    for start in range(0, min(len(frame_ids), MAX_FRAMES), FRAME_CHUNK):
        chunk = frame_ids[start : start + FRAME_CHUNK]
        for row in HttpTransaction.select().where(HttpTransaction.id.in_(chunk)).order_by(HttpTransaction.id):
            payload += len(row.request_body or b"")
            if payload > MAX_WS_BYTES:
                return messages, True
            messages.append(ws_message(row))
    return messages, len(frame_ids) > MAX_FRAMES


def entry_with_frames(row: HttpTransaction, frame_ids: list[int] | None) -> dict[str, Any]:
    entry = to_entry(row)
    if frame_ids is not None:
        entry["_webSocketMessages"], cut = _load_messages(frame_ids)
        if cut:
            entry["_greyproxy"]["webSocketMessagesTruncated"] = True
    return entry


def export_entries(f: TxnFilter, limit: int = 1000, offset: int = 0) -> Iterator[dict[str, Any]]:
    """HAR entries for the newest `limit` matching rows (after `offset`), oldest first.

    Pairing runs on light columns; each entry's row (bodies included) is loaded only when its
    turn comes, so an export of thousands of large rows holds one of them in memory at a time.
    """
    query = _where(HttpTransaction.select(*_meta_columns()), f)
    metas = list(query.order_by(HttpTransaction.timestamp.desc(), HttpTransaction.id.desc()).limit(limit).offset(offset))
    metas.reverse()
    order, frames = pair_frames(metas)
    for row_id in order:
        row = HttpTransaction.get_or_none(HttpTransaction.id == row_id)
        if row is not None:  # deleted by retention since the listing: skip it
            yield entry_with_frames(row, frames.get(row_id))


def single_entry(row: HttpTransaction) -> dict[str, Any]:
    """One transaction for its own HAR file; an upgrade brings the frames sent over it."""
    if not is_upgrade(row):
        return to_entry(row)
    key = ws_key(row)
    t = HttpTransaction
    later = (
        (t.container_name == row.container_name)
        & (t.destination_host == row.destination_host)
        & (t.destination_port == row.destination_port)
        & (t.id > row.id)
    )
    # Frames after the next upgrade of the same URL belong to that one.
    next_upgrades = t.select(*_meta_columns()).where(later & (t.status_code == 101) & t.method.not_in(WS_METHODS))
    bound = next((r.id for r in next_upgrades.order_by(t.id).limit(100) if ws_key(r) == key), None)
    query = t.select(*_meta_columns()).where(later & t.method.in_(WS_METHODS))
    if bound is not None:
        query = query.where(t.id < bound)
    frame_ids = [r.id for r in query.order_by(t.id).limit(MAX_FRAMES + 1) if ws_key(r) == key]
    return entry_with_frames(row, frame_ids)
