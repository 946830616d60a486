"""Bytes a client sends right behind its CONNECT head, before the tunnel exists ("early data"),
get the same inspection as bytes sent after it: an HTTP request is parsed, re-checked and
recorded; a TLS hello is parsed and its server name checked (tests/integration/
test_sni_passthrough.py has the interception and name cases)."""

from __future__ import annotations

import base64
import socket
import ssl

import pytest

from tests.conftest import Origin
from tests.integration.netutil import EchoServer, wait_until

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

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
    origin = Origin(host="127.0.0.1")  # reached by name (localhost), so the Host header is judged
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


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_early_tls_hello_is_inspected_not_piped_blind(gp):
    """No CA here, so no interception: the hello already read is still parsed (tlshello) before
    anything goes upstream; only a real ClientHello is piped, and the log does not say
    early_data any more."""
    echo = EchoServer()
    try:
        allow(gp, echo.host)
        bogus = b"\x16\x03\x01\x00\x05hello"  # the start of a TLS record, but no hello inside
        answer = connect_with_early(gp, echo.host, echo.port, bogus)
        assert answer.startswith(b"HTTP/1.1 200 Connection established")
        assert not answer.endswith(bogus) and answer[-7:-5] == b"\x15\x03"  # a TLS alert, no echo

        def blocked():
            rows = gp.api("GET", "/api/logs", params={"destination": echo.host, "result": "blocked"}).json()["items"]
            return rows or None

        rows = wait_until(blocked, 5)
        assert rows and rows[0]["reason"] == "bad_tls_hello"

        hello = client_hello("echo.example")  # an IP destination with no name: the SNI cannot be judged
        answer = connect_with_early(gp, echo.host, echo.port, hello)
        assert answer.startswith(b"HTTP/1.1 200 Connection established") and answer.endswith(hello)

        def logged():
            rows = gp.api("GET", "/api/logs", params={"destination": echo.host, "result": "allowed"}).json()["items"]
            return rows if rows and rows[0]["mitm_skip_reason"] else None

        rows = wait_until(logged, 5)
        assert rows and rows[0]["mitm_skip_reason"] == "no_cert"
    finally:
        echo.sock.close()
