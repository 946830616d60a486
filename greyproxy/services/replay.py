"""`POST /api/transactions/:id/replay` (docs/decisions.md#audit-observability-traffic-tools): send a stored request again, on behalf of the same
container, and store the exchange as a new transaction (`replay_of` = the original).

The request may be changed first (`Modifications`: method, URL, headers, body). The replay is a
connection like any other: the rules decide it for the destination actually dialled (a changed
URL is a changed destination; only ALLOW goes out; a connection that would be held is refused
rather than held, since nobody is waiting on the other end), it is logged in request_logs, and
it is dialled under the same resolver and guards.

A value redacted when the request was captured is never sent as the literal `[REDACTED]`: a
stored header, URL or body that still holds one is refused (ReplayInvalid naming it) unless the
modifications give that part a value, or drop it (a header set to null).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, unquote, urlsplit

import gevent

from greyproxy.capture.bodies import BodyTap
from greyproxy.capture.curl import SKIPPED_HEADERS, header_lines
from greyproxy.capture.har import WS_METHODS
from greyproxy.capture.redact import REDACTED
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.policy.canonical import PatternError, canonical_destination
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.policy.request_decide import decide_request
from greyproxy.policy.request_rules import RequestQuery, canonical_path
from greyproxy.proxy.mitm.upstream import upstream_ssl_context
from greyproxy.proxy.tunnel import DialError, dial
from greyproxy.store.models import HttpTransaction
from greyproxy.timeutil import utcnow

if TYPE_CHECKING:
    import socket

    from greyproxy.capture.recordings import ActiveRecordings
    from greyproxy.capture.redact import Redactor
    from greyproxy.capture.scrub import Scrubber
    from greyproxy.credentials.vault import Vault
    from greyproxy.events import Bus
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.resolver import Resolver
    from greyproxy.proxy.upstream_proxy import UpstreamHolder
    from greyproxy.services.policy_state import PolicyHolder
    from greyproxy.store.writer import StoreWriter

REPLAY_TIMEOUT = 30.0  # the whole exchange: dial, TLS, request, response
MAX_RESPONSE_READ = 64 * 1024 * 1024  # read (and count) at most this much of the answer
READ_CHUNK = 64 * 1024
MAX_URL = 8192
MAX_HEADER_VALUE = 8192
MAX_HEADERS = 100
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Also dropped for a replay: we send the whole body at once, and decompressed.
_REPLAY_SKIPPED = SKIPPED_HEADERS | {"expect", "content-encoding"}
# Set by the replay itself from what it sends; a modification may not name them.
_NOT_SETTABLE = _REPLAY_SKIPPED | {"host"}
_ENCODED_MARK = b"%5bredacted%5d"  # the marker inside a form body or a URL, percent-encoded


class ReplayInvalid(ValueError):
    """This transaction cannot be replayed, or the modifications are bad (400)."""


class ReplayDenied(PermissionError):
    """The rules do not allow the destination now (403)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"replay blocked: {decision.reason}")
        self.reason = decision.reason


class ReplayFailed(OSError):
    """Upstream could not be reached or answered badly (502)."""


@dataclass(frozen=True, slots=True)
class Modifications:
    """What to change before sending; None = as stored. A header set to None is left out."""

    method: str | None = None
    url: str | None = None
    headers: dict[str, list[str] | None] = field(default_factory=dict)
    body: bytes | None = None
    body_set: bool = False  # True when `body` replaces the stored one (None then means no body)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: str
    host: str  # canonical, what the rules see and the dial connects to
    port: int
    headers: list[tuple[str, str]]
    body: bytes | None


def _check_text(value: str, what: str, limit: int) -> None:
    if len(value) > limit:
        raise ReplayInvalid(f"{what} is longer than {limit} characters")
    if any(c in value for c in "\r\n\x00") or not _encodable(value):
        raise ReplayInvalid(f"{what} has characters that cannot be sent")


