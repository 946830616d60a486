"""The proxy can never be used to reach its own API, whatever the rules or modes say."""

from __future__ import annotations

import pytest

from tests.integration.netutil import http_connect, socks_connect

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca


@pytest.fixture
def wide_open(gp_factory):
    gp = gp_factory(extra_args=["--silent-allow"])
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": "*"})
    assert resp.status_code == 201, resp.text
    return gp


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.9", "::1", "LOCALHOST.", "api.localhost"])
def test_api_port_unreachable_through_socks(wide_open, host):
    rep, sock = socks_connect(wide_open.ports["socks5"], host, wide_open.ports["api"])
    sock.close()
    assert rep == 0x02


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.9", "[::1]"])
def test_api_port_unreachable_through_http_connect(wide_open, host):
    status, headers, sock = http_connect(wide_open.ports["http"], host, wide_open.ports["api"])
    sock.close()
    assert status == 403
    assert headers["x-greyproxy-reason"] == "control_plane"


def test_plain_http_to_api_is_blocked(wide_open):
    import socket

    sock = socket.create_connection(("127.0.0.1", wide_open.ports["http"]), timeout=10)
    sock.sendall(f"GET http://127.0.0.1:{wide_open.ports['api']}/api/rules HTTP/1.1\r\nHost: x\r\n"
                 "Proxy-Authorization: Basic YWdlbnQxOng=\r\n\r\n".encode())  # agent1:x
    data = sock.recv(65536).decode()
    sock.close()
    assert data.startswith("HTTP/1.1 403")
    assert "X-Greyproxy-Reason: control_plane" in data


def test_proxy_ports_themselves_are_unreachable(wide_open):
    for port in (wide_open.ports["http"], wide_open.ports["socks5"]):
        rep, sock = socks_connect(wide_open.ports["socks5"], "127.0.0.1", port)
        sock.close()
        assert rep == 0x02


def test_blocked_attempt_is_logged_with_reason(wide_open):
    rep, sock = socks_connect(wide_open.ports["socks5"], "127.0.0.1", wide_open.ports["api"], user="sneaky")
    sock.close()
    logs = wide_open.api("GET", "/api/logs", params={"container": "sneaky"}).json()["items"]
    assert logs and logs[0]["result"] == "blocked"
    assert logs[0].get("reason") == "control_plane"
