"""SOCKS5 listener (RFC 1928 CONNECT, RFC 1929 username/password).

Identity: a client that offers username/password gets it chosen and names itself; a client
that offers only "no auth" gets the fallback identity `unknown-<source ip>` (or its Docker
name). Unlike the HTTP proxy (a 407 challenge, docs/configuration.md), SOCKS5 has no way to
ask again: refusing the method (0xFF) only ends the connection, and a client that offers no
username/password has none to give.

Refusals: reply 0x02, or, where the client can be told why in its own protocol, success and
the 403 text inside the tunnel (proxy/mitm/refusal.py, docs/clients.md).

Errors: every failure answers or closes this one connection. A domain holding bytes no host
spelling uses (anything but ASCII letters, digits and `-_.:[]%`: controls, spaces, quotes, bytes
that are not ASCII, so also raw UTF-8 names, which clients send as punycode) gets reply 0x08
(address type not supported: the address itself is unusable, and clients report it as such
rather than retrying) and one escaped log line; it never reaches the policy or the dashboard.
An ASCII spelling with no canonical form (invalid IDNA, `1.2.3.4.5`) is the gate's
`bad_destination` decision (canonical names: docs/decisions.md), answered 0x02. An unexpected
error gets 0x01 (general failure) when no reply was sent yet, and is logged as one line at
warning level (the traceback only at debug).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import string
import struct
import time
from typing import TYPE_CHECKING

import gevent
from gevent import socket as gsocket

from greyproxy.proxy import limits as lim
from greyproxy.proxy.gate import Admission, Gatekeeper
from greyproxy.proxy.httpwire import send_all
from greyproxy.proxy.limits import DeadlineExceeded, Limits
from greyproxy.proxy.mitm import refusal
from greyproxy.proxy.tunnel import DialError, set_nodelay

_PLAIN = gsocket.socket  # gevent's plain socket, whose C socket can be read without waiting

if TYPE_CHECKING:
    from greyproxy.ca.state import MitmState

log = logging.getLogger("greyproxy.socks5")

REP_SUCCEEDED = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_NOT_SUPPORTED = 0x08

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

# Every character of every host spelling the gate may canonicalise (names, IPv4, [IPv6%zone]).
HOST_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:[]%")


class ProtocolError(Exception):
    pass


HANDSHAKE_READ = 1024  # a greeting, an authentication or a request fits (each at most 513 bytes)


class _Handshake:
    """The client's handshake bytes, read as they come (one recv per client write, usually one
    per phase, rather than one per field), all within `seconds` of the start, however they are
    dribbled (DeadlineExceeded). The deadline's timer is set only once a read has to wait:
    a client whose bytes are already there costs no timer. Bytes read past the request (a
    client that sends before our reply) are what `rest()` hands to the tunnel."""

    __slots__ = ("sock", "buf", "seconds", "started", "timer")

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.seconds = seconds
        self.started = time.monotonic()
        self.timer: gevent.Timeout | None = None

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _fill(self) -> None:
        sock = self.sock
        data: bytes | None = None
        if self.timer is None:
            if type(sock) is _PLAIN:
                try:
                    data = sock._sock.recv(HANDSHAKE_READ)  # type: ignore[attr-defined]  # non-blocking
                except BlockingIOError:
                    pass
            if data is None:  # it must wait: from here on under the deadline
                left = max(0.0, self.seconds - (time.monotonic() - self.started))
                self.timer = gevent.Timeout(left, DeadlineExceeded)
                self.timer.start()
        if data is None:
            data = sock.recv(HANDSHAKE_READ)
        if not data:
            raise ProtocolError("client closed during the handshake")
        self.buf += data

    def rest(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None


class _Progress:
    """How far one connection got: whether a request reply may (still) be sent."""

    __slots__ = ("negotiated", "replied")

    def __init__(self) -> None:
        self.negotiated = False
        self.replied = False

    def may_reply(self) -> bool:
        return self.negotiated and not self.replied


def reply(code: int, bound: tuple[str, int] | None = None) -> bytes:
    host, port = bound or ("0.0.0.0", 0)
    host = host.split("%", 1)[0]
    # The bound address comes from getsockname: a plain IPv4 or IPv6 literal.
    if ":" in host:
        return bytes((5, code, 0, 0x04)) + socket.inet_pton(socket.AF_INET6, host) + struct.pack("!H", port)
    return bytes((5, code, 0, 0x01)) + socket.inet_pton(socket.AF_INET, host) + struct.pack("!H", port)


def _answer(client: socket.socket, progress: _Progress, code: int, bound: tuple[str, int] | None = None) -> None:
    progress.replied = True
    send_all(client, reply(code, bound))


def refuse_connection(client: socket.socket) -> None:
    """Over a connection cap (proxy/limits.py): read the greeting, answer that no method is
    acceptable (clients report it instead of retrying in a loop), and close."""
    client.recv(257)
    client.sendall(bytes((5, METHOD_NONE_ACCEPTABLE)))


class Socks5Handler:
    def __init__(self, gate: Gatekeeper, mitm: MitmState, limits: Limits) -> None:
        self.gate = gate
        self.mitm = mitm  # whether a refusal can be answered inside the tunnel
        self.limits = limits

    def handle(self, client: socket.socket, address: tuple) -> None:
        progress = _Progress()
        try:
            self._handle(client, address, progress)
        except DeadlineExceeded:
            self.limits.hit(lim.HEAD_DEADLINE, address[0], "socks5: handshake not complete in time")
            if progress.may_reply():
                self._send_quietly(client, progress, REP_FAILURE)
        except (ProtocolError, OSError) as exc:
            log.debug("socks5 %s: %s", address[0], exc)
        except UnicodeError as exc:  # a username (before the request) or destination that does not decode
            if progress.may_reply():
                log.info("socks5 %s: refused a destination that does not decode: %s", address[0], exc)
                self._send_quietly(client, progress, REP_ADDRESS_NOT_SUPPORTED)
            elif not progress.negotiated:
                log.debug("socks5 %s: %s", address[0], exc)
            else:
                self._unexpected(client, address, progress, exc)
        except Exception as exc:  # one connection's surprise closes it, and only it
            self._unexpected(client, address, progress, exc)
        finally:
            client.close()

    def _unexpected(self, client: socket.socket, address: tuple, progress: _Progress, exc: Exception) -> None:
        log.warning("socks5 %s: connection closed after an unexpected %s: %s", address[0], type(exc).__name__, exc)
        log.debug("socks5 %s: unexpected error", address[0], exc_info=True)
        if progress.may_reply():
            self._send_quietly(client, progress, REP_FAILURE)

    @staticmethod
    def _send_quietly(client: socket.socket, progress: _Progress, code: int) -> None:
        try:
            _answer(client, progress, code)
        except OSError:
            pass

    def _negotiate(self, client: socket.socket, wire: _Handshake) -> tuple[str | None, str | None]:
        version, count = wire.take(2)
        if version != 5:
            raise ProtocolError(f"not SOCKS5 (version {version})")
        methods = wire.take(count)
        if METHOD_USERPASS in methods:
            send_all(client, bytes((5, METHOD_USERPASS)))
            sub_version, ulen = wire.take(2)
            if sub_version != 1:
                raise ProtocolError("bad username/password sub-negotiation version")
            username = wire.take(ulen).decode("utf-8")
            (plen,) = wire.take(1)
            password = wire.take(plen).decode("utf-8")
            # Always accept here: identity and its binding are decided with the destination.
            send_all(client, b"\x01\x00")
            return username, password
        if METHOD_NO_AUTH in methods:
            send_all(client, bytes((5, METHOD_NO_AUTH)))
            return None, None
        client.sendall(bytes((5, METHOD_NONE_ACCEPTABLE)))
        raise ProtocolError("no acceptable authentication method")

    def _read_target(self, client: socket.socket, wire: _Handshake) -> tuple[str, int] | None:
        version, command, _rsv, atyp = wire.take(4)
        if version != 5:
            raise ProtocolError("bad request version")
        if atyp == 0x01:
            host = socket.inet_ntop(socket.AF_INET, wire.take(4))  # dotted quad, as IPv4Address prints it
        elif atyp == 0x04:
            host = str(ipaddress.IPv6Address(wire.take(16)))
        elif atyp == 0x03:
            (length,) = wire.take(1)
            # As received (never punycode-decoded): the gate's canonical_host does IDNA.
            host = wire.take(length).decode("utf-8", "surrogateescape")
            if not host:
                raise ProtocolError("empty domain name")
        else:
            client.sendall(reply(REP_ADDRESS_NOT_SUPPORTED))
            return None
        (port,) = struct.unpack("!H", wire.take(2))
        if command != 0x01:  # only CONNECT
            client.sendall(reply(REP_COMMAND_NOT_SUPPORTED))
            return None
        return host, port

    def _refuse(self, client: socket.socket, progress: _Progress, admission: Admission, reason: str,
                early: bytes = b"") -> None:
        """Reply 0x02, which clients show only as "not allowed" (curl: "(97)"); or, where the
        client can be told why in its own protocol, succeed and answer the 403 inside the
        tunnel (proxy/mitm/refusal.py): with a CA for TLS and HTTP on any port, and without
        one for plain HTTP on port 80."""
        mitm = self.mitm
        if refusal.in_band(mitm, admission.host, reason, admission.container):
            leaves = mitm.leaves
        elif admission.port == 80 and reason not in refusal.NOT_TOLD_IN_BAND:
            leaves = None  # plain HTTP only
        else:
            _answer(client, progress, REP_NOT_ALLOWED)
            return
        _answer(client, progress, REP_SUCCEEDED)
        told = refusal.answer(client, early, leaves, admission.host, self.gate.blocked_text(admission, reason), reason,
                              admission.container)
        log.debug("socks5: refused %s:%s (%s), answered in the tunnel: %s", admission.host, admission.port,
                  reason, told)

    def _handle(self, client: socket.socket, address: tuple, progress: _Progress) -> None:
        head_seconds = self.limits.config().head_seconds
        client.settimeout(head_seconds + 1)  # the deadline below ends it first
        set_nodelay(client)
        # Greeting, authentication and request: one deadline for the whole handshake.
        wire = _Handshake(client, head_seconds)
        try:
            username, password = self._negotiate(client, wire)
            progress.negotiated = True
            target = self._read_target(client, wire)
        finally:
            wire.close()
        early = wire.rest()  # sent before our reply: judged in the tunnel like any first bytes
        if target is None:  # it answered already
            progress.replied = True
            return
        host, port = target
        if not all(c in HOST_CHARS for c in host):
            log.info("socks5 %s: refused a destination that is not a host name: %s", address[0], host)
            _answer(client, progress, REP_ADDRESS_NOT_SUPPORTED)
            return
        if port == 0:
            _answer(client, progress, REP_NOT_ALLOWED)
            return
        client.settimeout(None)
        admission = self.gate.admit(
            username=username, password=password, source_ip=address[0], host=host, port=port, method="SOCKS5",
            client=client,
        )
        if not admission.allowed:
            self._refuse(client, progress, admission, admission.reason, early)
            return
        try:
            upstream = self.gate.dial(admission)
        except DialError as exc:
            log.info("socks5 dial %s:%s failed: %s", host, port, exc)
            if exc.reason in ("control_plane", "private_range"):  # guard refusals: "not allowed"
                self._refuse(client, progress, admission, exc.reason, early)
            else:
                _answer(client, progress, REP_NETWORK_UNREACHABLE)
            return
        _answer(client, progress, REP_SUCCEEDED, upstream.getsockname()[:2])
        self.gate.tunnel(admission, client, upstream, early=early)
