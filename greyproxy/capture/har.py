"""HAR 1.2 export of stored transactions (docs/decisions.md#audit-observability-traffic-tools).

WebSocket frames (rows with method WS_REQ / WS_RESP) do not become entries of their own: they
are attached to the entry of the 101 upgrade they belong to as `_webSocketMessages` (the format
browsers' DevTools write), matched on container, destination and URL path. Frames whose upgrade
is not among the exported rows are left out.

Everything in the export is what was stored: redacted headers read `[REDACTED]`, bodies are the
decompressed text (or absent when not captured). Greyproxy's own fields (container, rule,
truncation, replay) sit in a per-entry `_greyproxy` object, as HAR allows for custom fields.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_plus

from greyproxy import __version__
from greyproxy.capture.serialize import parse_json_column
from greyproxy.store.models import HttpTransaction
from greyproxy.timeutil import UTC, parse_iso

WS_METHODS = ("WS_REQ", "WS_RESP")


def _time(value: dt.datetime | str) -> dt.datetime:
    return parse_iso(value) if isinstance(value, str) else value


def har_time(value: dt.datetime | str) -> str:
    """ISO 8601 with milliseconds, as HAR viewers expect."""
    return _time(value).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _headers(column: str | None) -> list[dict[str, str]]:
    stored = parse_json_column(column)
    if not isinstance(stored, dict):
        return []
    out = []
    for name, values in stored.items():
        for value in values if isinstance(values, list) else [values]:
            out.append({"name": str(name), "value": str(value)})
    return out


def _header(headers: list[dict[str, str]], name: str) -> str | None:
    for h in headers:
        if h["name"].lower() == name:
            return h["value"]
    return None


def _query(url: str) -> list[dict[str, str]]:
    q = url.find("?")
    if q < 0:
        return []
    query = url[q + 1 :].split("#", 1)[0]
    out = []
    for piece in query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            out.append({"name": unquote_plus(name), "value": unquote_plus(value)})
    return out


def _content(body: bytes | memoryview | None) -> dict[str, str]:
    """{"text"} for UTF-8 bodies, {"text", "encoding": "base64"} for anything else, {} if none."""
    if body is None:
        return {}
    raw = bytes(body)
    try:
        return {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(raw).decode("ascii"), "encoding": "base64"}


def _status_text(code: int | None) -> str:
    try:
        return HTTPStatus(code).phrase if code else ""
    except ValueError:
        return ""


def _request(row: HttpTransaction) -> dict[str, Any]:
    headers = _headers(row.request_headers)
    request: dict[str, Any] = {
        "method": row.method,
        "url": row.url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],  # Cookie headers are redacted; there is nothing to parse
        "headers": headers,
        "queryString": _query(row.url),
        "headersSize": -1,
        "bodySize": row.request_body_size if row.request_body_size is not None else -1,
    }
    content = _content(row.request_body)
    if content:
        post: dict[str, Any] = {"mimeType": row.request_content_type or "", "params": []}
        post.update(content)
        request["postData"] = post
    return request


def _response(row: HttpTransaction) -> dict[str, Any]:
    headers = _headers(row.response_headers)
    body = row.response_body
    captured = len(bytes(body)) if body is not None else None
    size = captured if captured is not None and not row.response_body_truncated else (row.response_body_size or 0)
    content: dict[str, Any] = {"size": size, "mimeType": row.response_content_type or "x-unknown"}
    content.update(_content(body))
    return {
        "status": row.status_code or 0,
        "statusText": _status_text(row.status_code),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers,
        "content": content,
        "redirectURL": _header(headers, "location") or "",
        "headersSize": -1,
        "bodySize": row.response_body_size if row.response_body_size is not None else -1,
    }


def _extra(row: HttpTransaction) -> dict[str, Any]:
    return {
        "id": row.id,
        "container": row.container_name,
        "destinationHost": row.destination_host,
        "destinationPort": row.destination_port,
        "ruleId": row.rule_id,
        "sessionId": row.session_id,
        "requestBodyTruncated": bool(row.request_body_truncated),
        "responseBodyTruncated": bool(row.response_body_truncated),
        "substitutedCredentials": parse_json_column(row.substituted_credentials),
        "replayOf": row.replay_of,
    }


def to_entry(row: HttpTransaction) -> dict[str, Any]:
    duration = max(int(row.duration_ms or 0), 0)
    return {
        "startedDateTime": har_time(row.timestamp),
        "time": duration,
        "request": _request(row),
        "response": _response(row),
        "cache": {},
        # Only the total is measured; HAR asks for send/wait/receive, so it all counts as wait.
        "timings": {"send": 0, "wait": duration, "receive": 0},
        "_greyproxy": _extra(row),
    }


def ws_key(row: HttpTransaction) -> tuple[str, str, int, str]:
    """What ties a frame to its upgrade: same client, destination and URL after the scheme."""
    rest = row.url.split("://", 1)[-1]
    return row.container_name, row.destination_host.lower(), row.destination_port, rest


def is_upgrade(row: HttpTransaction) -> bool:
    return row.status_code == 101 and row.method not in WS_METHODS


def pair_frames(rows: Iterable[HttpTransaction]) -> tuple[list[int], dict[int, list[int]]]:
    """(ids of the rows that become entries, in order; upgrade id -> ids of its frames).

    Needs only id, method, status_code, url, container and destination, so callers can pair
    thousands of rows without loading a single body. Rows come oldest first; a frame belongs
    to the latest upgrade before it with the same key."""
    order: list[int] = []
    frames: dict[int, list[int]] = {}
    open_upgrades: dict[tuple[str, str, int, str], int] = {}
    for row in rows:
        if row.method in WS_METHODS:
            upgrade_id = open_upgrades.get(ws_key(row))
            if upgrade_id is not None:
                frames[upgrade_id].append(row.id)
            continue
        order.append(row.id)
        if is_upgrade(row):
            open_upgrades[ws_key(row)] = row.id
            frames[row.id] = []
    return order, frames


def ws_message(row: HttpTransaction) -> dict[str, Any]:
    payload = bytes(row.request_body or b"")
    try:
        opcode, data = 1, payload.decode("utf-8")
    except UnicodeDecodeError:
        opcode, data = 2, base64.b64encode(payload).decode("ascii")
    return {
        "type": "send" if row.method == "WS_REQ" else "receive",
        "time": _time(row.timestamp).replace(tzinfo=UTC).timestamp(),
        "opcode": opcode,
        "data": data,
    }


def creator() -> dict[str, str]:
    return {"name": "greyproxy", "version": __version__}


def har_document(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"log": {"version": "1.2", "creator": creator(), "pages": [], "entries": entries}}


def har_stream(entries: Iterable[dict[str, Any]], comment: str | None = None) -> Iterator[str]:
    """The same document as JSON text, one entry at a time (an export never sits in memory whole).
    `comment` (HAR's own field) says what the export holds when it is not everything."""
    log: dict[str, Any] = {"version": "1.2", "creator": creator(), "pages": []}
    if comment:
        log["comment"] = comment
    head = json.dumps(log)
    yield '{"log": ' + head[:-1] + ', "entries": ['
    for i, entry in enumerate(entries):
        yield ("," if i else "") + json.dumps(entry)
    yield "]}}"


def to_har(rows: Iterable[HttpTransaction]) -> dict[str, Any]:
    """A HAR 1.2 document from rows already in memory, oldest first."""
    rows = list(rows)
    by_id = {row.id: row for row in rows}
    order, frames = pair_frames(rows)
    entries = []
    for row_id in order:
        entry = to_entry(by_id[row_id])
        if row_id in frames:
            entry["_webSocketMessages"] = [ws_message(by_id[f]) for f in frames[row_id]]
        entries.append(entry)
    return har_document(entries)
