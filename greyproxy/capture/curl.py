"""A stored transaction as a runnable curl command (docs/decisions.md#audit-observability-traffic-tools).

The command sends what was stored: redacted headers and query values go out as the literal
`[REDACTED]` (a real secret never appears), the body is the captured, decompressed text.
Headers curl must compute itself (Content-Length, Transfer-Encoding, hop-by-hop ones) are
left out. Bodies larger than one command-line argument may be (Linux: 128 KiB) are piped in
with the shell's `printf` builtin, which has no such limit.
"""

from __future__ import annotations

import shlex

from greyproxy.capture.har import WS_METHODS
from greyproxy.capture.serialize import parse_json_column
from greyproxy.store.models import HttpTransaction

# Never copied into the command: curl sets them from what it actually sends, or they describe
# the old connection (RFC 9110 §7.6.1 hop-by-hop headers).
SKIPPED_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",  # was meant for the proxy the client used, not the origin
        "te",
        "trailer",
        "upgrade",
    }
)
INLINE_BODY_MAX = 64 * 1024


def header_lines(column: str | None) -> list[tuple[str, str]]:
    stored = parse_json_column(column)
    if not isinstance(stored, dict):
        return []
    lines = []
    for name, values in stored.items():
        if str(name).lower() in SKIPPED_HEADERS:
            continue
        for value in values if isinstance(values, list) else [values]:
            lines.append((str(name), str(value)))
    return lines


def to_curl(row: HttpTransaction) -> str:
    """`curl ...` (possibly preceded by `# ` comment lines saying what could not be reproduced)."""
    notes: list[str] = []
    if row.method in WS_METHODS:
        notes.append("a WebSocket frame cannot be sent with curl; this is the upgrade's URL")
    args = ["curl", "--globoff"]  # --globoff: `[REDACTED]` and IPv6 brackets are not curl globs
    method = "GET" if row.method in WS_METHODS else row.method
    if method == "HEAD":
        args.append("--head")
    else:
        args += ["-X", method]
    args.append(row.url if row.method not in WS_METHODS else row.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1))
    headers = header_lines(row.request_headers)
    for name, value in headers:
        # `Name;` is curl's way of sending a header with an empty value.
        args += ["-H", f"{name}: {value}" if value else f"{name};"]
    if any(name.lower() == "accept-encoding" for name, _ in headers):
        args.append("--compressed")  # the answer may come compressed; let curl decode it

    body = bytes(row.request_body) if row.request_body is not None and row.method not in WS_METHODS else None
    if row.request_body_truncated:
        notes.append("the request body was cut at the capture limit; the body below is incomplete")
    elif body is None and (row.request_body_size or 0) > 0 and row.method not in WS_METHODS:
        notes.append(f"the request body ({row.request_body_size} bytes, not text) was not captured")
    if body is not None and any(name.lower() == "content-encoding" for name, _ in headers):
        notes.append("the stored body is decompressed; remove the Content-Encoding header or compress it")
    pipe = ""
    if body is not None:
        text = body.decode("utf-8", errors="replace")
        if len(body) <= INLINE_BODY_MAX and "\x00" not in text:
            args += ["--data-binary", text]
        else:
            pipe = f"printf '%s' {shlex.quote(text.replace(chr(0), ''))} | "
            args += ["--data-binary", "@-"]
    command = pipe + " ".join(shlex.quote(a) for a in args)
    return "".join(f"# {n}\n" for n in notes) + command + "\n"
