"""A small helper for greyproxy middlewares: the protocol is handled here, a middleware is a
function per hook. Standard library only: copy this file beside your middleware.

    from greyproxy_middleware import Middleware

    mw = Middleware("header-tagger")

    @mw.request(host="*.example.com")          # filters as in the hello: host, path, method,
    def tag(req):                              # content_type, container, tls, llm
        return req.rewrite(headers={"X-Tagged": "yes"}, tags={"tagged": True})

    if __name__ == "__main__":
        mw.run()

Run it with `greyproxy serve --middleware-cmd 'python3 my_middleware.py'` (stdio transport: one
JSON object per line on stdin and stdout; anything printed to stderr, such as `mw.log(...)`,
goes to greyproxy's log). Started any other way (greyproxy sets GREYPROXY_TRANSPORT=stdio for the
programs it starts), `mw.run()` serves the WebSocket transport instead, for
`greyproxy serve --middleware ws://127.0.0.1:9000/`: on GREYPROXY_WS_HOST (default 127.0.0.1)
and GREYPROXY_WS_PORT (default 9000); with GREYPROXY_WS_TOKEN set, only a connection that sends
`Authorization: Bearer <token>` (the middleware's `auth_header` in greyproxy's YAML) is served.
This one needs the `websockets` package; stdio needs nothing beyond the standard library.

A handler gets a `Request` (or a `Response`) and returns one of its decisions, or None for
"let it through" (`allow` / `passthrough`). Bodies are bytes (None when greyproxy did not send
one: over `max_body_bytes`, or not read); headers are read case-insensitively. When a handler
raises, the exchange gets `on_error`: "deny" (the default: a request is refused with 403, a
response with 502, as greyproxy does when a middleware is gone) or "allow".
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Headers", "Middleware", "Request", "Response"]

FILTERS = ("host", "path", "method", "content_type", "container", "tls", "llm")


class Headers:
    """The message's headers ({Name: [values]} on the wire), read case-insensitively."""

    def __init__(self, wire: dict[str, list[str]] | None) -> None:
        self._pairs = [(str(n), str(v)) for n, vs in (wire or {}).items() for v in (vs if isinstance(vs, list) else [vs])]

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        return next((v for n, v in self._pairs if n.lower() == key), default)

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._pairs if n.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)


def _body(value: Any) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def _encode(body: bytes | str) -> str:
    return base64.b64encode(body.encode("utf-8") if isinstance(body, str) else body).decode("ascii")


def _decision(message_id: Any, action: str, status: int | None = None, headers: dict[str, Any] | None = None,
              body: bytes | str | None = None, tags: dict[str, Any] | None = None,
              reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "decision", "id": message_id, "action": action}
    if status is not None:
        out["status_code"] = status
    if headers:
        out["headers"] = headers  # a name → a value, a list of values, or None to remove it
    if body is not None:
        out["body"] = _encode(body)
    if tags:
        out["tags"] = tags
    if reason:
        out["reason"] = reason
    return out


class Request:
    """An `http-request` message."""

    def __init__(self, m: dict[str, Any]) -> None:
        self.id = m.get("id")
        self.host: str = m.get("host") or ""
        self.method: str = m.get("method") or ""
        self.uri: str = m.get("uri") or ""
        self.path: str = self.uri.split("?", 1)[0]
        self.proto: str = m.get("proto") or ""
        self.headers = Headers(m.get("headers"))
        self.body = _body(m.get("body"))
        self.container: str = m.get("container") or ""
        self.tls = bool(m.get("tls"))

    def allow(self, tags: dict[str, Any] | None = None) -> dict[str, Any]:
        return _decision(self.id, "allow", tags=tags)

    def deny(self, status: int = 403, body: bytes | str = "", tags: dict[str, Any] | None = None,
             reason: str | None = None) -> dict[str, Any]:
        return _decision(self.id, "deny", status, body=body, tags=tags, reason=reason)

    def rewrite(self, headers: dict[str, Any] | None = None, body: bytes | str | None = None,
                tags: dict[str, Any] | None = None) -> dict[str, Any]:
        """Headers named here replace the request's (None removes one); a body replaces it."""
        return _decision(self.id, "rewrite", headers=headers, body=body, tags=tags)


class Response:
    """An `http-response` message: the request it answers, and the response."""

    def __init__(self, m: dict[str, Any]) -> None:
        self.id = m.get("id")
        self.host: str = m.get("host") or ""
        self.method: str = m.get("method") or ""
        self.uri: str = m.get("uri") or ""
        self.path: str = self.uri.split("?", 1)[0]
        self.status_code: int = m.get("status_code") or 0
        self.request_headers = Headers(m.get("request_headers"))
        self.request_body = _body(m.get("request_body"))
        self.headers = Headers(m.get("response_headers"))
        self.body = _body(m.get("response_body"))
        self.container: str = m.get("container") or ""
        self.duration_ms: int = m.get("duration_ms") or 0

    def passthrough(self, tags: dict[str, Any] | None = None) -> dict[str, Any]:
        return _decision(self.id, "passthrough", tags=tags)

    def block(self, status: int = 502, body: bytes | str = "", tags: dict[str, Any] | None = None,
              reason: str | None = None) -> dict[str, Any]:
        return _decision(self.id, "block", status, body=body, tags=tags, reason=reason)

    def rewrite(self, status: int | None = None, headers: dict[str, Any] | None = None,
                body: bytes | str | None = None, tags: dict[str, Any] | None = None) -> dict[str, Any]:
        return _decision(self.id, "rewrite", status, headers=headers, body=body, tags=tags)


