"""Middleware wire protocol v1: messages, hello handshake, hook filters, header rules.

Pure functions and data only; no I/O. Everything a middleware sends is validated here, and a
bad value raises ProtocolError (a decision) or HandshakeError (the hello) with a short reason
that never quotes header values or bodies.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("greyproxy.middleware")

PROTOCOL_MIN = 1
PROTOCOL_MAX = 1
HOOK_REQUEST = "http-request"
HOOK_RESPONSE = "http-response"
HOOK_TYPES = (HOOK_REQUEST, HOOK_RESPONSE)
REQUEST_ACTIONS = ("allow", "deny", "rewrite")
RESPONSE_ACTIONS = ("passthrough", "block", "rewrite")

# Hop-by-hop and identity headers: a middleware may read them but never set them.
FORBIDDEN_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authorization", "transfer-encoding", "upgrade", "te", "trailer",
    "proxy-authenticate", "authorization", "cookie", "set-cookie", "host",
})

Headers = list[tuple[str, str]]  # the proxy's header representation: ordered (name, value) pairs


class ProtocolError(ValueError):
    """A message from a middleware is not valid protocol; the message says why (no content)."""


class HandshakeError(ProtocolError):
    """The hello cannot be accepted (bad shape, no common version, bad filter): not retried."""


@dataclass
class RequestFacts:
    id: str  # unique per exchange
    host: str
    method: str
    uri: str  # the request target as sent upstream
    proto: str
    headers: Headers
    container: str
    tls: bool
    body: bytes | None = None  # None: not read / too large


@dataclass
class ResponseFacts:
    status_code: int
    headers: Headers
    body: bytes | None  # decompressed by the caller; None when too large
    duration_ms: int


@dataclass
class RequestOutcome:
    action: str  # "allow" | "deny" | "rewrite"
    status_code: int | None = None  # deny: None → the caller's default (403)
    body: bytes | None = None  # deny body, or the replacement body for rewrite
    body_replaced: bool = False
    headers: Headers | None = None  # rewrite: the full new header list; None = unchanged
    middleware: str | None = None  # label of the middleware that denied (or last rewrote)
    events: list[dict] = field(default_factory=list)


@dataclass
class ResponseOutcome:
    action: str  # "passthrough" | "block" | "rewrite"
    status_code: int | None = None  # block: None → the caller's default (502); rewrite: None = unchanged
    body: bytes | None = None
    body_replaced: bool = False
    headers: Headers | None = None
    middleware: str | None = None
    events: list[dict] = field(default_factory=list)


# --- filters -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatchInput:
    """What a hook filter looks at for one message."""

    host: str
    path: str
    method: str
    content_type: str
    container: str
    tls: bool


def match_input(facts: RequestFacts, headers: Headers) -> MatchInput:
    """The filter view of a request; `headers` give the Content-Type (request's or response's)."""
    return MatchInput(host=host_without_port(facts.host), path=path_of(facts.uri), method=facts.method,
                      content_type=media_type(headers), container=facts.container, tls=facts.tls)


def host_without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        if port.isdigit():
            host = name
    return host.rstrip(".")


def path_of(uri: str) -> str:
    """The path without query: from origin-form or from an absolute URI (plain proxy path)."""
    if uri.startswith("/"):
        return uri.split("?", 1)[0].split("#", 1)[0]
    try:
        return urlsplit(uri).path or "/"
    except ValueError:
        return uri.split("?", 1)[0]


def media_type(headers: Headers) -> str:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


def _host_glob(pattern: str) -> Callable[[MatchInput], bool]:
    pattern = pattern.strip().lower()
    if pattern.startswith("*.") and not any(c in pattern[2:] for c in "*?["):
        suffix = pattern[1:]  # ".x.com": subdomains only, never x.com itself
        return lambda m: m.host.endswith(suffix) and len(m.host) > len(suffix)
    return lambda m: fnmatch.fnmatchcase(m.host, pattern)


def _path_regex(pattern: str) -> Callable[[MatchInput], bool]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise HandshakeError(f"bad regex {pattern!r}: {exc}") from None
    return lambda m: compiled.search(m.path) is not None


def _method(value: str) -> Callable[[MatchInput], bool]:
    wanted = value.strip().upper()
    return lambda m: m.method.upper() == wanted


def _content_type(pattern: str) -> Callable[[MatchInput], bool]:
    pattern = pattern.split(";", 1)[0].strip().lower()
    return lambda m: fnmatch.fnmatchcase(m.content_type, pattern)


def _container(pattern: str) -> Callable[[MatchInput], bool]:
    pattern = pattern.lower()
    return lambda m: fnmatch.fnmatchcase(m.container.lower(), pattern)


def _tls(value: bool) -> Callable[[MatchInput], bool]:
    return lambda m: m.tls is value


def _llm(value: bool) -> Callable[[MatchInput], bool]:
    # There is no LLM endpoint registry yet, so no request counts as an LLM call:
    # `llm: true` never matches and `llm: false` always does.
    return lambda m: not value


_STRING_FILTERS: dict[str, Callable[[str], Callable[[MatchInput], bool]]] = {
    "host": _host_glob, "path": _path_regex, "method": _method, "content_type": _content_type,
    "container": _container,
}
_BOOL_FILTERS: dict[str, Callable[[bool], Callable[[MatchInput], bool]]] = {"tls": _tls, "llm": _llm}


@dataclass(frozen=True)
class Hook:
    type: str
    filters: dict[str, Any]  # as the middleware declared them (shown in status)
    tests: tuple[tuple[Callable[[MatchInput], bool], ...], ...]  # AND of ORs

    def matches(self, m: MatchInput) -> bool:
        return all(any(test(m) for test in field_tests) for field_tests in self.tests)


def parse_hook(obj: object, index: int) -> Hook | None:
    """A hook of the hello; None for a hook type this proxy does not know (ignored, logged)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise HandshakeError(f"hooks[{index}]: must be an object with a string `type`")
    if obj["type"] not in HOOK_TYPES:
        log.warning("middleware hook type %r is not supported; ignored", obj["type"][:60])
        return None
    filters = obj.get("filters") or {}
    if not isinstance(filters, dict):
        raise HandshakeError(f"hooks[{index}].filters: must be an object")
    tests = tuple(_field_tests(str(key), value, index) for key, value in filters.items())
    return Hook(type=obj["type"], filters=dict(filters), tests=tests)


