"""Where the HTTP request loops meet the external middlewares.

Both loops (the plain absolute-URI proxy path in proxy/http.py, and the sniffed or intercepted
tunnels in proxy/mitm/intercept.py) call `before_request` once a request head is parsed and
`after_response` once the response head is read. With no middleware configured, or none whose
filters match, both return None at once and the loop relays bodies as they arrive, as before.

When a middleware wants a message, its body is read whole (up to the smallest `max_body_bytes`
the middlewares declared, else MAX_BUFFERED; a larger body is sent to them as null and still
relayed as it arrives). A body left unchanged is put back on the stream (httpwire.unread), so
the loop's normal relay and capture run on exactly the bytes that arrived.

Middlewares see what the agent sent: credential placeholders, never the real secrets
(substitution happens after them), and they may not set Authorization, Cookie and the other
identity or hop-by-hop headers (the engine strips those).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greyproxy.capture.bodies import decode, parse_encodings
from greyproxy.middleware import RequestFacts, ResponseFacts
from greyproxy.proxy.httpwire import (
    BufferedSocket,
    Head,
    WholeBody,
    discard_body,
    read_whole_body,
    serialize_head,
    unread,
)
from greyproxy.timeutil import utcnow

if TYPE_CHECKING:
    from greyproxy.capture.recorder import Exchange
    from greyproxy.capture.redact import Redactor
    from greyproxy.middleware import MiddlewareEngine
    from greyproxy.store.writer import StoreWriter

log = logging.getLogger("greyproxy.middleware")

MAX_BUFFERED = 16 * 1024 * 1024  # the most a message body is held in memory for middlewares
FRAMING = frozenset({"content-length", "transfer-encoding"})

Headers = list[tuple[str, str]]


@dataclass
class RequestStep:
    """What the loop does with the request after the middlewares."""

    facts: RequestFacts
    refusal: bytes | None = None  # a whole response for the client; then the connection closes
    headers: Headers | None = None  # headers to send upstream instead of the loop's own
    body: bytes | None = None  # a replacement body (the original is consumed); None: relay it


@dataclass
class ResponseStep:
    """A response the middlewares changed: send this head and body instead of relaying."""

    status_code: int
    reason: str
    headers: Headers
    body: bytes | None  # None: relay the original body after the new head
    close: bool  # the upstream body was not read to its end: the connections must close


def _response(code: int, reason: str, body: bytes, extra: Headers) -> bytes:
    headers = [("Content-Type", "text/plain; charset=utf-8"), *extra,
               ("Content-Length", str(len(body))), ("Connection", "close"), ("Proxy-Agent", "greyproxy")]
    return serialize_head(f"HTTP/1.1 {code} {reason}", headers) + body


def _without_framing(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in FRAMING]


def _with_original_framing(new: Headers, original: Headers) -> Headers:
    """A rewrite that keeps the body keeps the body's framing, whatever the middleware said."""
    return _without_framing(new) + [(k, v) for k, v in original if k.lower() in FRAMING]


