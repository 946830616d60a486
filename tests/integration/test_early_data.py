"""Bytes a client sends right behind its CONNECT head, before the tunnel exists ("early data"),
get the same inspection as bytes sent after it: an HTTP request is parsed, re-checked and
recorded; a TLS hello, which cannot be intercepted any more, is piped and the log says why."""

from __future__ import annotations

import base64
import socket

from tests.conftest import Origin
from tests.integration.netutil import EchoServer, wait_until

AUTH = base64.b64encode(b"agent1:x").decode()


def connect_with_early(gp, host: str, port: int, early: bytes) -> bytes:
    """CONNECT and `early` in one write; everything the proxy sends back until it closes."""
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {AUTH}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10) as sock:
        sock.sendall(head.encode() + early)
        data = b""
        try:
            while len(data) < 1 << 16 and (chunk := sock.recv(65536)):
                data += chunk
                if early.startswith(b"\x16") and data.endswith(early):
                    break  # the echo came back: enough
        except TimeoutError:
            pass
    return data


def allow(gp, host: str) -> None:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": host})
    assert resp.status_code == 201, resp.text


def test_early_http_request_is_rechecked_and_recorded(gp):
    origin = Origin(host="127.0.0.1")  # reached by name (localhost), so the Host header is judged (D13)
    try:
        fronted = connect_with_early(gp, "localhost", origin.port,
                                     b"GET /sneaky HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n")
        assert fronted.startswith(b"HTTP/1.1 200 Connection established")
        assert b"403 Forbidden" in fronted and b"X-Greyproxy-Reason: sni_mismatch" in fronted
        assert origin.requests == []  # the request for another name never left

        honest = connect_with_early(gp, "localhost", origin.port,
                                    b"GET /early HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert honest.endswith(b"hello from origin\n") and origin.requests[-1]["path"] == "/early"
    finally:
        origin.close()
    found = wait_until(lambda: [t for t in gp.api("GET", "/api/transactions").json()["items"]
                                if t["url"].endswith("/early")], 5)
    assert found and found[0]["status_code"] == 200


def test_early_tls_hello_is_piped_with_a_reason(gp):
    echo = EchoServer()
    try:
        allow(gp, echo.host)
        hello = b"\x16\x03\x01\x00\x05hello"  # the start of a TLS record, as a hello would be
        answer = connect_with_early(gp, echo.host, echo.port, hello)
        assert answer.startswith(b"HTTP/1.1 200 Connection established") and answer.endswith(hello)

        def logged():
            rows = gp.api("GET", "/api/logs", params={"destination": echo.host}).json()["items"]
            return rows if rows and rows[0]["mitm_skip_reason"] else None

        rows = wait_until(logged, 5)
        assert rows and rows[0]["mitm_skip_reason"] == "early_data"
    finally:
        echo.sock.close()