def _field_tests(key: str, value: object, index: int) -> tuple[Callable[[MatchInput], bool], ...]:
    where = f"hooks[{index}].filters.{key}"
    values = value if isinstance(value, list) else [value]
    if not values:
        raise HandshakeError(f"{where}: an empty list matches nothing")
    if key in _STRING_FILTERS:
        if not all(isinstance(v, str) for v in values):
            raise HandshakeError(f"{where}: must be a string or a list of strings")
        try:
            return tuple(_STRING_FILTERS[key](v) for v in values)
        except HandshakeError as exc:
            raise HandshakeError(f"{where}: {exc}") from None
    if key in _BOOL_FILTERS:
        if not all(isinstance(v, bool) for v in values):
            raise HandshakeError(f"{where}: must be true or false")
        return tuple(_BOOL_FILTERS[key](v) for v in values)
    raise HandshakeError(f"{where}: unknown filter (known: {', '.join([*_STRING_FILTERS, *_BOOL_FILTERS])})")


# --- hello ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    name: str | None
    version: int
    hooks: tuple[Hook, ...]
    max_body_bytes: int  # 0 = unlimited


def hello_message() -> dict[str, Any]:
    return {"type": "hello", "version": PROTOCOL_MAX}


def parse_hello(obj: object) -> Hello:
    if not isinstance(obj, dict) or obj.get("type") != "hello":
        kind = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise HandshakeError(f"expected a hello message, got {str(kind)[:40]!r}")
    name = obj.get("name")
    if name is not None and not isinstance(name, str):
        raise HandshakeError("hello.name: must be a string")
    low, high = _int_field(obj, "min_version", 1), _int_field(obj, "max_version", 1)
    version = min(high, PROTOCOL_MAX)
    if version < max(low, PROTOCOL_MIN):
        raise HandshakeError(f"no common protocol version: middleware speaks {low}..{high}, "
                             f"greyproxy speaks {PROTOCOL_MIN}..{PROTOCOL_MAX}")
    hooks = obj.get("hooks", [])
    if not isinstance(hooks, list):
        raise HandshakeError("hello.hooks: must be a list")
    parsed = tuple(h for h in (parse_hook(raw, i) for i, raw in enumerate(hooks)) if h is not None)
    return Hello(name=name or None, version=version, hooks=parsed,
                 max_body_bytes=_int_field(obj, "max_body_bytes", 0))


