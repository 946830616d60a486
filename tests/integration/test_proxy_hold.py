"""The core promise: an unmatched connection is held, listed as pending, and the same
connection goes through (or is refused) when a human decides."""

from __future__ import annotations

import socket
import time

import pytest

from tests.backends import database_url  # noqa: F401 - every test here runs on SQLite and PostgreSQL
from tests.integration.netutil import EchoServer, curl, http_connect, socks_connect, wait_until
from tests.workers import workers  # noqa: F401 - decisions with one data-path process and with two

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca


def pending_items(gp) -> list[dict]:
    return gp.api("GET", "/api/pending").json()["items"]


def wait_pending(gp, host: str, port: int, timeout: float = 5.0) -> dict:
    def find():
        for item in pending_items(gp):
            if item["destination_host"] == host and item["destination_port"] == port:
                return item
        return None

    item = wait_until(find, timeout)
    assert item, f"{host}:{port} never showed up in /api/pending"
    return item


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.mark.parametrize("via", ["socks5", "http"])
def test_held_connection_completes_after_rest_allow(gp, origin, via):
    url = f"http://{origin.host}:{origin.port}/hello"
    if via == "socks5":
        client = curl("--socks5-hostname", f"agent1:x@127.0.0.1:{gp.ports['socks5']}", url)
    else:
        client = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", url)
    item = wait_pending(gp, origin.host, origin.port)
    assert item["container_name"] == "agent1"
    assert client.poll() is None, "curl must still be waiting while the request is pending"
    resp = gp.api("POST", f"/api/pending/{item['id']}/allow", json={"scope": "exact", "duration": "1h"})
    assert resp.status_code == 200, resp.text
    out, err = client.communicate(timeout=10)
    assert client.returncode == 0, err
    assert out == origin.body
    assert pending_items(gp) == []


def test_denied_http_gets_403_with_reason_at_once(gp, origin):
    url = f"http://{origin.host}:{origin.port}/"
    client = curl("-i", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", url)
    item = wait_pending(gp, origin.host, origin.port)
    started = time.monotonic()
    assert gp.api("POST", f"/api/pending/{item['id']}/deny", json={}).status_code == 200
    out, _ = client.communicate(timeout=10)
    assert time.monotonic() - started < 2
    text = out.decode()
    assert text.startswith("HTTP/1.1 403")
    assert "X-Greyproxy-Reason: denied_by_rule" in text
    assert "agent1" in text and origin.host in text
    assert origin.requests == []


def test_denied_socks_gets_rep_02_at_once(gp, origin):
    result = {}

    def connect():
        result["rep"], sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)
        sock.close()

    import threading

    t = threading.Thread(target=connect)
    t.start()
    item = wait_pending(gp, origin.host, origin.port)
    started = time.monotonic()
    gp.api("POST", f"/api/pending/{item['id']}/deny", json={"scope": "exact"})
    t.join(10)
    assert time.monotonic() - started < 2
    assert result["rep"] == 0x02


def test_unanswered_hold_blocks_at_timeout(gp_factory, origin):
    gp = gp_factory(hold_seconds=1.5)
    started = time.monotonic()
    status, headers, sock = http_connect(gp.ports["http"], origin.host, origin.port)
    sock.close()
    assert status == 403
    assert headers["x-greyproxy-reason"] == "pending_timeout"
    assert 1.4 < time.monotonic() - started < 5
    rep, sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)
    sock.close()
    assert rep == 0x02
    # the pending row stays for the human to decide later (the store writer counts the second
    # attempt a moment after it was answered)
    assert gp.wait_for(lambda: pending_items(gp)[0]["attempt_count"] == 2, timeout=5), pending_items(gp)


