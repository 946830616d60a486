"""A diff of two stored transactions: request and response, start line, headers and bodies.

Bodies are compared three ways, each bounded so a diff of two 2 MiB bodies answers quickly and
small: equal or not (whole body); a unified text diff of the first MAX_DIFF_BYTES of each; and,
when both are JSON, the paths whose values differ (at most MAX_JSON_CHANGES of them, walked to
MAX_JSON_DEPTH). What was cut is said in the answer (`truncated`), never silently dropped.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from greyproxy.capture.serialize import body_text, parse_json_column
from greyproxy.store.models import HttpTransaction

MAX_DIFF_BYTES = 256 * 1024  # of each body, for the text diff
MAX_DIFF_LINES = 5_000  # lines of each side given to the text diff
MAX_OUTPUT_LINES = 2_000  # lines of unified diff returned
MAX_OUTPUT_CHARS = 256 * 1024  # characters of unified diff returned
MAX_JSON_CHANGES = 500
MAX_JSON_DEPTH = 64


def _headers(column: str | None) -> dict[str, tuple[str, list[str]]]:
    """lower-case name -> (name as stored, values); header names compare case-insensitively."""
    stored = parse_json_column(column)
    out: dict[str, tuple[str, list[str]]] = {}
    if isinstance(stored, dict):
        for name, values in stored.items():
            vals = [str(v) for v in values] if isinstance(values, list) else [str(values)]
            out.setdefault(str(name).lower(), (str(name), []))[1].extend(vals)
    return out


def header_diff(a: str | None, b: str | None) -> dict[str, Any]:
    ha, hb = _headers(a), _headers(b)
    added = {hb[k][0]: hb[k][1] for k in hb if k not in ha}
    removed = {ha[k][0]: ha[k][1] for k in ha if k not in hb}
    changed = {ha[k][0]: {"a": ha[k][1], "b": hb[k][1]} for k in ha if k in hb and ha[k][1] != hb[k][1]}
    return {"equal": not (added or removed or changed), "added": added, "removed": removed, "changed": changed}


def _json(text: str | None) -> tuple[bool, Any]:
    if text is None or len(text) > 4 * 1024 * 1024:
        return False, None
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def _walk(a: Any, b: Any, path: str, out: list[dict[str, Any]], depth: int) -> bool:
    """Append the differing paths of a and b to out; False once out is full (or too deep)."""
    if len(out) >= MAX_JSON_CHANGES or depth > MAX_JSON_DEPTH:
        return False
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(dict.fromkeys([*a, *b])):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append({"path": sub, "change": "added", "b": b[key]})
            elif key not in b:
                out.append({"path": sub, "change": "removed", "a": a[key]})
            elif a[key] != b[key] and not _walk(a[key], b[key], sub, out, depth + 1):
                return False
            if len(out) >= MAX_JSON_CHANGES:
                return False
        return True
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = f"{path}[{i}]"
            if i >= len(a):
                out.append({"path": sub, "change": "added", "b": b[i]})
            elif i >= len(b):
                out.append({"path": sub, "change": "removed", "a": a[i]})
            elif a[i] != b[i] and not _walk(a[i], b[i], sub, out, depth + 1):
                return False
            if len(out) >= MAX_JSON_CHANGES:
                return False
        return True
    if a != b or type(a) is not type(b):
        out.append({"path": path or "$", "change": "changed", "a": a, "b": b})
    return len(out) < MAX_JSON_CHANGES


def body_diff(a: bytes | memoryview | None, b: bytes | memoryview | None) -> dict[str, Any]:
    ra = bytes(a) if a is not None else None
    rb = bytes(b) if b is not None else None
    result: dict[str, Any] = {
        "equal": ra == rb,
        "a_size": len(ra) if ra is not None else None,
        "b_size": len(rb) if rb is not None else None,
        "truncated": False,
    }
    if ra == rb:
        return result
    ta, tb = body_text(ra[:MAX_DIFF_BYTES] if ra else ra), body_text(rb[:MAX_DIFF_BYTES] if rb else rb)
    la, lb = (ta or "").splitlines(), (tb or "").splitlines()
    cut = any(x is not None and len(x) > MAX_DIFF_BYTES for x in (ra, rb)) or max(len(la), len(lb)) > MAX_DIFF_LINES
    lines = list(difflib.unified_diff(la[:MAX_DIFF_LINES], lb[:MAX_DIFF_LINES], "a", "b", lineterm="", n=2))
    if len(lines) > MAX_OUTPUT_LINES:
        lines, cut = lines[:MAX_OUTPUT_LINES], True
    text = "\n".join(lines)
    if len(text) > MAX_OUTPUT_CHARS:  # a few very long lines (minified JSON)
        text, cut = text[:MAX_OUTPUT_CHARS], True
    result["text_diff"] = text
    ok_a, ja = _json(body_text(ra))
    ok_b, jb = _json(body_text(rb))
    if ok_a and ok_b:
        changes: list[dict[str, Any]] = []
        try:
            if not _walk(ja, jb, "", changes, 0):
                cut = True
        except RecursionError:  # comparing two very deep values
            cut = True
        result["json_changes"] = changes
    result["truncated"] = cut
    return result


def _field(a: Any, b: Any) -> dict[str, Any]:
    return {"equal": a == b, "a": a, "b": b}


def _summary(row: HttpTransaction) -> dict[str, Any]:
    return {"id": row.id, "method": row.method, "url": row.url, "status_code": row.status_code,
            "container_name": row.container_name, "destination_host": row.destination_host,
            "destination_port": row.destination_port}


def diff_transactions(a: HttpTransaction, b: HttpTransaction) -> dict[str, Any]:
    return {
        "a": _summary(a),
        "b": _summary(b),
        "request": {
            "method": _field(a.method, b.method),
            "url": _field(a.url, b.url),
            "headers": header_diff(a.request_headers, b.request_headers),
            "body": body_diff(a.request_body, b.request_body),
        },
        "response": {
            "status_code": _field(a.status_code, b.status_code),
            "headers": header_diff(a.response_headers, b.response_headers),
            "body": body_diff(a.response_body, b.response_body),
        },
    }
