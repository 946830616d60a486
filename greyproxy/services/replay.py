"""`POST /api/transactions/:id/replay` (D17): send a stored request again, on behalf of the same
container, and store the exchange as a new transaction (`replay_of` = the original).

The replay is a connection like any other: the rules decide it (only ALLOW goes out; a
connection that would be held is refused rather than held, since nobody is waiting on the
other end), it is logged in request_logs, and it is dialled under the same guard. What is sent
is what was stored, so redacted header and query values go out as the literal `[REDACTED]`:
a replay never carries a secret, and a request that needed one fails upstream (usually 401).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import gevent

from greyproxy.capture.bodies import BodyTap
from greyproxy.capture.curl import SKIPPED_HEADERS, header_lines
from greyproxy.capture.har import WS_METHODS
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.proxy.mitm.upstream import upstream_ssl_context
from greyproxy.proxy.tunnel import DialError, dial
from greyproxy.store.models import HttpTransaction
from greyproxy.timeutil import utcnow

if TYPE_CHECKING:
    import socket

    from greyproxy.runtime import Runtime

REPLAY_TIMEOUT = 30.0  # the whole exchange: dial, TLS, request, response
MAX_RESPONSE_READ = 64 * 1024 * 1024  # read (and count) at most this much of the answer
READ_CHUNK = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Also dropped for a replay: we send the whole body at once, and decompressed.
_REPLAY_SKIPPED = SKIPPED_HEADERS | {"expect", "content-encoding"}


class ReplayInvalid(ValueError):
    """This transaction cannot be replayed (400)."""


class ReplayDenied(PermissionError):
    """The rules do not allow the destination now (403)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"replay blocked: {decision.reason}")
        self.reason = decision.reason


class ReplayFailed(OSError):
    """Upstream could not be reached or answered badly (502)."""


def _request_bytes(row: HttpTransaction) -> tuple[bytes, list[tuple[str, str]], bytes | None]:
    """(wire bytes, the header lines sent, body) for the stored request."""
    parts = urlsplit(row.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReplayInvalid(f"cannot replay a {parts.scheme or 'relative'} URL")
    if not 0 < (row.destination_port or 0) < 65536 or not row.destination_host:
        raise ReplayInvalid("the stored destination is not a host and port that can be dialled")
    if not _TOKEN.match(row.method):
        raise ReplayInvalid(f"cannot replay method {row.method!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n\x00"):
        raise ReplayInvalid("the stored URL has characters that cannot be sent")
    if row.request_body_truncated or (row.request_body is None and (row.request_body_size or 0) > 0):
        raise ReplayInvalid("the request body was not captured in full (binary or over 2 MiB), so it cannot be replayed")
    body = bytes(row.request_body) if row.request_body is not None else None

    headers = [
        (name, value)
        for name, value in header_lines(row.request_headers)
        if name.lower() not in _REPLAY_SKIPPED and _TOKEN.match(name) and not any(c in value for c in "\r\n\x00")
    ]
    if not any(name.lower() == "host" for name, _ in headers):
        headers.insert(0, ("Host", parts.netloc.rsplit("@", 1)[-1]))
    if body is not None or row.method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(body or b""))))
    headers.append(("Connection", "close"))
    head = f"{row.method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1", errors="replace") + (body or b""), headers, body


def _open(rt: Runtime, row: HttpTransaction, decision: Decision) -> socket.socket:
    # The same dial as live traffic: our resolver, the control-plane guard and the private-range
    # guard, which only the allowing rule itself can open.
    rule = decision.rule
    pattern = rule.destination_pattern if rule is not None and rule.action == "allow" else None
    try:
        sock = dial(row.destination_host, row.destination_port, rt.guard, resolver=rt.resolver, rule_pattern=pattern)
    except DialError as exc:
        raise ReplayFailed(f"{exc.reason}: {exc}") from None
    except (UnicodeError, ValueError) as exc:  # a stored name that is not a valid host name
        raise ReplayFailed(f"cannot dial {row.destination_host!r}: {exc}") from None
    if urlsplit(row.url).scheme == "https":
        try:
            ctx = upstream_ssl_context(rt.config.raw["mitm"]["extra_ca_bundle"])
            sock = ctx.wrap_socket(sock, server_hostname=urlsplit(row.url).hostname)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            sock.close()
            raise ReplayFailed(f"TLS handshake with {row.destination_host} failed: {exc}") from None
    return sock


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


def replay(rt: Runtime, row: HttpTransaction) -> HttpTransaction:
    if row.method in WS_METHODS:
        raise ReplayInvalid("a WebSocket frame cannot be replayed")
    wire, sent_headers, body = _request_bytes(row)
    host, port = row.destination_host, row.destination_port
    started = time.monotonic()
    decision = rt.policy.decide(
        ConnectionRequest(container=row.container_name, host=host, port=port,
                          control_plane=rt.guard.is_control_plane(host, port))
    )
    allowed = decision.verdict is Verdict.ALLOW
    rt.writer.log(
        container_name=row.container_name, destination_host=host, destination_port=port, method=row.method,
        result="allowed" if allowed else "blocked", rule_id=decision.rule_id, response_time_ms=0,
        reason=decision.reason, would=decision.would,
    )
    if not allowed:
        raise ReplayDenied(decision)
    if decision.rule_id is not None:
        rt.writer.used(decision.rule_id)

    sock = None
    try:
        with gevent.Timeout(REPLAY_TIMEOUT, ReplayFailed(f"no complete answer within {REPLAY_TIMEOUT:.0f} s")):
            sock = _open(rt, row, decision)
            status, response_headers, tap = _exchange(sock, wire, row.method)
    finally:
        if sock is not None:
            sock.close()

    request_tap = BodyTap(row.request_content_type, None)
    if body:
        request_tap.feed(body)
    req_body, req_size, req_cut = request_tap.result()
    resp_body, resp_size, resp_cut = tap.result()
    redactor = rt.redactor
    content_type = next((v for n, v in response_headers if n.lower() == "content-type"), None)
    # D31: what the replay stores is scrubbed like any capture (vault values, redacted request values).
    scrub = rt.scrubber.for_exchange(redactor.redacted_values(sent_headers, row.url))
    url, req_headers, resp_headers = redactor.url(row.url), redactor.headers(sent_headers), redactor.headers(response_headers)
    if scrub is not None:
        url, req_headers, resp_headers = scrub(url), scrub.headers(req_headers), scrub.headers(resp_headers)
        req_body, resp_body = scrub.data(req_body, req_cut), scrub.data(resp_body, resp_cut)
    new = HttpTransaction.create(
        timestamp=utcnow(),
        container_name=row.container_name,
        destination_host=host,
        destination_port=port,
        method=row.method,
        url=url,
        request_headers=json.dumps(req_headers),
        request_body=req_body,
        request_body_size=req_size,
        request_body_truncated=req_cut,
        request_content_type=row.request_content_type,
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
    )
    rt.bus.publish("transaction.new", transaction_to_json(new))
    return new