@pytest.mark.parametrize("listener", ["socks5", "http"])
def test_client_hangup_while_held_drops_waiter(gp_factory, origin, listener):
    gp = gp_factory(hold_seconds=30)
    if listener == "socks5":
        sock = socket.create_connection(("127.0.0.1", gp.ports["socks5"]))
        sock.sendall(b"\x05\x01\x02")
        sock.recv(2)
        sock.sendall(b"\x01\x06agent1\x01x")
        sock.recv(2)
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(origin.host) + origin.port.to_bytes(2, "big"))
    else:
        sock = socket.create_connection(("127.0.0.1", gp.ports["http"]))
        sock.sendall(f"CONNECT {origin.host}:{origin.port} HTTP/1.1\r\nProxy-Authorization: Basic YWdlbnQxOng=\r\n\r\n".encode())
    item = wait_pending(gp, origin.host, origin.port)
    assert wait_until(lambda: pending_items(gp)[0]["waiter_count"] == 1, 3)
    assert item["waiter_count"] in (0, 1)
    sock.close()
    started = time.monotonic()
    assert wait_until(lambda: pending_items(gp)[0]["waiter_count"] == 0, 3), "waiter count did not drop"
    assert time.monotonic() - started < 3


def test_rule_created_during_hold_releases_only_matching_waiter(gp, origin, echo):
    import threading

    results: dict[str, int] = {}

    def connect(name: str, port: int) -> None:
        results[name], sock = socks_connect(gp.ports["socks5"], "127.0.0.2", port)
        sock.close()

    threads = [threading.Thread(target=connect, args=("origin", origin.port)),
               threading.Thread(target=connect, args=("echo", echo.port))]
    for t in threads:
        t.start()
    wait_pending(gp, "127.0.0.2", origin.port)
    wait_pending(gp, "127.0.0.2", echo.port)
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "127.0.0.2",
                                              "port_pattern": str(origin.port)})
    assert resp.status_code == 201, resp.text
    threads[0].join(3)
    assert results.get("origin") == 0x00
    time.sleep(0.5)
    assert "echo" not in results, "the other waiter must still be held"
    waiting = {i["destination_port"]: i["waiter_count"] for i in pending_items(gp)}
    assert waiting.get(echo.port) == 1
    gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "127.0.0.2",
                                       "port_pattern": str(echo.port), "action": "deny"})
    threads[1].join(3)
    assert results.get("echo") == 0x02


def test_deleting_allow_rule_tears_down_live_tunnel(gp, echo):
    rule = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "127.0.0.2",
                                              "port_pattern": str(echo.port)}).json()
    rep, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port)
    assert rep == 0
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    assert gp.api("DELETE", f"/api/rules/{rule['id']}").status_code == 200
    sock.settimeout(3)
    started = time.monotonic()
    try:
        data = sock.recv(10)
    except (ConnectionResetError, TimeoutError) as exc:
        data = exc
    assert data == b"" or isinstance(data, ConnectionResetError)
    assert time.monotonic() - started < 2


def test_tunnel_is_byte_exact_with_half_close(gp, echo):
    gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": "127.0.0.2"})
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    for via in ("socks5", "http"):
        if via == "socks5":
            rep, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port)
            assert rep == 0
        else:
            status, _, sock = http_connect(gp.ports["http"], echo.host, echo.port)
            assert status == 200
        import threading

        sender = threading.Thread(target=lambda s=sock: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        received = bytearray()
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            received += chunk
        sender.join()
        sock.close()
        assert bytes(received) == payload, via


def test_restart_keeps_rules_and_pending(gp, origin):
    gp.api("POST", "/api/rules", json={"container_pattern": "a", "destination_pattern": "kept.example"})
    client = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", f"http://{origin.host}:{origin.port}/")
    wait_pending(gp, origin.host, origin.port)
    client.kill()
    client.wait()
    gp.restart()
    rules = gp.api("GET", "/api/rules", params={"destination": "kept.example"}).json()["items"]
    assert [r["destination_pattern"] for r in rules] == ["kept.example"]
    assert [p["destination_host"] for p in pending_items(gp)] == [origin.host]


def test_plain_proxy_passes_100_continue_and_then_the_answer(gp, origin):
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port)}).status_code == 201
    out, err = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-H", "Expect: 100-continue",
                    "--data-binary", "payload-after-continue", f"http://{origin.host}:{origin.port}/post").communicate(30)
    assert out == b"payload-after-continue", err  # the origin echoes the body it got
    assert origin.requests[-1]["body"] == b"payload-after-continue"
