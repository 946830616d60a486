"""Bad input on a proxy listener closes that one connection and nothing else."""

from __future__ import annotations

import socket

import pytest

from tests.integration.netutil import EchoServer, socks_connect


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the proxy answers before it closes (bounded)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    try:
        sock.sendall(payload)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # ENOTCONN: the proxy had already closed, and reset, the connection
            pass
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # closing with our bytes unread resets the connection: what arrived before counts
    finally:
        sock.close()
    return data


SOCKS_CASES = [
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),  # SOCKS4
    (b"\x05", b""),  # truncated greeting
    (b"\x05\x01\x03", b"\x05\xff"),  # no acceptable method
    (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),  # BIND: not supported
    (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00\x05\x08"),  # unknown address type
    # Each payload below ends where the proxy stops reading, so closing resets nothing unread.
    (b"\x05\x01\x00\x05\x01\x00\x03\x00", b"\x05\x00"),  # empty domain name
    (b"\x05\x01\x02\x07\x03", b"\x05\x02"),  # bad auth sub-negotiation version
    (b"\x05\x01\x02\x01\x02\xff\xfe", b"\x05\x02"),  # username not UTF-8
]

HTTP_CASES = [
    b"\x16\x03\x01\x00\x05hello\r\n\r\n",  # TLS to a plain HTTP port
    b"NONSENSE\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nno colon here\r\n\r\n",
    b"CONNECT [::1 HTTP/1.1\r\n\r\n",
    b"CONNECT host:99999 HTTP/1.1\r\n\r\n",
    b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET https://secure.example/ HTTP/1.1\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
]


def with_credentials(payload: bytes) -> bytes:
    """The case as a client that names itself would send it (agent1:x after the request line),
    so what it meets is the listener's handling of the bytes, not the identity challenge."""
    line, sep, rest = payload.partition(b"\r\n")
    return line + sep + b"Proxy-Authorization: Basic YWdlbnQxOng=\r\n" + rest if sep else payload


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def still_works(gp, echo) -> None:
    rep, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port)
    assert rep == 0
    sock.sendall(b"ok?")
    assert sock.recv(3) == b"ok?"
    sock.close()
    assert gp.api("GET", "/api/health").json()["status"] == "ok"


def test_malformed_socks5_requests_close_only_their_connection(gp, echo):
    gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": echo.host})
    for payload, expected_prefix in SOCKS_CASES:
        answer = exchange(gp.ports["socks5"], payload)
        assert answer.startswith(expected_prefix), (payload, answer)
    still_works(gp, echo)


def test_malformed_http_proxy_requests_get_400_or_close(gp, echo):
    gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": echo.host})
    for payload in map(with_credentials, HTTP_CASES):
        answer = exchange(gp.ports["http"], payload)
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403", b"HTTP/1.1 431", b"HTTP/1.1 503")), (
            payload[:40], answer[:80])
    still_works(gp, echo)
    assert "Traceback" not in gp.logs()
