"""The sandbox launcher's protocol (docs/sessions.md): sessions, session rules,
credential placeholders swapped for real secrets on the way out, never stored."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.integration.netutil import EchoServer, http_connect, socks_connect, told_in_tunnel, wait_until

CURL = ["curl", "-sS", "--noproxy", "", "--max-time", "15"]
SESSION_ID = "gw-0123456789abcdef"
SESSION_PH = "greyproxy:credential:v1:gw-0123456789abcdef:" + "a" * 32
SESSION_SECRET = "session-secret-VALUE-4242"
GLOBAL_SECRET = "sk-global-real-secret-987654321"


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture
def sgp(intercepting_gp):
    return intercepting_gp(hold_seconds=2)


def make_session(gp, origin_port: int, tls_port: int, **extra) -> dict:
    glob = gp.api("POST", "/api/credentials", json={"label": "openai", "value": GLOBAL_SECRET}).json()
    body = {
        "session_id": SESSION_ID,
        "container_name": "claude",
        "mappings": {SESSION_PH: SESSION_SECRET},
        "labels": {SESSION_PH: "github"},
        "global_credentials": ["openai"],
        "network_rules": [
            {"destination_pattern": "127.0.0.2", "port_pattern": str(origin_port)},
            {"destination_pattern": "localhost", "port_pattern": str(tls_port)},
        ],
        "ttl_seconds": 300,
        **extra,
    }
    resp = gp.api("POST", "/api/sessions", json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["rules_created"] == 2 and data["global_credentials"] == {"openai": glob["placeholder"]}
    return {"global_ph": glob["placeholder"], **data}


def test_greywall_style_run_end_to_end(sgp, origin, tls_origin):
    s = make_session(sgp, origin.port, tls_origin.port)
    gph = s["global_ph"]
    auth = ["-H", f"Authorization: Bearer {SESSION_PH}", "-H", f"X-Api-Key: {gph}"]
    # plain HTTP through the HTTP proxy (absolute URI) and through SOCKS (sniffed)
    for proxy in (["-x", f"http://claude:x@127.0.0.1:{sgp.ports['http']}"],
                  ["--socks5-hostname", f"claude:x@127.0.0.1:{sgp.ports['socks5']}"]):
        out = run(CURL + proxy + auth + [f"http://127.0.0.2:{origin.port}/q?key={SESSION_PH}&n=1"])
        assert out.returncode == 0 and out.stdout == origin.body, out.stderr
        seen = origin.requests[-1]
        assert seen["headers"]["Authorization"] == f"Bearer {SESSION_SECRET}"
        assert seen["headers"]["X-Api-Key"] == GLOBAL_SECRET
        assert seen["path"] == f"/q?key={SESSION_SECRET}&n=1"
    # HTTPS through interception
    out = run(CURL + ["--cacert", str(sgp.data_dir / "ca-cert.pem"), "-x",
                      f"http://claude:x@127.0.0.1:{sgp.ports['http']}"] + auth
              + [f"https://localhost:{tls_origin.port}/tls?key={SESSION_PH}"])
    assert out.returncode == 0, out.stderr
    assert tls_origin.seen[-1]["headers"]["Authorization"] == f"Bearer {SESSION_SECRET}"
    assert tls_origin.seen[-1]["path"] == f"/tls?key={SESSION_SECRET}"

    # stored traffic and every API output: placeholders only
    items = wait_until(lambda: (lambda t: t if len(t) >= 3 else None)(
        sgp.api("GET", "/api/transactions", params={"container": "claude"}).json()["items"]), 5)
    assert items and len(items) >= 3
    for item in items:
        assert item["session_id"] == SESSION_ID
        assert set(item["substituted_credentials"]) == {"github", "openai"}
    for path in ["/api/transactions?container=claude", f"/api/transactions/{items[0]['id']}", "/api/sessions",
                 "/api/credentials", "/api/logs", f"/api/transactions/{items[0]['id']}/curl",
                 f"/api/transactions/{items[0]['id']}/har"]:
        text = sgp.api("GET", path).text
        assert SESSION_SECRET not in text and GLOBAL_SECRET not in text, path
    detail = sgp.api("GET", f"/api/transactions/{items[0]['id']}").json()
    assert SESSION_PH in detail["url"] or "[REDACTED]" in detail["url"]

    # other destinations are held (pending), the session's ones passed at once
    rep_started = time.monotonic()
    rep, sock = socks_connect(sgp.ports["socks5"], "127.0.0.3", origin.port, user="claude")
    # refused after the hold, and told why inside the tunnel (its CA makes that possible)
    assert rep == 0 and time.monotonic() - rep_started >= 1.5
    assert told_in_tunnel(sock)[:2] == (403, "pending_timeout")
    sock.close()
    assert any(p["destination_host"] == "127.0.0.3" for p in sgp.api("GET", "/api/pending").json()["items"])

    # an open tunnel allowed by a session rule closes when the session is deleted
    echo = EchoServer()
    try:
        sgp.api("POST", "/api/sessions", json={
            "session_id": SESSION_ID, "container_name": "claude", "mappings": {SESSION_PH: SESSION_SECRET},
            "network_rules": [{"destination_pattern": "127.0.0.2"}]})
        rep, tunnel = socks_connect(sgp.ports["socks5"], echo.host, echo.port, user="claude")
        assert rep == 0
        tunnel.sendall(b"\x00hi")
        assert tunnel.recv(3) == b"\x00hi"
        assert sgp.api("DELETE", f"/api/sessions/{SESSION_ID}").json() == {"session_id": SESSION_ID, "deleted": True}
        tunnel.settimeout(3)
        assert tunnel.recv(10) == b""
        rules = sgp.api("GET", "/api/rules").json()["items"]
        assert not [r for r in rules if r["session_id"] == SESSION_ID]
    finally:
        echo.close()


def test_placeholder_outside_its_hosts_is_not_substituted(sgp, origin, tls_origin):
    ph = "greyproxy:credential:v1:gw-bound:" + "b" * 32
    resp = sgp.api("POST", "/api/sessions", json={
        "session_id": "gw-bound", "container_name": "bound",
        "mappings": {ph: {"value": "bound-secret-1234", "hosts": ["api.example.com"]}},
        "network_rules": [{"destination_pattern": "127.0.0.2"}]})
    assert resp.status_code == 200, resp.text
    out = run(CURL + ["-x", f"http://bound:x@127.0.0.1:{sgp.ports['http']}", "-H", f"Authorization: {ph}",
                      f"http://127.0.0.2:{origin.port}/"])
    assert out.returncode == 0
    assert origin.requests[-1]["headers"]["Authorization"] == ph


def test_sessions_and_credentials_survive_restart_encrypted(sgp, origin, tls_origin):
    make_session(sgp, origin.port, tls_origin.port)
    sgp.restart()
    sessions = sgp.api("GET", "/api/sessions").json()
    assert [s["session_id"] for s in sessions] == [SESSION_ID]
    assert sessions[0]["credential_labels"] == ["github", "openai"]
    raw = b"".join(p.read_bytes() for p in sgp.data_dir.glob("greyproxy.db*"))
    assert SESSION_SECRET.encode() not in raw and GLOBAL_SECRET.encode() not in raw
    assert (sgp.data_dir / "session.key").stat().st_mode & 0o777 == 0o600
    out = run(CURL + ["-x", f"http://claude:x@127.0.0.1:{sgp.ports['http']}", "-H", f"Authorization: {SESSION_PH}",
                      f"http://127.0.0.2:{origin.port}/"])
    assert out.returncode == 0 and origin.requests[-1]["headers"]["Authorization"] == SESSION_SECRET


def test_wrong_size_key_file_refuses_credentials_clearly(gp_factory, tmp_path):
    gp = gp_factory(name="badkey")
    gp.stop()
    (gp.data_dir / "session.key").write_bytes(b"short")
    gp.start()
    resp = gp.api("POST", "/api/credentials", json={"label": "x", "value": "secret-value"})
    assert resp.status_code == 503
    assert "32 bytes" in resp.json()["error"]
    assert (gp.data_dir / "session.key").read_bytes() == b"short"  # never silently replaced


def test_newer_session_supersedes_older_rules(sgp, origin):
    sgp.api("POST", "/api/sessions", json={"session_id": "old", "container_name": "agentx",
                                           "network_rules": [{"destination_pattern": "127.0.0.2"}]})
    rep, sock = socks_connect(sgp.ports["socks5"], "127.0.0.2", origin.port, user="agentx")
    sock.close()
    assert rep == 0
    time.sleep(0.01)
    sgp.api("POST", "/api/sessions", json={"session_id": "new", "container_name": "agentx", "allow_all": False,
                                           "network_rules": [{"destination_pattern": "other.example"}]})
    rep, sock = socks_connect(sgp.ports["socks5"], "127.0.0.2", origin.port, user="agentx")
    # held until the 2 s timeout, then blocked (told in the tunnel): old rules no longer match
    assert rep == 0 and told_in_tunnel(sock)[:2] == (403, "pending_timeout")
    sock.close()


def test_proxy_token_binds_identity(sgp, origin):
    token = "t0ken-for-agent-0123456789"
    sgp.api("POST", "/api/sessions", json={"session_id": "gw-tok", "container_name": "tok", "proxy_token": token,
                                           "network_rules": [{"destination_pattern": "127.0.0.2"}]})
    rep, sock = socks_connect(sgp.ports["socks5"], "127.0.0.2", origin.port, user="tok", password="wrong")
    assert rep == 0 and told_in_tunnel(sock)[:2] == (403, "bad_credentials")  # told inside the tunnel
    sock.close()
    status, headers, sock = http_connect(sgp.ports["http"], "127.0.0.2", origin.port, user="tok")
    assert status == 200 and told_in_tunnel(sock)[:2] == (403, "bad_credentials")
    sock.close()
    rep, sock = socks_connect(sgp.ports["socks5"], "127.0.0.2", origin.port, user="tok", password=token)
    sock.close()
    assert rep == 0
    # username = session id binds the session directly
    rep, sock = socks_connect(sgp.ports["socks5"], "127.0.0.2", origin.port, user="gw-tok", password=token)
    sock.close()
    assert rep == 0


def test_allow_all_session_and_its_end(sgp):
    echo = EchoServer(host="127.0.0.4")
    try:
        sgp.api("POST", "/api/sessions", json={"session_id": "learn", "container_name": "learner", "allow_all": True})
        rep, tunnel = socks_connect(sgp.ports["socks5"], echo.host, echo.port, user="learner")
        assert rep == 0
        sgp.api("DELETE", "/api/sessions/learn")
        tunnel.settimeout(3)
        try:
            data = tunnel.recv(10)
        except (TimeoutError, ConnectionResetError) as exc:
            data = exc
        assert data == b"" or isinstance(data, ConnectionResetError)
    finally:
        echo.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"container_name": "c", "allow_all": True}, "session_id and container_name are required"),
        ({"session_id": "s", "allow_all": True}, "session_id and container_name are required"),
        ({"session_id": "s", "container_name": "c"}, "at least one of"),
        ({"session_id": "s", "container_name": "c", "global_credentials": ["nope", "nada"]},
         "unknown global credentials: nope, nada"),
        ({"session_id": "s", "container_name": "c", "mappings": {"notaplaceholder": "v"}}, "is not a placeholder"),
        ({"session_id": "s", "container_name": "c", "network_rules": [{"destination_pattern": "a b"}]}, ""),
        ({"session_id": "s", "container_name": "c", "network_rules": [{"destination_pattern": "x", "port_pattern": "0"}]}, ""),
        ({"session_id": "s", "container_name": "c", "allow_all": True, "proxy_token": "short"}, "proxy_token"),
        ({"session_id": "s", "container_name": "c", "mappings": []}, "'mappings' must be an object"),
    ],
)
def test_invalid_session_bodies_are_400(gp, body, message):
    resp = gp.api("POST", "/api/sessions", json=body)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]


def test_heartbeat_and_missing_session(gp):
    gp.api("POST", "/api/sessions", json={"session_id": "hb", "container_name": "c", "allow_all": True, "ttl_seconds": 60})
    resp = gp.api("POST", "/api/sessions/hb/heartbeat")
    assert resp.status_code == 200 and resp.json()["session_id"] == "hb"
    assert gp.api("POST", "/api/sessions/nope/heartbeat").status_code == 404
    assert gp.api("DELETE", "/api/sessions/nope").status_code == 404
