"""SOCKS5 listener (RFC 1928 CONNECT, RFC 1929 username/password), replies per §1.3."""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct

from greyproxy.proxy.gate import Gatekeeper
from greyproxy.proxy.tunnel import DialError, set_nodelay

log = logging.getLogger("greyproxy.socks5")

HANDSHAKE_TIMEOUT = 30.0

REP_SUCCEEDED = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_NOT_SUPPORTED = 0x08

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF


class ProtocolError(Exception):
    pass


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProtocolError("client closed during the handshake")
        data += chunk
    return data


def reply(code: int, bound: tuple[str, int] | None = None) -> bytes:
    host, port = bound or ("0.0.0.0", 0)
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    atyp = 0x01 if ip.version == 4 else 0x04
    return bytes((5, code, 0, atyp)) + ip.packed + struct.pack("!H", port)


class Socks5Handler:
    def __init__(self, gate: Gatekeeper) -> None:
        self.gate = gate

    def handle(self, client: socket.socket, address: tuple) -> None:
        try:
            self._handle(client, address)
        except (ProtocolError, OSError, UnicodeDecodeError) as exc:
            log.debug("socks5 %s: %s", address[0], exc)
        finally:
            client.close()

    def _negotiate(self, client: socket.socket) -> tuple[str | None, str | None]:
        version, count = recv_exact(client, 2)
        if version != 5:
            raise ProtocolError(f"not SOCKS5 (version {version})")
        methods = recv_exact(client, count)
        if METHOD_USERPASS in methods:
            client.sendall(bytes((5, METHOD_USERPASS)))
            sub_version, ulen = recv_exact(client, 2)
            if sub_version != 1:
                raise ProtocolError("bad username/password sub-negotiation version")
            username = recv_exact(client, ulen).decode("utf-8")
            (plen,) = recv_exact(client, 1)
            password = recv_exact(client, plen).decode("utf-8")
            # Always accept here: identity and its binding are decided with the destination.
            client.sendall(b"\x01\x00")
            return username, password
        if METHOD_NO_AUTH in methods:
            client.sendall(bytes((5, METHOD_NO_AUTH)))
            return None, None
        client.sendall(bytes((5, METHOD_NONE_ACCEPTABLE)))
        raise ProtocolError("no acceptable authentication method")

    def _read_target(self, client: socket.socket) -> tuple[str, int] | None:
        version, command, _rsv, atyp = recv_exact(client, 4)
        if version != 5:
            raise ProtocolError("bad request version")
        if atyp == 0x01:
            host = str(ipaddress.IPv4Address(recv_exact(client, 4)))
        elif atyp == 0x04:
            host = str(ipaddress.IPv6Address(recv_exact(client, 16)))
        elif atyp == 0x03:
            (length,) = recv_exact(client, 1)
            host = recv_exact(client, length).decode("idna" if length else "ascii")
            if not host:
                raise ProtocolError("empty domain name")
        else:
            client.sendall(reply(REP_ADDRESS_NOT_SUPPORTED))
            return None
        (port,) = struct.unpack("!H", recv_exact(client, 2))
        if command != 0x01:  # only CONNECT
            client.sendall(reply(REP_COMMAND_NOT_SUPPORTED))
            return None
        return host, port

    def _handle(self, client: socket.socket, address: tuple) -> None:
        client.settimeout(HANDSHAKE_TIMEOUT)
        set_nodelay(client)
        username, password = self._negotiate(client)
        target = self._read_target(client)
        if target is None:
            return
        host, port = target
        if port == 0:
            client.sendall(reply(REP_NOT_ALLOWED))
            return
        client.settimeout(None)
        admission = self.gate.admit(
            username=username, password=password, source_ip=address[0], host=host, port=port, method="SOCKS5",
            client=client,
        )
        if not admission.allowed:
            client.sendall(reply(REP_NOT_ALLOWED))
            return
        try:
            upstream = self.gate.dial(admission)
        except DialError as exc:
            log.info("socks5 dial %s:%s failed: %s", host, port, exc)
            refused = exc.reason in ("control_plane", "private_range")  # guard refusals: "not allowed"
            client.sendall(reply(REP_NOT_ALLOWED if refused else REP_NETWORK_UNREACHABLE))
            return
        client.sendall(reply(REP_SUCCEEDED, upstream.getsockname()[:2]))
        self.gate.tunnel(admission, client, upstream)
