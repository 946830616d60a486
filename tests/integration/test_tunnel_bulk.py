"""Bulk through plain (not intercepted) tunnels: CONNECT and SOCKS5 carry 64 MiB each way
byte for byte, a client that shuts down writing still gets the whole answer, and the relayed
byte counters match what went through. Run with splice(2) (the default for plain sockets) and
with the recv/send copy (GREYPROXY_SPLICE=0)."""

from __future__ import annotations

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
    whose up direction is already shut."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.sock = socket.create_server((self.host, free_port(self.host)))
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[bytes, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        digest, total = hashlib.sha256(), 0
        buf = bytearray(1 << 20)
        with conn:
            try:
                while True:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    digest.update(memoryview(buf)[:n])
                    total += n
                self.received.append((digest.digest(), total))
                conn.sendall(digest.digest() + struct.pack("!Q", total))
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