def _int_field(obj: dict, key: str, default: int) -> int:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HandshakeError(f"hello.{key}: must be a non-negative integer")
    return value


# --- messages ------------------------------------------------------------------------------

def headers_to_wire(headers: Headers) -> dict[str, list[str]]:
    """Go http.Header style: name (as sent) → values in order."""
    wire: dict[str, list[str]] = {}
    for name, value in headers:
        wire.setdefault(name, []).append(value)
    return wire


def b64(body: bytes | None) -> str | None:
    return None if body is None else base64.b64encode(body).decode("ascii")


def request_message(facts: RequestFacts) -> dict[str, Any]:
    return {"type": HOOK_REQUEST, "id": facts.id, "host": facts.host, "method": facts.method, "uri": facts.uri,
            "proto": facts.proto, "headers": headers_to_wire(facts.headers), "body": b64(facts.body),
            "container": facts.container, "tls": facts.tls}


def response_message(request: RequestFacts, response: ResponseFacts) -> dict[str, Any]:
    return {"type": HOOK_RESPONSE, "id": request.id, "host": request.host, "method": request.method,
            "uri": request.uri, "status_code": response.status_code,
            "request_headers": headers_to_wire(request.headers), "request_body": b64(request.body),
            "response_headers": headers_to_wire(response.headers), "response_body": b64(response.body),
            "container": request.container, "duration_ms": response.duration_ms}


# --- decisions -----------------------------------------------------------------------------

@dataclass
class Decision:
    action: str
    status_code: int | None = None
    headers: list[tuple[str, list[str]]] | None = None  # names to replace → their new values
    body: bytes | None = None
    body_replaced: bool = False
    tags: dict[str, Any] | None = None
    reason: str | None = None  # optional free text for the audit trail (not in the Go protocol)


def parse_decision(obj: dict[str, Any]) -> Decision:
    action = obj.get("action")
    if not isinstance(action, str):
        raise ProtocolError("decision: `action` must be a string")
    tags = obj.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise ProtocolError("decision: `tags` must be an object")
    body = obj.get("body")
    reason = obj.get("reason")
    return Decision(action=action, status_code=_status(obj.get("status_code")), headers=_reply_headers(obj),
                    body=_unb64(body) if body is not None else None, body_replaced=body is not None,
                    tags=tags or None, reason=reason[:500] if isinstance(reason, str) else None)


def _status(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ProtocolError("decision: `status_code` must be an integer 100..599")
    return value


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError("decision: `body` must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ProtocolError("decision: `body` is not valid base64") from None


def _reply_headers(obj: dict[str, Any]) -> list[tuple[str, list[str]]] | None:
    raw = obj.get("headers")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("decision: `headers` must be an object")
    out: list[tuple[str, list[str]]] = []
    for name, value in raw.items():
        if not _token(name):
            raise ProtocolError("decision: a header name is not a valid token")
        values = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) and _clean(v) for v in values):
            raise ProtocolError(f"decision: header {name[:60]!r} must be a string or a list of strings")
        out.append((name, values))
    return out


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _token(name: str) -> bool:
    return bool(_TOKEN.match(name))


def _clean(value: str) -> bool:
    return not any(c in value for c in "\r\n\x00")


def strip_forbidden(updates: list[tuple[str, list[str]]], middleware: str) -> list[tuple[str, list[str]]]:
    """Drops hop-by-hop and identity headers from a rewrite; logs their names (never values)."""
    kept = [(n, v) for n, v in updates if n.lower() not in FORBIDDEN_HEADERS]
    dropped = [n for n, _ in updates if n.lower() in FORBIDDEN_HEADERS]
    if dropped:
        log.warning("middleware %s may not set %s; stripped from its rewrite", middleware, ", ".join(dropped))
    return kept


def merge_headers(headers: Headers, updates: list[tuple[str, list[str]]]) -> Headers:
    """Each name given replaces all values of that name (case-insensitively), in the place of the
    first one it replaces; an empty list removes the header."""
    merged = list(headers)
    for name, values in updates:
        key = name.lower()
        at = next((i for i, (n, _) in enumerate(merged) if n.lower() == key), len(merged))
        merged = [(n, v) for n, v in merged if n.lower() != key]
        at = min(at, len(merged))
        merged[at:at] = [(name, v) for v in values]
    return merged