Handler = Callable[[Any], "dict[str, Any] | None"]


class Middleware:
    def __init__(self, name: str, max_body_bytes: int | None = None, on_error: str = "deny") -> None:
        if on_error not in ("deny", "allow"):
            raise ValueError("on_error must be 'deny' or 'allow'")
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.on_error = on_error
        self._hooks: dict[str, tuple[Handler, dict[str, Any]]] = {}
        self._out_lock = threading.Lock()

    # -- registering handlers --------------------------------------------------------------
    def request(self, **filters: Any) -> Callable[[Handler], Handler]:
        """Decorator: the handler of `http-request` messages matching the filters."""
        return self._register("http-request", filters)

    def response(self, **filters: Any) -> Callable[[Handler], Handler]:
        """Decorator: the handler of `http-response` messages matching the filters."""
        return self._register("http-response", filters)

    def _register(self, hook: str, filters: dict[str, Any]) -> Callable[[Handler], Handler]:
        unknown = sorted(set(filters) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(FILTERS)}")
        if hook in self._hooks:
            raise ValueError(f"one handler per hook: {hook} has one already")

        def add(fn: Handler) -> Handler:
            self._hooks[hook] = (fn, filters)
            return fn

        return add

    # -- the protocol ----------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        hooks = []
        for hook, (_, filters) in self._hooks.items():
            entry: dict[str, Any] = {"type": hook}
            if filters:
                entry["filters"] = filters
            hooks.append(entry)
        out: dict[str, Any] = {"type": "hello", "name": self.name, "min_version": 1, "max_version": 1, "hooks": hooks}
        if self.max_body_bytes is not None:
            out["max_body_bytes"] = self.max_body_bytes
        return out

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to one message from greyproxy (None: it needs none)."""
        kind = message.get("type")
        if kind == "hello":
            return self.hello()
        if kind not in ("http-request", "http-response"):
            return None
        is_request = kind == "http-request"
        wrapped = Request(message) if is_request else Response(message)
        entry = self._hooks.get(kind)
        try:
            answer = entry[0](wrapped) if entry is not None else None
        except Exception:  # a bug in a handler must not stop the middleware
            self.log(f"handler for {kind} failed:\n{traceback.format_exc()}")
            if self.on_error == "allow":
                answer = None
            elif is_request:
                answer = wrapped.deny(403, f"{self.name}: middleware error\n", reason="handler error")
            else:
                answer = wrapped.block(502, f"{self.name}: middleware error\n", reason="handler error")
        if answer is None:
            answer = wrapped.allow() if is_request else wrapped.passthrough()
        return answer

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _send(self, out: TextIO, obj: dict[str, Any]) -> None:
        with self._out_lock:
            out.write(json.dumps(obj) + "\n")
            out.flush()

    def run(self, lines: Iterable[str] | None = None, out: TextIO | None = None) -> None:
        """Serve greyproxy: on stdin/stdout until it closes stdin when it started this program
        (or when given `lines`), else as a WebSocket server (see the module's docstring)."""
        if lines is None and out is None and os.environ.get("GREYPROXY_TRANSPORT") != "stdio":
            self.serve_websocket()
            return
        out = out or sys.stdout
        for line in lines if lines is not None else sys.stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            answer = self.handle(message)
            if answer is not None:
                self._send(out, answer)

    def serve_websocket(self, host: str | None = None, port: int | None = None) -> None:
        """Serve greyproxy's WebSocket transport until interrupted: each connection is a session
        of its own (hello, then one answer per message)."""
        try:
            from websockets.datastructures import Headers as WsHeaders
            from websockets.http11 import Response as WsResponse
            from websockets.sync.server import serve
        except ImportError:
            raise SystemExit("the WebSocket transport needs the `websockets` package (pip install websockets); "
                             "greyproxy's stdio transport needs nothing") from None
        host = host or os.environ.get("GREYPROXY_WS_HOST", "127.0.0.1")
        port = port or int(os.environ.get("GREYPROXY_WS_PORT", "9000"))
        token = os.environ.get("GREYPROXY_WS_TOKEN")

        def check(connection: Any, request: Any) -> Any:
            if token is None:
                return None
            given = request.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return None
            body = b"missing or wrong Authorization\n"
            return WsResponse(401, "Unauthorized", WsHeaders([("Content-Length", str(len(body)))]), body)

        def session(ws: Any) -> None:
            for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    answer = self.handle(message)
                    if answer is not None:
                        ws.send(json.dumps(answer))

        with serve(session, host, port, process_request=check) as server:
            self.log(f"{self.name}: serving the WebSocket transport on ws://{host}:{port}/")
            server.serve_forever()