class MiddlewareHooks:
    def __init__(self, middlewares: MiddlewareEngine, redactor: Callable[[], Redactor], writer: StoreWriter) -> None:
        self.middlewares = middlewares
        self.redactor = redactor  # read at each use: a settings change replaces the Redactor
        self.writer = writer

    def _limit(self) -> int:
        declared = self.middlewares.max_body_bytes
        return min(declared, MAX_BUFFERED) if declared > 0 else MAX_BUFFERED

    def _read(self, src: BufferedSocket, head: Head, until_close: bool = False) -> WholeBody | None:
        return read_whole_body(src, head, self._limit(), until_close=until_close)

    # -- requests --------------------------------------------------------------------------
    def before_request(self, ex: Exchange, client: BufferedSocket, head: Head, headers: Headers, uri: str,
                       tls: bool) -> RequestStep | None:
        """Run the request hooks; None when no middleware is interested in this request."""
        engine = self.middlewares
        if not engine.active:
            return None
        facts = RequestFacts(id=secrets.token_hex(8), host=ex.host, method=head.start[0], uri=uri,
                             proto=head.start[2], headers=list(headers), container=ex.container, tls=tls)
        ex.middleware_facts = facts
        if not engine.wants_request(facts):
            return None
        if (head.get("expect") or "").lower() == "100-continue":
            # The client waits for this before sending the body we must read whole first (the
            # upstream's own 100 later is one more interim response, which clients accept).
            client.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        whole = self._read(client, head)
        facts.body = whole.payload if whole is not None else None
        outcome = engine.on_request(facts)
        self._audit(ex, "http-request", outcome.events)
        step = RequestStep(facts)
        if outcome.action == "deny":
            code = outcome.status_code or 403
            body = outcome.body if outcome.body is not None else b"Request denied by middleware\n"
            step.refusal = _response(code, "Forbidden" if code == 403 else "Denied", body,
                                     [("X-Greyproxy-Reason", "middleware_denied")])
            return step
        if outcome.action == "rewrite" and outcome.body_replaced:
            if whole is None:
                discard_body(client, head)  # too big to have been read: drop it now
            step.body = outcome.body or b""
            step.headers = _without_framing(outcome.headers if outcome.headers is not None else headers)
            step.headers.append(("Content-Length", str(len(step.body))))
        else:
            if whole is not None:
                unread(client, whole.raw)
            if outcome.action == "rewrite" and outcome.headers is not None:
                step.headers = _with_original_framing(outcome.headers, headers)
        if step.headers is not None:  # what is stored, and what response hooks see, is what went on
            ex.request = Head(list(head.start), list(step.headers))
            facts.headers = list(step.headers)
        if step.body is not None:
            facts.body = step.body
        return step

    # -- responses -------------------------------------------------------------------------
    def after_response(self, ex: Exchange, upstream: BufferedSocket, response: Head, no_body: bool,
                       framed: bool, scrub: Callable[[bytes], bytes] | None = None) -> ResponseStep | None:
        """Run the response hooks; None when the response goes on unchanged."""
        engine = self.middlewares
        facts = ex.middleware_facts
        if facts is None or not engine.active or not engine.wants_response(facts, response.headers):
            return None
        whole = None if no_body else self._read(upstream, response, until_close=not framed)
        body: bytes | None = b"" if no_body else None
        if whole is not None:
            body, _cut = decode(whole.payload, parse_encodings(response.get("content-encoding")), self._limit())
            if scrub is not None:  # what the request's secrets became in the answer: placeholders
                body = scrub(body)
        code = int(response.start[1])
        outcome = engine.on_response(facts, ResponseFacts(
            status_code=code, headers=list(response.headers), body=body,
            duration_ms=int((time.monotonic() - ex.started) * 1000)))
        self._audit(ex, "http-response", outcome.events)
        if outcome.action == "block":
            new_body = outcome.body if outcome.body is not None else b"Response blocked by middleware\n"
            return ResponseStep(outcome.status_code or 502, "Blocked", [
                ("Content-Type", "text/plain; charset=utf-8"), ("X-Greyproxy-Reason", "middleware_blocked"),
                ("Content-Length", str(len(new_body))), ("Connection", "close")], new_body, close=True)
        if outcome.action != "rewrite":
            if whole is not None:
                unread(upstream, whole.raw)
            return None
        status = outcome.status_code or code
        reason = response.start[2] if status == code else "Rewritten"
        headers = outcome.headers if outcome.headers is not None else list(response.headers)
        if outcome.body_replaced:
            new_body = outcome.body or b""
            # The new body is sent as is: the old encoding and framing no longer describe it.
            headers = [(k, v) for k, v in _without_framing(headers) if k.lower() != "content-encoding"]
            headers.append(("Content-Length", str(len(new_body))))
            close = whole is None and not no_body  # the old body is still in the stream, unread
            if close:
                headers.append(("Connection", "close"))
            return ResponseStep(status, reason, headers, new_body, close=close)
        if whole is not None:
            unread(upstream, whole.raw)
        return ResponseStep(status, reason, _with_original_framing(headers, response.headers), None, close=False)

    # -- audit -----------------------------------------------------------------------------
    def _audit(self, ex: Exchange, hook: str, events: list[dict]) -> None:
        for event in events:
            ex.middleware_actions.append({"middleware": event.get("middleware"), "hook": hook,
                                          "action": event.get("action"), "tags": event.get("tags")})
            self.writer.middleware_event({
                "timestamp": utcnow(),
                "middleware": str(event.get("middleware") or "?"),
                "hook": hook,
                "action": str(event.get("action")),
                "status_code": event.get("status_code"),
                "reason": event.get("reason"),
                "tags": json.dumps(event["tags"]) if event.get("tags") else None,
                "container_name": ex.container,
                "destination_host": ex.host,
                "method": ex.request.start[0],
                "url": self.redactor().url(ex.url),
            })
            log.info("middleware %s %s %s %s %s", event.get("middleware"), hook, event.get("action"),
                     ex.request.start[0], self.redactor().url(ex.url))
