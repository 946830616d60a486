"""One HTTP exchange pipeline for every path a request can take (docs/design.md, "One exchange
pipeline"): the plain absolute-URI proxy, plain HTTP inside a tunnel, and HTTP inside
intercepted TLS. Whatever the path, a request goes through the same steps, so a fix lands once:

  authority check (the request must name the admitted destination) → re-decision (tunnels:
  rules may have changed since the CONNECT) → middleware → credential substitution → send,
  re-framed → interim responses relayed as they come → middleware → relay, re-framed → record.

The caller has read and parsed the request head (proxy/httpwire.py); the pipeline answers it.
HTTP/2 streams take part through sockets that translate at the edges (proxy/mitm/h2wire.py),
so this is also every HTTP/2 exchange (docs/design.md, "HTTP/2").
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import gevent

from greyproxy.capture.bodies import DecodeError, decode, parse_encodings
from greyproxy.capture.recorder import Exchange
from greyproxy.capture.websocket import deflate_negotiated, relay_frames, rewrite_extension_offer
from greyproxy.credentials.reverse import ResponseScrubber
from greyproxy.policy.decide import ConnectionRequest, Verdict
from greyproxy.policy.patterns import canonical_host, is_ip_literal
from greyproxy.proxy.httpwire import (
    DISCARD,
    HOP_BY_HOP,
    BufferedSocket,
    Head,
    WireError,
    body_length,
    forward_message,
    head_bytes,
    read_final_response,
    read_whole_body,
    relay_body,
    response_framing,
    serialize_head,
    wants_close,
)

if TYPE_CHECKING:
    from greyproxy.capture.recorder import TransactionRecorder
    from greyproxy.proxy.gate import Admission, Gatekeeper
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.mwhooks import MiddlewareHooks
    from greyproxy.proxy.request_hold import RequestScreen
    from greyproxy.proxy.views import PolicyView

log = logging.getLogger("greyproxy.exchange")

UPSTREAM_TIMEOUT = 120.0
MAX_SCRUB_BODY = 16 * 1024 * 1024  # an encoded body that must be scrubbed is decoded whole, up to this
MAX_SCRUB_WHOLE = 1024 * 1024  # a plain body up to this is scrubbed whole and keeps a Content-Length
FRAMING = frozenset({"content-length", "transfer-encoding"})


def simple_response(code: int, reason: str, body: str = "", extra: list[tuple[str, str]] | None = None,
                    close: bool = True) -> bytes:
    payload = body.encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(payload))),
        ("Connection", "close" if close else "keep-alive"),
        ("Proxy-Agent", "greyproxy"),
    ] + (extra or [])
    return serialize_head(f"HTTP/1.1 {code} {reason}", headers) + payload


# A request head that did not arrive whole within limits.head_seconds (proxy/limits.py).
REQUEST_TIMEOUT = simple_response(408, "Request Timeout", "request head not complete in time\n",
                                  [("X-Greyproxy-Reason", "head_deadline")])

def bad_request(exc: WireError) -> bytes:
    reasons = {400: "Bad Request", 431: "Request Header Fields Too Large", 501: "Not Implemented",
               505: "HTTP Version Not Supported", 502: "Bad Gateway"}
    return simple_response(exc.status, reasons.get(exc.status, "Bad Request"), f"greyproxy: {exc}\n",
                           [("X-Greyproxy-Reason", "malformed_request")])


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' -> (host, port); ValueError if malformed."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"bad authority {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad authority {authority!r}")
        port_text = rest[1:] if rest else ""
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    elif ":" in authority:
        raise ValueError(f"bad authority {authority!r}")
    else:
        host, port_text = authority, ""
    if port_text:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise ValueError(f"bad port in {authority!r}")
        port = int(port_text)
    else:
        port = default_port
    if not host or not 0 < port < 65536 or any(c in host for c in "/\\@ \t"):
        raise ValueError(f"bad authority {authority!r}")
    return host, port


@dataclass(slots=True)
class Destination:
    """What the connection was admitted for, as requests must name it."""

    admission: Admission
    scheme: str  # "http" or "https"
    names: frozenset[str]  # canonical host names a request may carry (SNI name, or IP + its DNS name)
    in_tunnel: bool  # True: re-decide each request, forward the target as the client sent it


def destination_for(admission: Admission, scheme: str, server_name: str | None, in_tunnel: bool) -> Destination:
    names = {canonical_host(server_name or admission.host)}
    if is_ip_literal(admission.host) and server_name is None:
        names.add(admission.host)
        if admission.resolved_hostname:
            names.add(canonical_host(admission.resolved_hostname))
    return Destination(admission, scheme, frozenset(names), in_tunnel)


def authority_problem(request: Head, dest: Destination) -> tuple[str, str] | None:
    """(reason, detail) when the request does not name the admitted destination, else None.
    Duplicate or missing Host (HTTP/1.1) is malformed; another name is `host_mismatch`."""
    port = dest.admission.port
    default_port = 443 if dest.scheme == "https" else 80
    hosts = request.get_all("host")
    if len(hosts) > 1:
        return "malformed_request", "more than one Host header"
    if not hosts and request.start[2] == "HTTP/1.1":
        return "malformed_request", "HTTP/1.1 request without a Host header"
    target = request.start[1]
    # Inside a tunnel another name is domain fronting against the name the tunnel was admitted
    # for (`sni_mismatch`, as earlier versions logged it); on the plain proxy it is the Host.
    mismatch = "sni_mismatch" if dest.in_tunnel else "host_mismatch"
    authorities = [hosts[0]] if hosts else []
    if not target.startswith("/") and target != "*":
        url = urlsplit(target)
        if url.scheme.lower() not in ("http", "https") or not url.netloc:
            return "malformed_request", "request target is neither a path nor an absolute http(s) URI"
        if dest.in_tunnel and url.scheme.lower() != dest.scheme:
            return mismatch, f"absolute target {url.scheme}:// inside a {dest.scheme} connection"
        authorities.append(url.netloc.rpartition("@")[2])
    for authority in authorities:
        try:
            host, given_port = split_host_port(authority, port)
        except ValueError as exc:
            return "malformed_request", str(exc)
        if canonical_host(host) not in dest.names:
            return mismatch, f"request names {host!r}, the connection was allowed for {sorted(dest.names)[0]!r}"
        if given_port != port and not (given_port == default_port and ":" not in authority.rpartition("]")[2]):
            return mismatch, f"request names port {given_port}, the connection was allowed for port {port}"
    return None


class ExchangePipeline:
    def __init__(self, gate: Gatekeeper, policy: PolicyView, guard: ControlPlaneGuard, screen: RequestScreen,
                 hooks: MiddlewareHooks, recorder: TransactionRecorder) -> None:
        self.gate = gate
        self.policy = policy
        self.guard = guard
        self.screen = screen  # request-level rules (docs/request-rules.md)
        self.hooks = hooks  # the middlewares' hooks (proxy/mwhooks.py)
        self.recorder = recorder

    # -- refusals ---------------------------------------------------------------------------
    def refuse(self, client: socket.socket, admission: Admission, reason: str, detail: str = "") -> None:
        """Log a refused request and tell the client why (403, or 400 for a malformed one)."""
        self.gate.refused(admission, reason)
        if reason == "malformed_request":
            client.sendall(simple_response(400, "Bad Request", f"greyproxy: {detail}\n",
                                           [("X-Greyproxy-Reason", reason)]))
            return
        text = self.gate.blocked_text(admission, reason)
        if detail:
            text += f"Detail: {detail}\n"
        client.sendall(simple_response(403, "Forbidden", text, [("X-Greyproxy-Reason", reason)]))

    def check(self, request: Head, dest: Destination) -> tuple[str, str] | None:
        """Why this request may not go on, or None: the authority it names, then (inside a
        tunnel) the rules as they are now."""
        problem = authority_problem(request, dest)
        if problem is not None or not dest.in_tunnel:
            return problem
        a = dest.admission
        decision = self.policy.decide(ConnectionRequest(
            container=a.container, host=a.host, port=a.port, resolved_hostname=a.resolved_hostname,
            control_plane=self.guard.is_control_plane(a.host, a.port),
        ))
        if decision.verdict is Verdict.DENY:
            return decision.reason, ""
        return None

    # -- one exchange -------------------------------------------------------------------------
    def run(self, client: BufferedSocket, upstream: BufferedSocket, request: Head, dest: Destination) -> bool:
        """Forward one checked request and its response; True if both connections can carry
        another. The caller has run `check` (and refused) before dialling or reusing upstream."""
        a = dest.admission
        method, target, version = request.start
        if dest.in_tunnel:
            path = target
            default_port = 443 if dest.scheme == "https" else 80
            host = sorted(dest.names)[0] if len(dest.names) == 1 else (a.resolved_hostname or a.host)
            authority = host if a.port == default_port else f"{host}:{a.port}"
            url = target if not target.startswith("/") else f"{dest.scheme}://{authority}{target}"
        else:
            parts = urlsplit(target)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            url = target
        screened = self.screen.screen(client, request, dest, url)  # request-level rules (docs/request-rules.md)
        if screened is not None:
            return screened  # denied or held and refused: answered already
        rule_id = a.decision.rule.id if a.decision.rule else None
        ex = Exchange(a.container, a.host, a.port, url, request, rule_id)
        websocket = ("upgrade" in request.tokens("connection")
                     and (request.get("upgrade") or "").strip().lower() == "websocket")
        if dest.in_tunnel:
            headers = [(k, v) for k, v in request.headers if k.lower() not in ("proxy-authorization", "proxy-connection")]
        else:
            headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
        if not any(k.lower() == "host" for k, _ in headers):  # HTTP/1.0 without Host: name the admitted one
            headers.insert(0, ("Host", urlsplit(url).netloc))
        if websocket:
            request.headers = headers
            rewrite_extension_offer(request)  # replaces request.headers
            headers = request.headers
            if not dest.in_tunnel:
                headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
        else:
            # Only WebSocket may switch protocols: anything else after a 101 would be unchecked.
            headers = [(k, v) for k, v in headers if k.lower() != "upgrade"
                       and not (k.lower() == "connection" and "upgrade" in v.lower())]
        step = None
        if not websocket:
            step = self.hooks.before_request(ex, client, request, headers, path, tls=dest.scheme == "https")
            if step is not None and step.refusal is not None:
                client.sock.sendall(step.refusal)
                return False
            if step is not None and step.headers is not None:
                headers = step.headers
        # What is stored is the request as the client sent it (placeholders); only what goes
        # upstream carries the real secrets.
        headers, path = self.gate.substitute(ex, headers, path, a.host)
        if ex.reverse:  # ask for a body we can scrub as it streams (an encoded one is decoded whole)
            headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"] + [("Accept-Encoding", "identity")]
        head_out = serialize_head(f"{method} {path} {version if dest.in_tunnel else 'HTTP/1.1'}", headers)
        ex.request_tap = ex.tap_for(request)
        upstream.sock.settimeout(UPSTREAM_TIMEOUT)
        client.sock.settimeout(UPSTREAM_TIMEOUT)
        sender: gevent.Greenlet | None = None
        if step is not None and step.body is not None:  # a middleware replaced the body
            upstream.sock.sendall(head_out + step.body)
            ex.request_tap.feed(step.body)
        elif (request.get("expect") or "").strip().lower() == "100-continue":
            # The client waits for 100 Continue before it sends the body: the body goes up in
            # its own greenlet while interim answers come down, so nobody waits for a timeout.
            upstream.sock.sendall(head_out)
            sender = gevent.spawn(relay_body, client, upstream.sock, request, tap=ex.request_tap.feed)
        else:
            upstream.sock.sendall(head_out)
            relay_body(client, upstream.sock, request, tap=ex.request_tap.feed)

        try:
            response = read_final_response(upstream, client.sock)
        finally:
            body_sent = sender is None or self._finish(sender)
        ex.response = response
        code = int(response.start[1])
        if code == 101:
            if not websocket:
                raise WireError("upstream switched protocols without being asked", 502)
            client.sock.sendall(head_bytes(response))
            self.recorder.record(ex)
            self._websocket(ex, client, upstream, deflate_negotiated(response))
            return False
        no_body, framed = response_framing(method, response)
        keep = (framed and body_sent and not wants_close(request)
                and "close" not in response.tokens("connection"))
        scrub = ResponseScrubber(ex.reverse) if ex.reverse else None
        if scrub is not None:  # middlewares, like the client, see placeholders, never secrets
            response = ex.response = Head(response.start, [(k, scrub.text(v)) for k, v in response.headers])
        changed = self.hooks.after_response(ex, upstream, response, no_body, framed,
                                            scrub=(lambda b: scrub.feed(b) + scrub.flush()) if scrub else None)
        if changed is not None:
            ex.response = Head([response.start[0], str(changed.status_code), changed.reason], changed.headers)
            keep = keep and not changed.close
        out = ex.response
        scrubbed: bytes | None = None  # a body read whole and scrubbed, sent with its new length
        streaming = False  # a body scrubbed as it streams, sent as chunks (or until close)
        if scrub is not None:
            # The secrets this request carried never come back (docs/design.md): header values
            # scrubbed, the body too, and its framing fixed since its length may change.
            out = ex.response = Head(out.start, [(k, scrub.text(v)) for k, v in out.headers])  # a middleware's too
            if not no_body and (changed is None or changed.body is None):
                encoded = [e for e in parse_encodings(response.get("content-encoding")) if e != "identity"]
                length = body_length(response)
                if encoded:  # the origin ignored our Accept-Encoding: identity; decode it whole
                    scrubbed = self._decoded_body(upstream, response, encoded, framed)
                elif length is not None and length <= MAX_SCRUB_WHOLE:
                    scrubbed = upstream.read_exact(length)
                else:
                    streaming = True
                drop = FRAMING | ({"content-encoding"} if encoded else set())
                out = Head(out.start, [(k, v) for k, v in out.headers if k.lower() not in drop])
                if scrubbed is not None:
                    scrubbed = scrub.feed(scrubbed) + scrub.flush()
                    out.headers.append(("Content-Length", str(len(scrubbed))))
                elif version == "HTTP/1.1":
                    out.headers.append(("Transfer-Encoding", "chunked"))
                else:
                    keep = False
        if not dest.in_tunnel:
            out = Head(out.start, [(k, v) for k, v in out.headers if k.lower() not in HOP_BY_HOP])
            out.headers.append(("Connection", "keep-alive" if keep else "close"))
        elif scrub is not None and not keep:
            out.headers = [(k, v) for k, v in out.headers if k.lower() != "connection"] + [("Connection", "close")]
        ex.response_tap = ex.tap_for(out)
        if changed is not None and changed.body is not None:
            body = changed.body if scrub is None else scrub.feed(changed.body) + scrub.flush()
            client.sock.sendall(head_bytes(out) + body)
            ex.response_tap.feed(body)
        elif scrubbed is not None:
            client.sock.sendall(head_bytes(out) + scrubbed)
            ex.response_tap.feed(scrubbed)
        elif streaming:
            self._send_scrubbed(upstream, client, out, response, framed, scrub, ex, chunked=version == "HTTP/1.1")
        else:
            forward_message(upstream, client.sock, out, no_body=no_body, until_close=not framed,
                            tap=ex.response_tap.feed)
        self.recorder.record(ex)
        return keep

    @staticmethod
    def _finish(sender: gevent.Greenlet) -> bool:
        """Whether an Expect body went up whole. A final answer before the body (417, 401, …)
        leaves it unsent: the client may or may not send it now, so the connection ends."""
        sender.join(timeout=1.0)
        if not sender.ready():
            sender.kill(block=False)
            return False
        if sender.exception is not None:
            raise sender.exception
        return True

    @staticmethod
    def _decoded_body(upstream: BufferedSocket, response: Head, encodings: list[str], framed: bool) -> bytes:
        """An encoded body read whole and decoded, so it can be scrubbed (bounded)."""
        whole = read_whole_body(upstream, response, MAX_SCRUB_BODY, until_close=not framed)
        if whole is None:
            raise WireError("an encoded response to a request that carried a secret is too large to check", 502)
        try:
            body, cut = decode(whole.payload, encodings, MAX_SCRUB_BODY)
        except DecodeError as exc:
            raise WireError(f"cannot decode a response that must be checked for secrets: {exc}", 502) from None
        if cut:
            raise WireError("a decoded response to a request that carried a secret is too large to check", 502)
        return body

    @staticmethod
    def _send_scrubbed(upstream: BufferedSocket, client: BufferedSocket, out: Head, response: Head, framed: bool,
                       scrub: ResponseScrubber, ex: Exchange, chunked: bool) -> None:
        sock = client.sock

        def emit(data: bytes) -> None:
            if data:
                sock.sendall(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                ex.response_tap.feed(data)

        sock.sendall(head_bytes(out))
        relay_body(upstream, DISCARD, response, until_close=not framed, tap=lambda c: emit(scrub.feed(c)))  # type: ignore[arg-type]
        emit(scrub.flush())
        if chunked:
            sock.sendall(b"0\r\n\r\n")

    def _websocket(self, ex: Exchange, client: BufferedSocket, upstream: BufferedSocket, deflate: bool) -> None:
        client.sock.settimeout(None)
        upstream.sock.settimeout(None)

        scrubber = ResponseScrubber(ex.reverse) if ex.reverse else None
        scrub = (lambda data: scrubber.feed(data) + scrubber.flush()) if scrubber is not None else None

        def pump(src: BufferedSocket, dst: BufferedSocket, from_client: bool) -> None:
            try:
                relay_frames(src, dst.sock, deflate, lambda f: self.recorder.frame(ex, f, from_client),
                             scrub=None if from_client else scrub)
            except (OSError, WireError):
                pass

        down = gevent.spawn(pump, upstream, client, False)
        pump(client, upstream, True)
        down.join(timeout=UPSTREAM_TIMEOUT)
        down.kill(block=False)
