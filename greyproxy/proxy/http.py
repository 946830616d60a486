"""HTTP proxy listener: CONNECT tunnels and absolute-URI requests with keep-alive.

A refusal is a 403 with the reason; a refused CONNECT that could have been intercepted is
told inside the tunnel instead (proxy/mitm/refusal.py, docs/clients.md)."""

from __future__ import annotations

import base64
import logging
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from greyproxy.proxy import challenge
from greyproxy.proxy import limits as lim
from greyproxy.proxy.exchange import (
    REQUEST_TIMEOUT,
    ExchangePipeline,
    bad_request,
    destination_for,
    simple_response,
    split_host_port,
)
from greyproxy.proxy.gate import Admission, Gatekeeper
from greyproxy.proxy.httpwire import BufferedSocket, Head, WireError, parse_head, send_all
from greyproxy.proxy.limits import DeadlineExceeded, Limits
from greyproxy.proxy.mitm import refusal
from greyproxy.proxy.tunnel import DialError, peer_ip, set_nodelay

if TYPE_CHECKING:
    from greyproxy.ca.state import MitmState

log = logging.getLogger("greyproxy.http")

CONNECTION_LIMIT = simple_response(503, "Service Unavailable", "too many connections, retry later\n",
                                   [("X-Greyproxy-Reason", "connection_limit")])


CONNECTED = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: greyproxy\r\n\r\n"


def refuse_connection(client: socket.socket) -> None:
    """Over a connection cap (proxy/limits.py): 503 at once, then close."""
    client.sendall(CONNECTION_LIMIT)


def proxy_credentials(head: Head) -> tuple[str | None, str | None]:
    value = head.get("proxy-authorization")
    if not value:
        return None, None
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except ValueError:  # bad base64, non-ASCII text, not UTF-8: no usable credentials (a 407)
        return None, None
    return user, password


