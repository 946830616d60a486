"""Read side of captured transactions (`/api/transactions`, exports)."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import peewee
from peewee import Case, fn

from greyproxy.capture.har import WS_METHODS, is_upgrade, pair_frames, to_entry, ws_key, ws_message
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.services.rules import NotFound
from greyproxy.store.models import HttpTransaction

MAX_EXPORT = 10_000  # rows in one HAR export
MAX_FRAMES = 10_000  # WebSocket frames attached to one upgrade entry
MAX_WS_BYTES = 32 * 1024 * 1024  # frame payload attached to one upgrade entry
FRAME_CHUNK = 200
LOAD_BYTES = 8 * 1024 * 1024  # bodies loaded at once by a full export
LOAD_ROWS = 100
PACE_SECONDS = 0.01
EXPORT_CHUNK = 500  # rows listed per query of a full export


@dataclass(frozen=True, slots=True)
class TxnFilter:
    container: str | None = None  # substring of container_name
    destination: str | None = None  # substring of destination_host
    method: str | None = None  # exact, WS_REQ / WS_RESP included
    session_id: str | None = None
    since: dt.datetime | None = None  # naive UTC, inclusive
    until: dt.datetime | None = None  # naive UTC, inclusive
    status_min: int | None = None  # inclusive; rows without a status never match a bound
    status_max: int | None = None  # inclusive
    has_error: bool | None = None  # True: no response, or a status of 400 or more
    is_websocket: bool | None = None  # True: WebSocket frames and the 101 upgrades they ride on
    search: str | None = None  # substring of the URL, the destination or the container
    path_contains: str | None = None  # substring of the URL's path (the query is not part of it)
    recording_id: int | None = None


def _position(haystack: peewee.Node, needle: str | peewee.Node) -> peewee.Node:
    """1-based position of `needle` in a text column (0 when absent), on SQLite or PostgreSQL."""
    db = HttpTransaction._meta.database
    on_postgres = isinstance(getattr(db, "obj", db), peewee.PostgresqlDatabase)  # bound, or through the proxy
    return fn.STRPOS(haystack, needle) if on_postgres else fn.INSTR(haystack, needle)


def _path(url: peewee.Field) -> peewee.Node:
    """SQL for the path of a stored absolute URL: after the authority, before `?` or `#`.

    Computed by the database so a filter never loads rows to look at them; a URL without a path has
    an empty one (the host must not match a path filter)."""
    rest = fn.SUBSTR(url, _position(url, "://") + 3)
    tail = Case(None, [(_position(rest, "/") > 0, fn.SUBSTR(rest, _position(rest, "/")))], "")
    # Cut at the first `?`, then at the first `#`.
    no_query = Case(None, [(_position(tail, "?") > 0, fn.SUBSTR(tail, 1, _position(tail, "?") - 1))], tail)
    return Case(None, [(_position(no_query, "#") > 0, fn.SUBSTR(no_query, 1, _position(no_query, "#") - 1))],
                no_query)


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
    return _where_more(query, f)


def _where_more(query: peewee.ModelSelect, f: TxnFilter) -> peewee.ModelSelect:
    t = HttpTransaction
    if f.status_min is not None:
        query = query.where(t.status_code >= f.status_min)
    if f.status_max is not None:
        query = query.where(t.status_code <= f.status_max)
    if f.has_error is not None:
        failed = t.status_code.is_null() | (t.status_code >= 400)
        query = query.where(failed if f.has_error else ~failed)
    if f.is_websocket is not None:
        ws = t.method.in_(WS_METHODS) | (fn.COALESCE(t.status_code, 0) == 101)
        query = query.where(ws if f.is_websocket else ~ws)
    if f.search:
        query = query.where(t.url.contains(f.search) | t.destination_host.contains(f.search)
                            | t.container_name.contains(f.search))
    if f.path_contains:
        query = query.where(_path(t.url).contains(f.path_contains))
    if f.recording_id is not None:
        query = query.where(t.recording_id == f.recording_id)
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
    pace = _Pacer()
    for row_id in order:
        row = HttpTransaction.get_or_none(HttpTransaction.id == row_id)
        if row is not None:  # deleted by retention since the listing: skip it
            yield entry_with_frames(row, frames.get(row_id))
            pace()


def _frames_of(row: HttpTransaction, f: TxnFilter | None = None) -> list[int]:
    """Ids of the frames sent over an upgrade (matching `f` too, when given): same client,
    destination and URL, after it and before the next upgrade of the same URL."""
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
    if f is not None:
        query = _where(query, f)
    if bound is not None:
        query = query.where(t.id < bound)
    return [r.id for r in query.order_by(t.id).limit(MAX_FRAMES + 1) if ws_key(r) == key]


def single_entry(row: HttpTransaction) -> dict[str, Any]:
    """One transaction for its own HAR file; an upgrade brings the frames sent over it."""
    if not is_upgrade(row):
        return to_entry(row)
    return entry_with_frames(row, _frames_of(row))


def count_matching(f: TxnFilter) -> int:
    return _where(HttpTransaction.select(HttpTransaction.id), f).count()


class _Pacer:
    """A 1 ms timer pause after every PACE_SECONDS of work: a long export shares the hub with the
    proxy's connections (sleep(0) would not let the hub poll their sockets)."""

    def __init__(self) -> None:
        self.mark = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.mark >= PACE_SECONDS:
            gevent.sleep(0.001)
            self.mark = time.monotonic()


def _full_rows(metas: list[Any]) -> Iterator[HttpTransaction]:
    """The rows of `metas` (with `bytes`, their bodies' size) in order, loaded a group at a time:
    at most LOAD_ROWS rows and LOAD_BYTES of bodies (or one row, if larger) held at once."""
    group: list[int] = []
    size = 0
    for meta in [*metas, None]:
        if meta is not None and (not group or (size + meta.bytes <= LOAD_BYTES and len(group) < LOAD_ROWS)):
            group.append(meta.id)
            size += meta.bytes
            continue
        if group:
            by_id = {r.id: r for r in HttpTransaction.select().where(HttpTransaction.id.in_(group))}
            yield from (by_id[i] for i in group if i in by_id)  # one deleted meanwhile is skipped
        if meta is not None:
            group, size = [meta.id], meta.bytes


def export_all(f: TxnFilter) -> Iterator[dict[str, Any]]:
    """HAR entries for every matching row, oldest first, listed EXPORT_CHUNK rows at a time (keyset
    on timestamp and id) and loaded in groups of bounded size, so an export of any size streams in
    bounded memory. Frames ride on their upgrade's entry (those matching the filter), not as
    entries of their own."""
    t = HttpTransaction
    size = (fn.COALESCE(fn.LENGTH(t.request_body), 0) + fn.COALESCE(fn.LENGTH(t.response_body), 0)).alias("bytes")
    last: tuple[dt.datetime, int] | None = None
    pace = _Pacer()
    while True:
        query = _where(t.select(t.id, t.timestamp, size).where(t.method.not_in(WS_METHODS)), f)
        if last is not None:
            query = query.where((t.timestamp > last[0]) | ((t.timestamp == last[0]) & (t.id > last[1])))
        chunk = list(query.order_by(t.timestamp, t.id).limit(EXPORT_CHUNK))
        for row in _full_rows(chunk):
            yield entry_with_frames(row, _frames_of(row, f)) if is_upgrade(row) else to_entry(row)
            pace()
        if len(chunk) < EXPORT_CHUNK:
            return
        last = (chunk[-1].timestamp, chunk[-1].id)