def _encodable(value: str) -> bool:
    """False for a lone surrogate, which no wire and no database column can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ReplayInvalid(f"the URL cannot be parsed: {exc}") from None
    return parts


def _destination(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = canonical_destination(parts.hostname or "")
    except (ValueError, PatternError) as exc:  # a bad port or a host that is not one
        raise ReplayInvalid(f"the URL's host and port cannot be dialled: {exc}") from None
    if not 0 < port < 65536:
        raise ReplayInvalid("the URL's port is out of range")
    return host, port


def _redacted_in_url(url: str) -> bool:
    return REDACTED in url or REDACTED in unquote(url)


def _resolve(row: HttpTransaction, mods: Modifications) -> _Request:
    """The request to send: the stored one with the modifications applied, checked."""
    method = mods.method if mods.method is not None else row.method
    if not _TOKEN.match(method) or len(method) > 32:
        raise ReplayInvalid(f"cannot replay method {method!r}")
    url = mods.url if mods.url is not None else row.url
    redacted: list[str] = []  # the stored parts that still hold the marker, all named in one answer
    _check_text(url, "the URL", MAX_URL)
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReplayInvalid(f"cannot replay a {parts.scheme or 'relative'} URL")
    if " " in url:
        raise ReplayInvalid("the URL has characters that cannot be sent")
    if mods.url is None:
        if not 0 < (row.destination_port or 0) < 65536 or not row.destination_host:
            raise ReplayInvalid("the stored destination is not a host and port that can be dialled")
        host, port = row.destination_host, row.destination_port
        if _redacted_in_url(url):
            redacted.append("the URL (give the URL to send in 'url')")
    else:
        host, port = _destination(url)

    if mods.body_set:
        body = mods.body
    else:
        if row.request_body_truncated or (row.request_body is None and (row.request_body_size or 0) > 0):
            raise ReplayInvalid("the request body was not captured in full (binary or over 2 MiB), so it cannot be "
                                "replayed as stored: give one in 'body'")
        body = bytes(row.request_body) if row.request_body is not None else None
        if body is not None and (REDACTED.encode() in body or _ENCODED_MARK in body.lower()):
            redacted.append("the request body (give the body to send in 'body')")

    changed = {name.lower() for name in mods.headers}
    headers = []
    for name, value in header_lines(row.request_headers):
        low = name.lower()
        if low in _REPLAY_SKIPPED or low in changed or (low == "host" and mods.url is not None):
            continue
        if not _TOKEN.match(name) or any(c in value for c in "\r\n\x00"):
            continue
        if REDACTED in value:
            redacted.append(f"header '{name}' (give its value in 'headers', or null to leave it out)")
            continue
        headers.append((name, value))
    if redacted:
        raise ReplayInvalid(f"redacted at capture, and {REDACTED} is never sent: " + "; ".join(dict.fromkeys(redacted)))
    for name, values in mods.headers.items():
        headers.extend((name, value) for value in values or [])
    if not any(name.lower() == "host" for name, _ in headers):
        headers.insert(0, ("Host", parts.netloc.rsplit("@", 1)[-1]))
    if body is not None or method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(body or b""))))
    headers.append(("Connection", "close"))
    return _Request(method, url, host, port, headers, body)


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _wire(method: str, target: str, headers: list[tuple[str, str]], body: bytes | None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1", errors="replace") + (body or b"")


def parse_modifications(body: object) -> Modifications:
    """The request body of a replay (a JSON object, or None for none) as Modifications."""
    if body is None:
        return Modifications()
    if not isinstance(body, dict):
        raise ReplayInvalid("the request body must be a JSON object")
    unknown = sorted(set(body) - {"method", "url", "headers", "body", "body_base64"})
    if unknown:
        raise ReplayInvalid(f"unknown field(s): {', '.join(unknown)}")
    method, url = body.get("method"), body.get("url")
    for name, value in (("method", method), ("url", url)):
        if value is not None and not isinstance(value, str):
            raise ReplayInvalid(f"'{name}' must be a string")
    if isinstance(method, str) and (not _TOKEN.match(method) or len(method) > 32):
        raise ReplayInvalid("'method' must be an HTTP method token of at most 32 characters")
    if isinstance(url, str):
        _check_text(url, "'url'", MAX_URL)
    return Modifications(method=method, url=url, headers=_parse_headers(body.get("headers")), **_parse_body(body))


def _parse_headers(raw: object) -> dict[str, list[str] | None]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ReplayInvalid("'headers' must be an object of name: value (a string, a list of strings, or null)")
    if len(raw) > MAX_HEADERS:
        raise ReplayInvalid(f"'headers' may set at most {MAX_HEADERS} headers")
    out: dict[str, list[str] | None] = {}
    for name, value in raw.items():
        if not _TOKEN.match(name) or len(name) > 256:
            raise ReplayInvalid(f"'headers': {name[:64]!r} is not a header name")
        if name.lower() in _NOT_SETTABLE:
            raise ReplayInvalid(f"'headers': {name} is set by the replay itself (change 'url' or 'body' instead)")
        values = [value] if isinstance(value, str) else value
        if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
            raise ReplayInvalid(f"'headers': the value of {name} must be a string, a list of strings, or null")
        for v in values or []:
            _check_text(v, f"the value of header {name}", MAX_HEADER_VALUE)
        out[name] = values
    return out


def _parse_body(body: dict) -> dict[str, object]:
    if "body" in body and "body_base64" in body:
        raise ReplayInvalid("give 'body' or 'body_base64', not both")
    if "body" in body:
        text = body["body"]
        if text is not None and not isinstance(text, str):
            raise ReplayInvalid("'body' must be a string or null")
        try:
            data = None if text is None else text.encode("utf-8")
        except UnicodeEncodeError:
            raise ReplayInvalid("'body' is not valid Unicode (a lone surrogate)") from None
        return {"body": data, "body_set": True}
    if "body_base64" in body:
        import base64
        import binascii

        text = body["body_base64"]
        if not isinstance(text, str):
            raise ReplayInvalid("'body_base64' must be a string")
        try:
            return {"body": base64.b64decode(text, validate=True), "body_set": True}
        except (binascii.Error, ValueError):
            raise ReplayInvalid("'body_base64' is not valid base64") from None
    return {}


def _exchange(sock: socket.socket, wire: bytes, method: str) -> tuple[int, list[tuple[str, str]], BodyTap]:
    import http.client

    sock.sendall(wire)
    response = http.client.HTTPResponse(sock, method=method)  # type: ignore[arg-type]
    try:
        response.begin()
        headers = response.getheaders()
        tap = BodyTap(response.getheader("Content-Type"), response.getheader("Content-Encoding"))
        # http.client undoes chunking, not Content-Encoding: the tap sees what it expects.
        for _ in range(MAX_RESPONSE_READ // READ_CHUNK + 1):
            chunk = response.read(READ_CHUNK)
            if not chunk:
                break
            tap.feed(chunk)
    except (http.client.HTTPException, OSError) as exc:
        raise ReplayFailed(f"bad answer from upstream: {exc!r}") from None
    finally:
        response.close()
    return response.status, headers, tap


class Replayer:
    """Sends a stored request again, decided and dialled like live traffic, and stores the answer."""

    def __init__(self, policy: PolicyHolder, guard: ControlPlaneGuard, resolver: Resolver, upstream: UpstreamHolder,
                 extra_ca_bundle: Callable[[], str | None], writer: StoreWriter, redactor: Callable[[], Redactor],
                 scrubber: Scrubber, recordings: ActiveRecordings, bus: Bus, vault: Vault | None = None,
                 on_substituted: Callable[[dict[str, int]], None] | None = None) -> None:
        self.policy = policy
        self.guard = guard
        self.resolver = resolver
        self.upstream = upstream
        self.extra_ca_bundle = extra_ca_bundle  # read at each replay: a reload may change it
        self.writer = writer
        self.redactor = redactor  # read at each replay: a settings change replaces the Redactor
        self.scrubber = scrubber
        self.recordings = recordings
        self.bus = bus
        self.vault = vault  # credential placeholders given in a replay are swapped as live
        self.on_substituted = on_substituted  # per-session substitution counts

    def replay(self, row: HttpTransaction, mods: Modifications | None = None) -> HttpTransaction:
        if row.method in WS_METHODS:
            raise ReplayInvalid("a WebSocket frame cannot be replayed")
        req = _resolve(row, mods or Modifications())
        sent_headers, body = req.headers, req.body
        host, port = req.host, req.port
        started = time.monotonic()
        connection = self.policy.decide(
            ConnectionRequest(container=row.container_name, host=host, port=port,
                              control_plane=self.guard.is_control_plane(host, port))
        )
        # Then the request-level rules (method, path), as for a live request on that connection.
        target = urlsplit(req.url).path or "/"
        decision = decide_request(connection, RequestQuery(row.container_name, host, port, req.method,
                                                           canonical_path(target)), self.policy.state)
        allowed = decision.verdict is Verdict.ALLOW
        self.writer.log(
            container_name=row.container_name, destination_host=host, destination_port=port, method=req.method,
            result="allowed" if allowed else "blocked", rule_id=decision.rule_id, response_time_ms=0,
            reason=decision.reason, would=decision.would,
        )
        if not allowed:
            raise ReplayDenied(decision)
        if decision.rule_id is not None:
            self.writer.used(decision.rule_id)

        # Placeholders (given for a redacted value, say) become their secrets where they belong,
        # exactly as on the live path: this container's own, for a destination they are bound to.
        wire_headers, wire_target, sub = sent_headers, _target(req.url), None
        if self.vault is not None:
            wire_headers, wire_target, sub = self.vault.substitute_request(sent_headers, wire_target, host,
                                                                          container=row.container_name)
            if sub.changed and self.on_substituted is not None:
                self.on_substituted(sub.per_session)
        wire = _wire(req.method, wire_target, wire_headers, body)

        sock = None
        try:
            with gevent.Timeout(REPLAY_TIMEOUT, ReplayFailed(f"no complete answer within {REPLAY_TIMEOUT:.0f} s")):
                sock = self._open(req, connection)  # the connection's rule opens a private range, as live
                status, response_headers, tap = _exchange(sock, wire, req.method)
        finally:
            if sock is not None:
                sock.close()

        request_type = next((v for n, v in sent_headers if n.lower() == "content-type"), None)
        request_tap = BodyTap(request_type, None)
        if body:
            request_tap.feed(body)
        req_body, req_size, req_cut = request_tap.result()
        resp_body, resp_size, resp_cut = tap.result()
        redactor = self.redactor()
        content_type = next((v for n, v in response_headers if n.lower() == "content-type"), None)
        # What the replay stores is scrubbed like any capture (vault values, redacted request values).
        scrub = self.scrubber.for_exchange(redactor.redacted_values(sent_headers, req.url),
                                           sub.reverse if sub is not None else ())
        url, req_headers, resp_headers = redactor.url(req.url), redactor.headers(sent_headers), redactor.headers(response_headers)
        if scrub is not None:
            url, req_headers, resp_headers = scrub(url), scrub.headers(req_headers), scrub.headers(resp_headers)
            req_body, resp_body = scrub.data(req_body, req_cut), scrub.data(resp_body, resp_cut)
        new = HttpTransaction.create(
            timestamp=utcnow(),
            container_name=row.container_name,
            destination_host=host,
            destination_port=port,
            method=req.method,
            url=url,
            request_headers=json.dumps(req_headers),
            request_body=req_body,
            request_body_size=req_size,
            request_body_truncated=req_cut,
            request_content_type=request_type,
            status_code=status,
            response_headers=json.dumps(resp_headers),
            response_body=resp_body,
            response_body_size=resp_size,
            response_body_truncated=resp_cut,
            response_content_type=content_type,
            duration_ms=int((time.monotonic() - started) * 1000),
            rule_id=decision.rule_id,
            result="auto",
            replay_of=row.id,
            substituted_credentials=json.dumps(sub.labels) if sub is not None and sub.labels else None,
            session_id=sub.session_id if sub is not None else None,
            recording_id=self.recordings.recording_for(row.container_name),
        )
        self.bus.publish("transaction.new", transaction_to_json(new))
        return new

    def _open(self, req: _Request, decision: Decision) -> socket.socket:
        # The same dial as live traffic: our resolver, the control-plane guard and the private-range
        # guard, which only the allowing rule itself can open.
        rule = decision.rule
        pattern = rule.destination_pattern if rule is not None and rule.action == "allow" else None
        try:
            sock = dial(req.host, req.port, self.guard, resolver=self.resolver, rule_pattern=pattern,
                        upstream=self.upstream.get())
        except DialError as exc:
            raise ReplayFailed(f"{exc.reason}: {exc}") from None
        except (UnicodeError, ValueError) as exc:  # a stored name that is not a valid host name
            raise ReplayFailed(f"cannot dial {req.host!r}: {exc}") from None
        if urlsplit(req.url).scheme == "https":
            try:
                ctx = upstream_ssl_context(self.extra_ca_bundle())
                sock = ctx.wrap_socket(sock, server_hostname=urlsplit(req.url).hostname)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                sock.close()
                raise ReplayFailed(f"TLS handshake with {req.host} failed: {exc}") from None
        return sock
