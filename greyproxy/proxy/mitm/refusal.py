"""Telling a refused tunnel client why, in the protocol it speaks (docs/clients.md).

A refusal of an HTTP CONNECT or a SOCKS5 request can only be said as a status (403 on CONNECT,
reply 0x02), which clients print as "tunnel failed" or "(97)". Where the connection could have
been intercepted (interception on, a CA loaded, the host not bypassed) the tunnel is accepted
instead and the client's first bytes decide what it is told:

- a TLS ClientHello: the handshake completes with a leaf for the requested name, and the first
  request (HTTP/1.1, or HTTP/2 when the client negotiated it) is answered 403 with the plain
  proxy's text and `X-Greyproxy-Reason`;
- an HTTP request: the same 403, in clear;
- anything else, or nothing within FIRST_BYTES_SECONDS: closed (nothing it would show).

No upstream connection exists: nothing reaches the destination. The whole answer is bounded
by REFUSAL_SECONDS, every read by the socket timeout, and what is read by MAX_READ; new leaves
signed for refusals by a budget per container and in total (over it: the tunnel's own answer).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import h2.config
import h2.connection
import h2.events
import h2.exceptions

from greyproxy.config import LimitsConfig
from greyproxy.policy.patterns import is_ip_literal
from greyproxy.proxy.exchange import simple_response
from greyproxy.proxy.limits import RateLimiter
from greyproxy.proxy.mitm.intercept import SNIFF_BYTES, classify

if TYPE_CHECKING:
    from greyproxy.ca.leaf import LeafCache
    from greyproxy.ca.state import MitmState

log = logging.getLogger("greyproxy.refusal")

REFUSAL_SECONDS = 15.0  # first bytes, handshake and request head, all together
FIRST_BYTES_SECONDS = 5.0  # a client that says nothing (a server-speaks-first protocol) is closed
READ_SECONDS = 5.0  # any single read
MAX_READ = 256 * 1024  # bytes read from the client in all: a request head, never a body
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Refusals that are not about the destination: the client left, the proxy is stopping, or the
# name was unusable (no leaf could carry it). Those keep the listener's own answer.
NOT_TOLD_IN_BAND = frozenset({"client_gone", "shutting_down", "bad_destination"})


# A refusal for a name without a ready leaf costs a signature and a new TLS context (tens of ms
# on a busy machine), and a hostile agent picks the names: new leaves for refusals are budgeted
# per container and in total; over the budget the refusal keeps the tunnel's own answer.
MINTS_PER_CONTAINER = LimitsConfig(requests_per_second=2.0, requests_burst=20)
MINTS_TOTAL = LimitsConfig(requests_per_second=10.0, requests_burst=50)
_per_container = RateLimiter(lambda: MINTS_PER_CONTAINER)
_total = RateLimiter(lambda: MINTS_TOTAL)


def in_band(mitm: MitmState, host: str, reason: str, container: str) -> bool:
    """Whether a refused tunnel to `host` is accepted and answered inside (TLS or clear)."""
    leaves = mitm.leaves
    if reason in NOT_TOLD_IN_BAND or not mitm.enabled or leaves is None or mitm.is_bypassed(host):
        return False
    return leaves.cached(host) or _spend(container)


def _spend(container: str) -> bool:
    return _per_container.take(container) == 0.0 and _total.take("*") == 0.0


def leaf_name(requested: str, sni: str | None) -> str:
    """The name the leaf is for: the requested host; for a raw IP the name the client asked
    its TLS library for (it resolved the name itself), so the answer is readable."""
    if sni and is_ip_literal(requested):
        return sni
    return requested


class _TLSObject(ssl.SSLObject):
    def _sslsock(self) -> _TLSObject:
        """gevent's SSLContext (after monkey-patching) hands callbacks `conn._sslsock()`, which
        it expects on its own socket wrapper; for an SSLObject that is the object itself."""
        return self


class _Done(Exception):
    """The client closed, or sent more than MAX_READ."""


class _Client:
    """The client socket with a read budget."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.read_total = 0

    def recv(self) -> bytes:
        data = self.sock.recv(16384)
        self.read_total += len(data)
        if not data or self.read_total > MAX_READ:
            raise _Done()
        return data


