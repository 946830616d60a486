"""Approving from the control WebSocket releases the held connection (docs/decisions.md#audit-observability-traffic-tools)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import websocket

from tests.integration.netutil import socks_connect
from tests.workers import workers  # noqa: F401 - decisions with one data-path process and with two

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca


def ws_connect(gp) -> websocket.WebSocket:
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{gp.ports['api']}/ws", header=[f"Authorization: Bearer {gp.token}"], timeout=10
    )
    assert json.loads(ws.recv())["type"] == "connected"
    return ws


def next_event(ws, wanted: str, timeout: float = 5.0, seen: list | None = None) -> dict:
    """The next message of type `wanted`; every message read on the way is appended to `seen`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if seen is not None:
            seen.append(msg)
        if msg.get("type") == wanted:
            return msg
    raise AssertionError(f"no {wanted} event within {timeout}s")


def test_ws_allow_releases_held_connection(gp, origin):
    ws = ws_connect(gp)
    result = {}

    def connect():
        result["rep"], sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)
        # Host names the admitted destination: inside a tunnel any other name is refused.
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        result["body"] = data
        sock.close()

    t = threading.Thread(target=connect)
    t.start()
    seen: list[dict] = []
    created = next_event(ws, "pending_request.created", seen=seen)
    assert created["data"]["destination_port"] == origin.port
    # the waiter is counted as soon as the hold starts, which may be before the row is written
    waiters = [m["data"] for m in seen if m["type"] == "waiters.changed"]
    if not waiters:
        waiters = [next_event(ws, "waiters.changed")["data"]]
    assert waiters[0]["current_count"] == 1 and waiters[0]["port"] == origin.port
    ws.send(json.dumps({"command": "allow", "pending_id": created["data"]["id"], "scope": "any_port",
                        "duration": "1h"}))
    reply = next_event(ws, "command_success")
    assert reply["command"] == "allow" and reply["rule_id"]
    t.join(5)
    assert result["rep"] == 0
    assert origin.body in result["body"]
    rule = gp.api("GET", "/api/rules", params={"destination": origin.host}).json()["items"][0]
    assert rule["port_pattern"] == "*" and rule["rule_type"] == "temporary" and rule["expires_at"]
    ws.close()


def test_ws_deny_blocks_held_connection(gp, origin):
    ws = ws_connect(gp)
    result = {}

    def connect():
        result["rep"], sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)
        sock.close()

    t = threading.Thread(target=connect)
    t.start()
    created = next_event(ws, "pending_request.created")
    ws.send(json.dumps({"command": "deny", "pending_id": created["data"]["id"]}))
    next_event(ws, "command_success")
    t.join(3)
    assert result["rep"] == 0x02
    ws.close()
