"""Bulk through plain (not intercepted) tunnels: CONNECT and SOCKS5 carry 64 MiB each way
byte for byte, a client that shuts down writing still gets the whole answer, and the relayed
byte counters match what went through. Run with splice(2) (the default for plain sockets) and
with the recv/send copy (GREYPROXY_SPLICE=0)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading

import pytest

from tests.integration.netutil import http_connect, recv_exact, socks_connect
from tests.ports import free_port

SIZE = 64 << 20
PREFIX = b"\x00BULK\n"  # no request line, no TLS record: the sniffer pipes the tunnel
UP = PREFIX + os.urandom(SIZE)
DOWN = os.urandom(SIZE)
DOWN_SHA = hashlib.sha256(DOWN).digest()


class BulkOrigin:
    """Reads the client's stream to EOF, then answers sha256(what it got) + its length + DOWN,
    and closes. It answers only after the client's half-close, so the answer crosses a tunnel
    whose up direction is already shut. `speaks_first`: DOWN goes first, as soon as the
    connection is up, and the digest last."""

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def __init__(self, speaks_first: bool = False) -> None:
        self.speaks_first = speaks_first
        self.host = "127.0.0.1"
        self.sock = socket.create_server((self.host, free_port(self.host)))
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[bytes, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        digest, total = hashlib.sha256(), 0
        buf = bytearray(1 << 20)
        with conn:
            try:
                if self.speaks_first:  # the sniffer sees the server speak first: piped, the client watched
                    conn.sendall(DOWN)
                while True:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    digest.update(memoryview(buf)[:n])
                    total += n
                self.received.append((digest.digest(), total))
                conn.sendall(digest.digest() + struct.pack("!Q", total))
                if not self.speaks_first:
                    conn.sendall(DOWN)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def bulk_origin():
    origin = BulkOrigin()
    yield origin
    origin.close()


def _exchange(sock: socket.socket) -> None:
    """Send UP, half-close, then read the origin's answer to EOF: every byte, in order."""
    sock.settimeout(60)
    sender_error: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(UP)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            sender_error.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    head = recv_exact(sock, 40)
    got, buf = hashlib.sha256(), bytearray(1 << 20)
    total = 0
    while True:
        n = sock.recv_into(buf)
        if not n:
            break
        got.update(memoryview(buf)[:n])
        total += n
    sender.join(60)
    sock.close()
    assert not sender_error
    assert head[:32] == hashlib.sha256(UP).digest() and struct.unpack("!Q", head[32:])[0] == len(UP)
    assert total == len(DOWN) and got.digest() == DOWN_SHA


def _relayed(gp) -> dict[str, int]:
    return gp.api("GET", "/api/metrics").json()["bytes_relayed"]


@pytest.mark.parametrize("splice", ["1", "0"], ids=["splice", "copy"])
@pytest.mark.parametrize("kind", ["connect", "socks5"])
def test_bulk_tunnel_is_byte_identical_and_counted(gp_factory, bulk_origin, monkeypatch, kind, splice):
    monkeypatch.setenv("GREYPROXY_SPLICE", splice)
    gp = gp_factory()
    if kind == "connect":
        status, _, sock = http_connect(gp.ports["http"], bulk_origin.host, bulk_origin.port)
        assert status == 200
    else:
        code, sock = socks_connect(gp.ports["socks5"], bulk_origin.host, bulk_origin.port)
        assert code == 0
    _exchange(sock)
    # What the origin received is the client's stream, exactly.
    assert bulk_origin.received == [(hashlib.sha256(UP).digest(), len(UP))]
    # The counters say exactly what crossed the tunnel each way.
    want = {"up": len(UP), "down": 40 + len(DOWN)}
    assert gp.wait_for(lambda: _relayed(gp) == want), _relayed(gp)
    # One connection, one allowed log row for it.
    assert gp.wait_for(lambda: gp.api("GET", "/api/logs?result=allowed&limit=10").json()["total"] == 1)
    rows = gp.api("GET", "/api/logs?result=allowed&limit=10").json()["items"]
    assert [row["destination_port"] for row in rows] == [bulk_origin.port]


def _connect_no_overread(proxy_port: int, host: str, port: int) -> socket.socket:
    """CONNECT, reading the answer a byte at a time: the origin's first bytes may follow it at once."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    auth = base64.b64encode(b"agent1:x").decode()
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < 8192:
        byte = sock.recv(1)
        assert byte, head
        head += byte
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _server_first(sock: socket.socket) -> None:
    """Read DOWN as it arrives unasked, then send UP, half-close, and read the digest to EOF."""
    sock.settimeout(60)
    got, buf, total = hashlib.sha256(), bytearray(1 << 20), 0
    while total < len(DOWN):
        n = sock.recv_into(buf, min(len(buf), len(DOWN) - total))
        assert n, f"closed after {total} bytes"
        got.update(memoryview(buf)[:n])
        total += n
    assert got.digest() == DOWN_SHA
    sock.sendall(UP)
    sock.shutdown(socket.SHUT_WR)
    head = recv_exact(sock, 40)
    assert sock.recv(1) == b""
    sock.close()
    assert head[:32] == hashlib.sha256(UP).digest() and struct.unpack("!Q", head[32:])[0] == len(UP)


@pytest.mark.parametrize("kind", ["connect", "socks5"])
def test_bulk_from_a_server_that_speaks_first(gp_factory, kind):
    """The sniffer pipes such a tunnel with the client's first line watched; once that is judged,
    bulk both ways still arrives whole, and the counters match."""
    origin = BulkOrigin(speaks_first=True)
    try:
        gp = gp_factory()
        if kind == "connect":
            sock = _connect_no_overread(gp.ports["http"], origin.host, origin.port)
        else:
            code, sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)  # reads exact sizes
            assert code == 0
        _server_first(sock)
        assert origin.received == [(hashlib.sha256(UP).digest(), len(UP))]
        want = {"up": len(UP), "down": len(DOWN) + 40}
        assert gp.wait_for(lambda: _relayed(gp) == want), _relayed(gp)
    finally:
        origin.close()
