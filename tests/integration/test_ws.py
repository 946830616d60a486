"""Control WebSocket `/ws` against a real `greyproxy serve` (docs/decisions.md#audit-observability-traffic-tools)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import websocket

from tests.backends import database_url  # noqa: F401 - every test here runs on SQLite and PostgreSQL


def connect(gp, token: bool = True, **kw) -> websocket.WebSocket:
    headers = [f"Authorization: Bearer {gp.token}"] if token else []
    return websocket.create_connection(
        f"ws://127.0.0.1:{gp.ports['api']}/ws", header=headers, timeout=10, **kw
    )


@pytest.fixture
def ws(gp):
    sock = connect(gp)
    hello = json.loads(sock.recv())
    assert hello["type"] == "connected"
    yield sock
    sock.close()


def command(ws, **cmd) -> dict:
    """Send a command and return its reply, skipping bus events that arrive in between."""
    ws.send(json.dumps(cmd))
    return next_message(ws, lambda m: "data" not in m)


def next_message(ws, accept, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if accept(msg):
            return msg
    raise AssertionError(f"no matching message within {timeout}s")


def next_event(ws, event_type: str) -> dict:
    return next_message(ws, lambda m: m.get("type") == event_type)


def test_connected_then_ping_pong(gp):
    sock = connect(gp)
    hello = json.loads(sock.recv())
    assert hello["type"] == "connected"
    assert hello["message"] == "Connected to proxy event stream"
    assert hello["timestamp"].endswith("Z")
    reply = command(sock, command="ping")
    assert reply["type"] == "pong" and reply["timestamp"]
    sock.close()


def test_handshake_needs_token_host_and_origin(gp):
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        connect(gp, token=False)
    assert exc.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        connect(gp, origin="http://evil.example")
    assert exc.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        connect(gp, host="rebound.example", suppress_origin=True)
    assert exc.value.status_code == 403
    same_origin = connect(gp, origin=f"http://localhost:{gp.ports['api']}")
    assert json.loads(same_origin.recv())["type"] == "connected"
    same_origin.close()


def test_plain_get_on_ws_is_a_json_error(gp):
    resp = gp.api("GET", "/ws")
    assert resp.status_code == 400 and "error" in resp.json()


COMMAND_ERRORS = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "invalid JSON"),
    (json.dumps({"command": "fly"}), "unknown command: fly"),
    (json.dumps({"nothing": 1}), "unknown command"),
    (json.dumps({"command": "allow", "pending_id": 424242}), "pending request 424242 not found"),
    (json.dumps({"command": "deny", "pending_id": 424242}), "pending request 424242 not found"),
    (json.dumps({"command": "dismiss", "pending_id": 424242}), "pending request not found"),
    (json.dumps({"command": "allow"}), "pending_id"),
    (json.dumps({"command": "deny", "pending_id": "abc"}), "pending_id"),
    (json.dumps({"command": "allow", "pending_id": 1, "scope": "galaxy"}), "scope"),
    (json.dumps({"command": "allow", "pending_id": 1, "duration": "forever"}), "duration"),
    (json.dumps({"command": "subscribe"}), "event_type is required for subscribe"),
    (json.dumps({"command": "unsubscribe", "event_type": ""}), "event_type is required for unsubscribe"),
]


def test_command_errors(ws):
    for message, error in COMMAND_ERRORS:
        ws.send(message)
        reply = next_message(ws, lambda m: "data" not in m)
        assert reply["type"] == "error", (message, reply)
        assert error in reply["error"], (message, reply)
        assert reply["timestamp"]
    # The connection survives bad commands.
    assert command(ws, command="ping")["type"] == "pong"


def test_receives_every_event_by_default(gp, ws):
    rule = gp.api(
        "POST", "/api/rules", json={"container_pattern": "a", "destination_pattern": "ws.example.com"}
    ).json()
    event = next_event(ws, "rule.created")
    assert event == {"type": "rule.created", "data": rule}
    gp.api("POST", "/api/allowall", json={"mode": "deny", "duration": "5m"})
    changed = next_event(ws, "allowall.changed")
    assert changed["data"]["active"] is True and changed["data"]["mode"] == "deny"
    gp.api("PUT", "/api/settings", json={"theme": "dark"})
    assert next_event(ws, "settings.changed")["data"]["theme"] == "dark"


def test_subscribe_filters_and_unsubscribe_silences(gp, ws):
    reply = command(ws, command="subscribe", event_type="rule.deleted")
    assert reply["type"] == "subscribed" and reply["event_type"] == "rule.deleted"
    rule = gp.api(
        "POST", "/api/rules", json={"container_pattern": "a", "destination_pattern": "f.example.com"}
    ).json()
    gp.api("DELETE", f"/api/rules/{rule['id']}")
    first = json.loads(ws.recv())
    assert first["type"] == "rule.deleted" and first["data"]["id"] == rule["id"]  # no rule.created before it

    reply = command(ws, command="unsubscribe", event_type="rule.deleted")
    assert reply["type"] == "unsubscribed" and reply["event_type"] == "rule.deleted"
    rule = gp.api(
        "POST", "/api/rules", json={"container_pattern": "a", "destination_pattern": "g.example.com"}
    ).json()
    gp.api("DELETE", f"/api/rules/{rule['id']}")
    ws.send(json.dumps({"command": "ping"}))
    assert json.loads(ws.recv())["type"] == "pong"  # an empty filter delivers nothing


def test_notification_claims_are_counted_and_released(gp, ws):
    reply = command(ws, command="claim_notifications")
    expected = {"type": "notification_claimed", "active_claims": 1, "timestamp": reply["timestamp"]}
    if shutil.which("notify-send") is None:  # the claim still quiets dashboards, and says there is no backend
        expected.update(backend="none", warning=reply.get("warning"))
        assert "no desktop notification backend" in reply["warning"]
    assert reply == expected
    assert next_event(ws, "notification.claims_changed")["data"] == {"active_claims": 1}
    again = command(ws, command="claim_notifications")
    assert again["type"] == "error" and "already claimed" in again["error"]

    other = connect(gp)
    json.loads(other.recv())
    assert command(other, command="claim_notifications")["active_claims"] == 2
    assert gp.api("GET", "/api/notifications").json()["active_claims"] == 2
    assert gp.api("GET", "/api/settings").json()["notifications"]["activeClaims"] == 2

    other.close()  # closing the socket releases its claim
    released = next_message(
        ws, lambda m: m.get("type") == "notification.claims_changed" and m["data"]["active_claims"] == 1
    )
    assert released["data"] == {"active_claims": 1}
    assert gp.wait_for(lambda: gp.api("GET", "/api/notifications").json()["active_claims"] == 1)


def test_closed_sockets_are_cleaned_up(gp):
    # Many short-lived connections must not leave subscriptions or claims behind.
    for _ in range(20):
        sock = connect(gp)
        json.loads(sock.recv())
        command(sock, command="claim_notifications")
        sock.close()
    assert gp.wait_for(lambda: gp.api("GET", "/api/notifications").json()["active_claims"] == 0)
    assert gp.api("GET", "/api/health").status_code == 200


def test_slow_reader_gets_whole_messages(gp, ws):
    # Fill the socket while the client is not reading: every event must still arrive intact.
    notes = "n" * 250_000
    for i in range(30):
        resp = gp.api(
            "POST",
            "/api/rules",
            json={"container_pattern": "slow", "destination_pattern": f"h{i}.example", "notes": notes},
        )
        assert resp.status_code == 201
    seen = [next_event(ws, "rule.created")["data"]["destination_pattern"] for _ in range(30)]
    assert seen == [f"h{i}.example" for i in range(30)]
