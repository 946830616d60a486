"""The request guard every API, dashboard and WebSocket request passes first (docs/decisions.md#the-control-plane-is-not-the-agents).

Order: Host (stops DNS rebinding), Origin (stops cross-site requests and WebSocket
hijacking), API token, then Content-Type for JSON bodies (no text/plain "simple" requests
that skip the browser's CORS preflight).
"""

from __future__ import annotations

import hmac
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, g, redirect, request

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.pages import login_page
from greyproxy.api.parse import decode_json
from greyproxy.services.audit import current_actor

TOKEN_COOKIE = "greyproxy_token"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class RequestGuard:
    """Built once per app; the allowed hosts need the real API port, known after binding."""

    def __init__(self) -> None:
        self._hosts: frozenset[str] = frozenset()
        self._origins: frozenset[str] = frozenset()
        self._port: int | None = None

    def _refresh(self) -> None:
        rt = runtime()
        port = rt.ports.get("api") or rt.config.listen["api"].port
        if port == self._port:
            return
        names = {*_LOOPBACK_NAMES, _bracketed(rt.config.listen["api"].host.lower())}
        configured = {o.rstrip("/").lower() for o in rt.config.allowed_origins}
        # A host someone deliberately allowed as an origin is also a name they reach us by.
        names |= {urlsplit(o).hostname or "" for o in configured} - {""}
        names = {_bracketed(n) for n in names}
        self._hosts = frozenset(names | {f"{n}:{port}" for n in names})
        self._origins = frozenset({f"http://{n}:{port}" for n in names} | configured)
        self._port = port

    def check(self) -> Response | None:
        self._refresh()
        host = request.environ.get("HTTP_HOST")
        # A missing Host (HTTP/1.0 tools) cannot come from a browser, so it cannot be a rebinding.
        if host is not None and host.lower() not in self._hosts:
            raise ApiError(403, "host not allowed")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() not in self._origins:
            raise ApiError(403, "origin not allowed")
        token = runtime().api_token
        if token is not None and not _exempt():
            response = self._check_token(token)
            if response is not None:
                return response
        if request.path.startswith("/api/") and request.method in _BODY_METHODS:
            raw = request.get_data(cache=True)
            if raw.strip():
                if request.mimetype != "application/json":
                    raise ApiError(415, "Content-Type must be application/json")
                # Every JSON body goes through the one reader (depth, surrogates, NaN) before any
                # route runs, also on routes that look at the id first or ignore the body.
                g.json_body = decode_json(raw)
        return None

    def _check_token(self, token: str) -> Response | None:
        if request.method == "GET" and request.path == "/dashboard" and "token" in request.args:
            # The URL `serve` prints: trade the query token for a cookie, then drop it from the URL
            # so it does not linger in history, bookmarks or Referer headers.
            if not _same(request.args["token"], token):
                return _refuse("That token is not the current API token.")
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            response = redirect(request.path + (f"?{urlencode(rest)}" if rest else ""), code=302)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
            return response
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            presented = request.cookies.get(TOKEN_COOKIE, "")
        if not _same(presented.strip(), token):
            return _refuse("This browser is not logged in to the dashboard.")
        return None


def _same(presented: str, token: str) -> bool:
    return hmac.compare_digest(presented.encode(), token.encode())


def _refuse(reason: str) -> Response:
    """API and WebSocket clients get the JSON 401; a browser asking for a page gets a page
    that explains how to log in (the JSON would only confuse a person)."""
    # /metrics is for Prometheus, not a person: the JSON 401 (with WWW-Authenticate) fits it.
    if request.method in ("GET", "HEAD") and not request.path.startswith("/api/") \
            and request.path not in ("/ws", "/metrics"):
        return login_page(reason)
    raise _unauthorized()


def _unauthorized() -> ApiError:
    return ApiError(401, "missing or invalid API token", {"WWW-Authenticate": 'Bearer realm="greyproxy"'})


def _exempt() -> bool:
    """Liveness probes and static assets need no token."""
    if request.path == "/api/health" and request.method in ("GET", "HEAD"):
        return True
    return request.path.startswith("/static/")


def request_actor() -> str:
    """Who is making this request, for the audit log. Everyone here holds the token; the
    CLI says it is the CLI (a label, not a credential)."""
    if request.headers.get("X-Greyproxy-Client") == "cli":
        return "cli"
    if request.headers.get("Authorization", "").partition(" ")[0].lower() == "bearer":
        return "token"
    if request.cookies.get(TOKEN_COOKIE):
        return "dashboard"
    return "api"  # api.auth: none


def _set_actor() -> None:
    current_actor.set(request_actor())  # this request's greenlet only


def install_guard(app: Flask) -> None:
    guard = RequestGuard()
    app.before_request(guard.check)
    app.before_request(_set_actor)
