"""HTTP proxy listener: CONNECT tunnels and absolute-URI requests with keep-alive (§1.3)."""

from __future__ import annotations

import base64
import binascii
import logging
import socket
from urllib.parse import urlsplit

from greyproxy.capture.recorder import Exchange
from greyproxy.proxy.gate import Admission, Gatekeeper
from greyproxy.proxy.httpwire import (
    HOP_BY_HOP,
    BufferedSocket,
    Head,
    WireError,
    parse_head,
    read_final_response,
    relay_body,
    response_framing,
    serialize_head,
    wants_close,
)
from greyproxy.proxy.mwhooks import MiddlewareHooks
from greyproxy.proxy.tunnel import DialError, peer_ip, set_nodelay

log = logging.getLogger("greyproxy.http")

IDLE_TIMEOUT = 60.0  # waiting for the next request on a kept-alive client connection
HEAD_TIMEOUT = 30.0
UPSTREAM_TIMEOUT = 120.0


def proxy_credentials(head: Head) -> tuple[str | None, str | None]:
    value = head.get("proxy-authorization")
    if not value:
        return None, None
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' -> (host, port); ValueError if malformed."""
    if authority.startswith("["):
        end = authority.index("]")
        host, rest = authority[1:end], authority[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
        port = int(port_text)
    else:
        host, port = authority, default_port
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad authority {authority!r}")
    return host, port


def simple_response(code: int, reason: str, body: str = "", extra: list[tuple[str, str]] | None = None) -> bytes:
    payload = body.encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(payload))),
        ("Connection", "close"),
        ("Proxy-Agent", "greyproxy"),
    ] + (extra or [])
    return serialize_head(f"HTTP/1.1 {code} {reason}", headers) + payload


