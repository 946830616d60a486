"""Talking to the upstream DNS servers: which servers, and one bounded exchange.

Used by both the DNS listener (forwarding clients' queries) and the dial-time resolver.
Every exchange has a hard deadline; a truncated UDP answer (TC bit) is fetched again over TCP.
Each UDP exchange uses its own connected socket on a random source port, so only the server
we asked can answer, and a reply is accepted only if its id and question match the query.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import gevent
from gevent import socket as gsocket

log = logging.getLogger("greyproxy.dns")

Server = tuple[str, int]

QUERY_TIMEOUT = 5.0  # the whole exchange, all servers and the TCP retry included
PER_SERVER_TIMEOUT = 2.5  # one server's share, so a dead first server leaves time for the next
MAX_UDP_REPLY = 65535
MAX_STRAY_DATAGRAMS = 16  # replies with a wrong id / question that we skip before giving up
MAX_SERVERS = 3  # glibc reads at most three nameservers too
RESOLV_CONF_PATHS = ("/etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf")
FALLBACK_SERVER: Server = ("1.1.1.1", 53)


class UpstreamError(Exception):
    """No upstream server gave a usable answer in time."""


def servers_from_resolv_conf(text: str) -> list[Server]:
    """The `nameserver` lines of a resolv.conf, in order (IP literals only, at most three)."""
    found: list[Server] = []
    for line in text.splitlines()[:1000]:
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        try:
            ip = ipaddress.ip_address(parts[1])
        except ValueError:
            continue
        found.append((str(ip), 53))
        if len(found) >= MAX_SERVERS:
            break
    return found


def system_servers(paths: Iterable[str] = RESOLV_CONF_PATHS) -> list[Server]:
    """The host's resolver configuration, else 1.1.1.1:53."""
    for path in paths:
        try:
            servers = servers_from_resolv_conf(Path(path).read_text(errors="replace")[:65536])
        except OSError:
            continue
        if servers:
            return servers
    return [FALLBACK_SERVER]


def _has_tc(wire: bytes) -> bool:
    return len(wire) >= 4 and bool(wire[2] & 0x02)


def _with_id(wire: bytes, query_id: int) -> bytes:
    return struct.pack("!H", query_id) + wire[2:]


def _matches(query: dns.message.Message, query_id: int, reply: dns.message.Message) -> bool:
    return reply.id == query_id and bool(reply.flags & dns.flags.QR) and reply.question == query.question


def _family(host: str) -> int:
    return gsocket.AF_INET6 if ":" in host else gsocket.AF_INET


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:  # bounded: each recv returns >= 1 byte or ends the loop
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed mid-message")
        data += chunk
    return bytes(data)


class Upstream:
    """An ordered list of servers tried in turn until one answers."""

    def __init__(self, servers: Sequence[Server], timeout: float = QUERY_TIMEOUT) -> None:
        self.servers: tuple[Server, ...] = tuple(servers)
        self.timeout = timeout

    def exchange(
        self, query: dns.message.Message, wire: bytes | None = None, tcp: bool = False
    ) -> tuple[dns.message.Message, bytes]:
        """Send a query (the client's own bytes when given, so nothing it asked for is lost) and
        return the parsed reply and its raw bytes (id = the query's id). `tcp` skips the UDP
        attempt (a client asking over TCP usually expects a big answer). Raises UpstreamError."""
        if wire is None:
            wire = query.to_wire()
        deadline = time.monotonic() + self.timeout
        last: Exception | None = None
        for server in self.servers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                with gevent.Timeout(min(remaining, PER_SERVER_TIMEOUT)):
                    reply, raw = self._ask(server, query, wire, tcp)
            except (gevent.Timeout, OSError, dns.exception.DNSException, ValueError) as exc:
                last = exc
                log.debug("dns upstream %s:%s: %r", server[0], server[1], exc)
                continue
            return reply, _with_id(raw, query.id)
        raise UpstreamError(f"no upstream answered ({last!r})")

    def _ask(
        self, server: Server, query: dns.message.Message, wire: bytes, tcp: bool
    ) -> tuple[dns.message.Message, bytes]:
        query_id = secrets.randbits(16)  # our own id: the client's id is not trusted to be random
        wire = _with_id(wire, query_id)
        raw = None if tcp else self._udp(server, query, query_id, wire)
        if raw is None:  # truncated: the full answer only fits over TCP
            raw = self._tcp(server, wire)
        reply = dns.message.from_wire(raw)
        if not _matches(query, query_id, reply):
            raise ValueError("reply does not match the query")
        return reply, raw

    def _udp(self, server: Server, query: dns.message.Message, query_id: int, wire: bytes) -> bytes | None:
        """The reply's bytes, or None when the server set TC."""
        sock = gsocket.socket(_family(server[0]), gsocket.SOCK_DGRAM)
        try:
            sock.connect(server)  # a connected socket only receives from this server
            sock.send(wire)
            for _ in range(MAX_STRAY_DATAGRAMS):
                raw = sock.recv(MAX_UDP_REPLY)
                if len(raw) < 12 or struct.unpack("!H", raw[:2])[0] != query_id:
                    continue
                if _has_tc(raw):
                    return None
                return raw
        finally:
            sock.close()
        raise ValueError("only stray datagrams from the server")

    def _tcp(self, server: Server, wire: bytes) -> bytes:
        sock = gsocket.socket(_family(server[0]), gsocket.SOCK_STREAM)
        try:
            sock.connect(server)
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", _recv_exact(sock, 2))
            return _recv_exact(sock, length)
        finally:
            sock.close()
