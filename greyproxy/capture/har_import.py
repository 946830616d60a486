"""HAR 1.2 import: a HAR document (as parsed JSON) checked and turned into transaction rows.

The file comes from a user, possibly one an agent wrote, so every field is checked for type,
length and form before anything is stored, and the first bad one is named (`entries[3].request.url:
...`). An import is all or nothing. Bodies go through the same tap as live captures (text-like
types only, at most the capture limit, decompressed already since HAR holds decoded text); headers
and URLs are redacted, and the rows scrubbed, by the caller like any capture.

WebSocket messages (`_webSocketMessages`, as browsers and our own export write them) become
WS_REQ / WS_RESP frame rows after their upgrade entry.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from greyproxy.capture.bodies import BodyTap
from greyproxy.policy.canonical import PatternError, canonical_destination
from greyproxy.timeutil import parse_iso

MAX_ROWS = 5_000  # entries plus WebSocket messages in one import
MAX_HEADERS = 200  # per message, as the live parser's default
MAX_URL = 8192
MAX_TEXT = 64 * 1024  # a header name or value
PAUSE_EVERY = 50  # entries checked between two pauses
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class HarInvalid(ValueError):
    """The document is not a HAR this import accepts; the message names the field."""


@dataclass(slots=True)
class ImportedFrame:
    from_client: bool
    payload: bytes
    timestamp: dt.datetime


@dataclass(slots=True)
class ImportedEntry:
    timestamp: dt.datetime  # naive UTC
    method: str
    url: str
    host: str  # canonical
    port: int
    request_headers: list[tuple[str, str]]
    request_body: tuple[bytes | None, int, bool]  # as BodyTap.result(): stored, size, cut
    request_content_type: str | None
    status_code: int | None
    response_headers: list[tuple[str, str]]
    response_body: tuple[bytes | None, int, bool]
    response_content_type: str | None
    duration_ms: int
    frames: list[ImportedFrame] = field(default_factory=list)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HarInvalid(f"{where}: must be an object")
    return value


def _str(value: Any, where: str, limit: int = MAX_TEXT, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise HarInvalid(f"{where}: must be a string")
    if len(value) > limit:
        raise HarInvalid(f"{where}: longer than {limit} characters")
    if not allow_empty and not value:
        raise HarInvalid(f"{where}: must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no column can store it
        raise HarInvalid(f"{where}: not valid Unicode (a lone surrogate)") from None
    return value


def _time(value: Any, where: str) -> dt.datetime:
    text = _str(value, where, 64)
    try:
        parsed = parse_iso(text)
    except (ValueError, TypeError, OverflowError):
        raise HarInvalid(f"{where}: not an ISO 8601 date and time") from None
    return parsed  # naive UTC


def _headers(value: Any, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise HarInvalid(f"{where}: must be an array")
    if len(value) > MAX_HEADERS:
        raise HarInvalid(f"{where}: more than {MAX_HEADERS} headers")
    out = []
    for i, item in enumerate(value):
        h = _obj(item, f"{where}[{i}]")
        name = _str(h.get("name"), f"{where}[{i}].name", 256, allow_empty=False)
        text = _str(h.get("value"), f"{where}[{i}].value")
        if name.startswith(":"):  # HTTP/2 pseudo-headers (:authority, :path) are not header lines
            continue
        if not _TOKEN.match(name):
            raise HarInvalid(f"{where}[{i}].name: {name[:64]!r} is not a header name")
        if any(c in text for c in "\r\n\x00"):
            raise HarInvalid(f"{where}[{i}].value: has CR, LF or NUL")
        out.append((name, text))
    return out


def _first(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


def _data(text: Any, encoding: Any, where: str) -> bytes | None:
    if text is None:
        return None
    raw = _str(text, f"{where}.text", 16 * 1024 * 1024)
    if encoding is None:
        try:
            return raw.encode("utf-8")
        except UnicodeEncodeError:
            raise HarInvalid(f"{where}.text: not valid Unicode (a lone surrogate)") from None
    if encoding != "base64":
        raise HarInvalid(f"{where}.encoding: only base64 is supported")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise HarInvalid(f"{where}.text: not valid base64") from None


def _tap(data: bytes | None, content_type: str | None) -> tuple[bytes | None, int, bool]:
    if data is None:
        return None, 0, False
    tap = BodyTap(content_type, None)
    tap.feed(data)
    return tap.result()


def _url(value: Any, where: str) -> tuple[str, str, int]:
    url = _str(value, where, MAX_URL, allow_empty=False)
    if any(c in url for c in " \r\n\x00"):
        raise HarInvalid(f"{where}: has characters that cannot be sent")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise HarInvalid(f"{where}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HarInvalid(f"{where}: must be an absolute http or https URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = canonical_destination(parts.hostname)
    except (ValueError, PatternError) as exc:
        raise HarInvalid(f"{where}: {exc}") from None
    if not 0 < port < 65536:
        raise HarInvalid(f"{where}: port out of range")
    return url, host, port


def _frames(value: Any, where: str, started: dt.datetime) -> list[ImportedFrame]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise HarInvalid(f"{where}: must be an array")
    out = []
    for i, item in enumerate(value):
        m = _obj(item, f"{where}[{i}]")
        kind = m.get("type")
        if kind not in ("send", "receive"):
            raise HarInvalid(f"{where}[{i}].type: must be send or receive")
        opcode = m.get("opcode", 1)
        if opcode not in (1, 2):
            raise HarInvalid(f"{where}[{i}].opcode: must be 1 (text) or 2 (binary)")
        payload = _data(m.get("data", ""), "base64" if opcode == 2 else None, f"{where}[{i}]")
        stamp = m.get("time")
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and 0 <= stamp < 1e11:
            when = dt.datetime.fromtimestamp(stamp, dt.UTC).replace(tzinfo=None)
        else:
            when = started
        out.append(ImportedFrame(kind == "send", payload or b"", when))
    return out


def _entry(value: Any, where: str) -> ImportedEntry:
    e = _obj(value, where)
    started = _time(e.get("startedDateTime"), f"{where}.startedDateTime")
    req = _obj(e.get("request"), f"{where}.request")
    method = _str(req.get("method"), f"{where}.request.method", 32, allow_empty=False)
    if not _TOKEN.match(method) or method in ("WS_REQ", "WS_RESP"):
        raise HarInvalid(f"{where}.request.method: {method!r} is not an HTTP method")
    url, host, port = _url(req.get("url"), f"{where}.request.url")
    req_headers = _headers(req.get("headers"), f"{where}.request.headers")
    post = req.get("postData")
    req_type = _first(req_headers, "content-type")
    req_data = None
    if post is not None:
        post = _obj(post, f"{where}.request.postData")
        mime = post.get("mimeType")
        if mime is not None:
            req_type = req_type or _str(mime, f"{where}.request.postData.mimeType", 256) or None
        req_data = _data(post.get("text"), post.get("encoding"), f"{where}.request.postData")
    resp = _obj(e.get("response") if e.get("response") is not None else {}, f"{where}.response")
    status = resp.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999):
        raise HarInvalid(f"{where}.response.status: must be an integer from 0 to 999")
    resp_headers = _headers(resp.get("headers"), f"{where}.response.headers")
    content = _obj(resp.get("content") if resp.get("content") is not None else {}, f"{where}.response.content")
    resp_type = _first(resp_headers, "content-type")
    if content.get("mimeType") is not None:
        resp_type = resp_type or _str(content["mimeType"], f"{where}.response.content.mimeType", 256) or None
    resp_data = _data(content.get("text"), content.get("encoding"), f"{where}.response.content")
    took = e.get("time", 0)
    if isinstance(took, bool) or not isinstance(took, (int, float)) or not 0 <= took < 10**9:
        took = 0  # HAR writers use -1 and odd values for "unknown"
    return ImportedEntry(
        timestamp=started, method=method, url=url, host=host, port=port,
        request_headers=req_headers, request_body=_tap(req_data, req_type), request_content_type=req_type,
        status_code=status or None, response_headers=resp_headers, response_body=_tap(resp_data, resp_type),
        response_content_type=resp_type, duration_ms=int(took),
        frames=_frames(e.get("_webSocketMessages"), f"{where}._webSocketMessages", started),
    )


def parse_har(document: Any, pause: Callable[[], None] | None = None) -> list[ImportedEntry]:
    """The entries of a HAR document, checked; HarInvalid names the first bad field. `pause`
    is called every PAUSE_EVERY entries (the caller lets other work run there)."""
    log = _obj(_obj(document, "document").get("log"), "log")
    entries = log.get("entries")
    if not isinstance(entries, list):
        raise HarInvalid("log.entries: must be an array")
    if len(entries) > MAX_ROWS:
        raise HarInvalid(f"log.entries: more than {MAX_ROWS} entries (split the file)")
    out = []
    rows = 0
    for i, value in enumerate(entries):
        if pause is not None and i and i % PAUSE_EVERY == 0:
            pause()
        entry = _entry(value, f"log.entries[{i}]")
        rows += 1 + len(entry.frames)
        if rows > MAX_ROWS:
            raise HarInvalid(f"log.entries: more than {MAX_ROWS} entries and WebSocket messages (split the file)")
        out.append(entry)
    return out