class HttpProxyHandler:
    def __init__(self, gate: Gatekeeper, pipeline: ExchangePipeline, mitm: MitmState, limits: Limits) -> None:
        self.gate = gate
        self.pipeline = pipeline
        self.mitm = mitm  # whether a refused CONNECT can be answered inside the tunnel
        self.limits = limits

    def handle(self, client: socket.socket, address: tuple) -> None:
        set_nodelay(client)
        self.limits.apply_wire()
        conn = BufferedSocket(client)
        upstreams: dict[tuple[str, int], BufferedSocket] = {}
        try:
            while True:
                try:
                    raw = self.limits.read_head(conn)
                except TimeoutError:  # silent for idle_seconds before a request
                    return
                if raw is None:
                    return
                head = parse_head(raw, is_request=True)
                try:
                    if head.start[0] == "CONNECT":
                        self._connect(conn, head, address)
                        return
                    if not self._forward(conn, head, address, upstreams):
                        return
                except challenge.ChallengeSent as sent:  # after a 407 the retry with credentials may come here
                    if not sent.keep:
                        return
        except DeadlineExceeded:
            self.limits.hit(lim.HEAD_DEADLINE, address[0], "http proxy: request head not complete in time")
            try:
                client.settimeout(lim.REFUSE_SECONDS)
                client.sendall(REQUEST_TIMEOUT)
            except OSError:
                pass
        except WireError as exc:
            if exc.status == 431:
                self.limits.hit(lim.HEADER_SIZE, address[0], f"http proxy: {exc}")
            try:
                client.sendall(bad_request(exc))
            except OSError:
                pass
            log.debug("http proxy %s: %s", address[0], exc)
        except OSError as exc:
            log.debug("http proxy %s: %s", address[0], exc)
        except Exception as exc:  # one connection's surprise closes it, and only it
            log.warning("http proxy %s: connection closed after an unexpected %s: %s", address[0],
                        type(exc).__name__, exc)
            log.debug("http proxy %s: unexpected error", address[0], exc_info=True)
        finally:
            for up in upstreams.values():
                up.sock.close()
            client.close()

    def _admit(self, conn: BufferedSocket, head: Head, address: tuple, host: str, port: int, method: str) -> Admission:
        username, password = proxy_credentials(head)
        if username is None and self.gate.challenges(address[0]):  # ask who this is (407, docs/configuration.md)
            answer, keep = challenge.response(head, conn.sock.getsockname(), bool(conn.buf))
            conn.sock.sendall(answer)
            log.debug("http proxy %s: no proxy credentials for %s:%s, answered 407", address[0], host, port)
            raise challenge.ChallengeSent(keep)
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

    def _refuse_tunnel(self, conn: BufferedSocket, admission: Admission, reason: str | None = None) -> None:
        """A refused CONNECT: where the tunnel could have been intercepted, accept it and say
        the 403 inside (TLS, or clear HTTP), where the client shows it (proxy/mitm/refusal.py);
        otherwise the 403 answers the CONNECT itself."""
        reason = reason or admission.reason
        mitm = self.mitm
        if not refusal.in_band(mitm, admission.host, reason, admission.container):
            self._refuse(conn, admission, reason)
            return
        conn.sock.sendall(b"HTTP/1.1 200 Connection established\r\nProxy-Agent: greyproxy\r\n\r\n")
        told = refusal.answer(conn.sock, conn.take_buffered(), mitm.leaves, admission.host,
                              self.gate.blocked_text(admission, reason), reason, admission.container)
        log.debug("refused CONNECT %s:%s (%s), answered in the tunnel: %s", admission.host, admission.port,
                  reason, told)

    def _dial(self, conn: BufferedSocket, admission: Admission, tunnel: bool = False) -> socket.socket | None:
        try:
            return self.gate.dial(admission)
        except DialError as exc:
            if exc.reason in ("control_plane", "private_range") and tunnel:
                self._refuse_tunnel(conn, admission, exc.reason)
            elif exc.reason in ("control_plane", "private_range"):  # guard refusals are 403s
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
            self._refuse_tunnel(conn, admission)
            return
        upstream = self._dial(conn, admission, tunnel=True)
        if upstream is None:
            return
        send_all(conn.sock, CONNECTED)
        # Bytes the client sent right behind the CONNECT head go through the same inspection.
        self.gate.tunnel(admission, conn.sock, upstream, early=conn.take_buffered())

    def _forward(
        self, conn: BufferedSocket, head: Head, address: tuple, upstreams: dict[tuple[str, int], BufferedSocket]
    ) -> bool:
        """Forward one absolute-URI request; True if the client connection stays open."""
        try:
            url = urlsplit(head.start[1])
        except ValueError as exc:  # 'http://[::1/', 'http://[zz]:80/'
            conn.sock.sendall(simple_response(400, "Bad Request", f"{exc}\n"))
            return False
        if url.scheme.lower() != "http" or not url.netloc:
            conn.sock.sendall(simple_response(400, "Bad Request", "absolute http:// URI or CONNECT required\n"))
            return False
        try:
            host, port = split_host_port(url.netloc.rpartition("@")[2], 80)
        except ValueError as exc:
            conn.sock.sendall(simple_response(400, "Bad Request", f"{exc}\n"))
            return False
        admission = self._admit(conn, head, address, host, port, "HTTP")
        wait = self.limits.rates.take(admission.container)
        if wait:  # over this container's request rate (limits.requests_per_second)
            self.limits.hit(lim.RATE, admission.container, f"http proxy request to {host}:{port}")
            retry = max(1, int(wait + 0.999))
            conn.sock.sendall(simple_response(429, "Too Many Requests", "request rate limit, retry later\n",
                                              [("Retry-After", str(retry)), ("X-Greyproxy-Reason", "rate_limited")]))
            return False
        if not admission.allowed:
            self._refuse(conn, admission)
            return False
        dest = destination_for(admission, "http", None, in_tunnel=False)
        problem = self.pipeline.check(head, dest)
        if problem is not None:  # Host names another server than the target (before any dial)
            self.pipeline.refuse(conn.sock, admission, *problem)
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
        try:
            keep = self.pipeline.run(conn, upstream, head, dest)
        except BaseException:
            upstreams.pop(key).sock.close()
            raise
        if not keep:
            upstreams.pop(key).sock.close()
        return keep