def answer(client: socket.socket, early: bytes, leaves: LeafCache | None, host: str, text: str,
           reason: str, container: str = "") -> str:
    """Answer one refused tunnel whose client was told the tunnel is up; `early`: bytes already
    read behind the request. Returns what was answered ('tls', 'h2', 'http', 'other',
    'silent', 'failed'), for the log. Always closes the client."""
    peer = _Client(client)
    outcome = "failed"
    try:
        with gevent.Timeout(REFUSAL_SECONDS):
            client.settimeout(READ_SECONDS)
            first, outcome = _first_bytes(peer, early)
            if outcome == "http":
                _read_head(first, peer.recv)
                client.sendall(_response(text, reason))
            elif outcome == "tls" and leaves is not None:
                outcome = _answer_tls(peer, first, leaves, host, text, reason, container)
            elif outcome == "tls":
                outcome = "other"  # TLS without a CA to answer it (SOCKS5 on port 80)
            if outcome in ("http", "tls", "h2"):
                _close_gently(client)
    except (gevent.Timeout, _Done, OSError, ssl.SSLError, ValueError, h2.exceptions.H2Error) as exc:
        log.debug("refusal answer to %s ended: %s", host, exc or type(exc).__name__)
        if outcome not in ("other", "silent"):
            outcome = "failed"
    finally:
        client.close()
    return outcome


def _response(text: str, reason: str) -> bytes:
    return simple_response(403, "Forbidden", text, [("X-Greyproxy-Reason", reason)])


def _first_bytes(peer: _Client, early: bytes) -> tuple[bytes, str]:
    data = early[:SNIFF_BYTES]
    for _ in range(64):  # bounded: a client dribbling its first line is closed, not waited for
        kind = classify(data)
        if kind is not None:
            return data, kind
        try:
            peer.sock.settimeout(FIRST_BYTES_SECONDS if not data else READ_SECONDS)
            data += peer.recv()
        except TimeoutError:
            return data, "silent"
        finally:
            peer.sock.settimeout(READ_SECONDS)
    return data, "other"


def _read_head(data: bytes, more: Callable[[], bytes]) -> None:
    """Read until the request head is complete (its body, if any, is never read)."""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        data += more()


def _answer_tls(peer: _Client, first: bytes, leaves: LeafCache, host: str, text: str, reason: str,
                container: str) -> str:
    """A TLS server over memory buffers (the first bytes were already read off the socket)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def pick_leaf(tls_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        name = leaf_name(host, server_name)
        if name != host and not leaves.cached(name) and not _spend(container):
            name = host  # a name the client picked costs from the same budget
        try:
            tls_obj.context = leaves.context_for(name)
        except ValueError:  # a name no certificate can carry: the requested host's leaf
            tls_obj.context = leaves.context_for(host)

    ctx.sni_callback = pick_leaf
    ctx.sslobject_class = _TLSObject
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(first)

    def flush() -> None:
        if outgoing.pending:
            peer.sock.sendall(outgoing.read())

    def feed() -> None:
        flush()
        try:
            incoming.write(peer.recv())
        except _Done:
            incoming.write_eof()
            raise

    def step(op: Callable[[], bytes | None]) -> bytes | None:
        for _ in range(1024):  # bounded by MAX_READ anyway: each turn reads bytes or ends
            try:
                return op()
            except ssl.SSLWantReadError:
                feed()
        raise _Done()

    step(tls.do_handshake)
    flush()

    def read() -> bytes:
        data = step(lambda: tls.read(16384))
        if not data:
            raise _Done()
        return data  # type: ignore[return-value]

    first_read = read()
    # HTTP/2 by ALPN, or by its preface when no protocol was agreed (a client offering only h2).
    if tls.selected_alpn_protocol() == "h2" or first_read.startswith(H2_PREFACE[:len(first_read)]):
        _answer_h2(tls, first_read, read, flush, text, reason)
        return "h2"
    _read_head(first_read, read)
    tls.write(_response(text, reason))
    try:
        tls.unwrap()  # close_notify
    except ssl.SSLError:
        pass
    flush()
    return "tls"


def _answer_h2(tls: ssl.SSLObject, data: bytes, read: Callable[[], bytes], flush: Callable[[], None], text: str,
               reason: str) -> None:
    """HTTP/2 (a client that offered only h2): the first request stream gets the 403."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    tls.write(conn.data_to_send())
    flush()
    body = text.encode("utf-8")
    for _ in range(256):  # bounded by MAX_READ too
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                conn.send_headers(event.stream_id, [
                    (":status", "403"), ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", str(len(body))), ("x-greyproxy-reason", reason),
                ])
                conn.send_data(event.stream_id, body, end_stream=True)
                conn.close_connection()
                tls.write(conn.data_to_send())
                flush()
                return
        pending = conn.data_to_send()
        if pending:
            tls.write(pending)
            flush()
        data = read()


def _close_gently(client: socket.socket) -> None:
    """Half-close after the answer, then read what the client still sends (briefly, bounded),
    so the close is a FIN after the answer, not a reset that could overtake it."""
    try:
        client.shutdown(socket.SHUT_WR)
        client.settimeout(1.0)
        for _ in range(16):
            if not client.recv(65536):
                break
    except OSError:
        pass