class HttpProxyHandler:
    def __init__(self, gate: Gatekeeper) -> None:
        self.gate = gate
        self.hooks = MiddlewareHooks(gate.rt)

    def handle(self, client: socket.socket, address: tuple) -> None:
        set_nodelay(client)
        conn = BufferedSocket(client)
        upstreams: dict[tuple[str, int], BufferedSocket] = {}
        try:
            first = True
            while True:
                client.settimeout(HEAD_TIMEOUT if first else IDLE_TIMEOUT)
                raw = conn.read_head()
                if raw is None:
                    return
                first = False
                try:
                    head = parse_head(raw, is_request=True)
                except WireError as exc:
                    client.sendall(simple_response(400, "Bad Request", f"{exc}\n"))
                    return
                if head.start[0].upper() == "CONNECT":
                    self._connect(conn, head, address)
                    return
                if not self._forward(conn, head, address, upstreams):
                    return
        except (OSError, WireError) as exc:
            log.debug("http proxy %s: %s", address[0], exc)
        finally:
            for up in upstreams.values():
                up.sock.close()
            client.close()

    def _admit(self, conn: BufferedSocket, head: Head, address: tuple, host: str, port: int, method: str) -> Admission:
        username, password = proxy_credentials(head)
        conn.sock.settimeout(None)
        return self.gate.admit(
            username=username, password=password, source_ip=address[0], host=host, port=port, method=method,
            client=conn.sock,
        )

    def _refuse(self, conn: BufferedSocket, admission: Admission, reason: str | None = None) -> None:
        reason = reason or admission.reason
        conn.sock.sendall(
            simple_response(403, "Forbidden", self.gate.blocked_text(admission, reason), [("X-Greyproxy-Reason", reason)])
        )

    def _dial(self, conn: BufferedSocket, admission: Admission) -> socket.socket | None:
        try:
            return self.gate.dial(admission)
        except DialError as exc:
            if exc.reason in ("control_plane", "private_range"):  # guard refusals are 403s (D24)
                self._refuse(conn, admission, exc.reason)
            else:
                conn.sock.sendall(
                    simple_response(503, "Service Unavailable", f"{exc}\n", [("X-Greyproxy-Reason", exc.reason)])
                )
            return None

    def _connect(self, conn: BufferedSocket, head: Head, address: tuple) -> None:
        try:
            host, port = split_host_port(head.start[1], 443)
        except ValueError as exc:
            conn.sock.sendall(simple_response(400, "Bad Request", f"{exc}\n"))
            return
        admission = self._admit(conn, head, address, host, port, "HTTP")
        if not admission.allowed:
            self._refuse(conn, admission)
            return
        upstream = self._dial(conn, admission)
        if upstream is None:
            return
        conn.sock.sendall(b"HTTP/1.1 200 Connection established\r\nProxy-Agent: greyproxy\r\n\r\n")
        # Bytes the client sent right behind the CONNECT head go through the same inspection.
        self.gate.tunnel(admission, conn.sock, upstream, early=conn.take_buffered())

    def _forward(
        self, conn: BufferedSocket, head: Head, address: tuple, upstreams: dict[tuple[str, int], BufferedSocket]
    ) -> bool:
        """Forward one absolute-URI request; True if the client connection stays open."""
        method, target, version = head.start
        url = urlsplit(target)
        if url.scheme.lower() != "http" or not url.netloc:
            conn.sock.sendall(simple_response(400, "Bad Request", "absolute http:// URI or CONNECT required\n"))
            return False
        try:
            host, port = split_host_port(url.netloc.rpartition("@")[2], 80)
        except ValueError as exc:
            conn.sock.sendall(simple_response(400, "Bad Request", f"{exc}\n"))
            return False
        admission = self._admit(conn, head, address, host, port, "HTTP")
        if not admission.allowed:
            self._refuse(conn, admission)
            return False
        key = (admission.host, port)
        upstream = upstreams.get(key)
        if upstream is None:
            sock = self._dial(conn, admission)
            if sock is None:
                return False
            upstream = upstreams[key] = BufferedSocket(sock)
        else:
            self.gate.admitted(admission, peer_ip(upstream.sock))  # kept-alive upstream: no new dial
        upstream.sock.settimeout(UPSTREAM_TIMEOUT)
        conn.sock.settimeout(UPSTREAM_TIMEOUT)

        upgrade = "upgrade" in head.tokens("connection")
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        headers = [(k, v) for k, v in head.headers if k.lower() not in HOP_BY_HOP]
        if upgrade:
            headers += [("Connection", "Upgrade"), ("Upgrade", head.get("upgrade") or "")]
        rule = admission.decision.rule
        exchange = Exchange(admission.container, admission.host, port, target, head, rule.id if rule else None)
        step = None if upgrade else self.hooks.before_request(exchange, conn, head, headers, path, tls=False)
        if step is not None and step.refusal is not None:
            conn.sock.sendall(step.refusal)
            return False
        headers = step.headers if step is not None and step.headers is not None else headers
        headers, path = self.gate.substitute(exchange, headers, path, admission.host)
        head_out = serialize_head(f"{method} {path} HTTP/1.1", headers)
        exchange.request_tap = exchange.tap_for(head)
        if step is not None and step.body is not None:  # a middleware replaced the body
            upstream.sock.sendall(head_out + step.body)
            exchange.request_tap.feed(step.body)
        else:
            upstream.sock.sendall(head_out)
            relay_body(conn, upstream.sock, head, tap=exchange.request_tap.feed)

        resp_raw, resp = read_final_response(upstream, conn.sock)
        code = int(resp.start[1])
        client_close = wants_close(head)
        no_body, framed = response_framing(method, resp)
        upstream_close = "close" in resp.tokens("connection") or not framed
        if code == 101 and upgrade:
            conn.sock.sendall(resp_raw)
            self._splice(conn, upstream, admission)
            upstreams.pop(key, None)
            return False
        keep = not client_close and framed
        exchange.response = resp
        changed = self.hooks.after_response(exchange, upstream, resp, no_body, framed)
        if changed is not None:
            exchange.response = Head([resp.start[0], str(changed.status_code), changed.reason], changed.headers)
            keep = keep and not changed.close
            upstream_close = upstream_close or changed.close
        out_headers = [(k, v) for k, v in exchange.response.headers if k.lower() not in HOP_BY_HOP]
        out_headers.append(("Connection", "keep-alive" if keep else "close"))
        out_head = serialize_head(" ".join(exchange.response.start).rstrip(), out_headers)
        exchange.response_tap = exchange.tap_for(exchange.response)
        if changed is not None and changed.body is not None:
            conn.sock.sendall(out_head + changed.body)
            exchange.response_tap.feed(changed.body)
        else:
            conn.sock.sendall(out_head)
            if not no_body:
                relay_body(upstream, conn.sock, resp, until_close=not framed, tap=exchange.response_tap.feed)
        self.gate.rt.recorder.record(exchange)
        if upstream_close:
            upstreams.pop(key).sock.close()
        return keep

    def _splice(self, conn: BufferedSocket, upstream: BufferedSocket, admission: Admission) -> None:
        """After a 101 upgrade the connection is a plain byte tunnel."""
        pending_up, pending_down = conn.take_buffered(), upstream.take_buffered()
        if pending_up:
            upstream.sock.sendall(pending_up)
        if pending_down:
            conn.sock.sendall(pending_down)
        self.gate.tunnel(admission, conn.sock, upstream.sock, sniff=False)


