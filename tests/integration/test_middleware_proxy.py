"""External middlewares in a real `greyproxy serve`: a stdio middleware (mw_script.py)
denies, rewrites and tags requests and blocks or rewrites responses, on the plain proxy path and
inside intercepted HTTPS; it sees credential placeholders, never the secrets; what it did is in
the audit trail, on the transactions and in `GET /api/middlewares`; SIGHUP replaces it."""

from __future__ import annotations

import signal

import pytest
import requests

from tests.integration.mwutil import middleware_yaml, seen_messages
from tests.integration.netutil import wait_until

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca


@pytest.fixture
def mw(gp_factory, tmp_path):
    seen = tmp_path / "seen.jsonl"
    gp = gp_factory(config_yaml=middleware_yaml(seen))
    gp.seen = seen
    for host in ("127.0.0.2", "localhost"):
        resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": host,
                                                  "port_pattern": "*", "action": "allow"})
        assert resp.status_code == 201, resp.text
    return gp


def plain(gp, method: str, url: str, **kw) -> requests.Response:
    session = requests.Session()
    session.trust_env = False
    proxy = f"http://agent1:x@127.0.0.1:{gp.ports['http']}"
    return session.request(method, url, proxies={"http": proxy}, timeout=20, **kw)


def events(gp, **params) -> list[dict]:
    return gp.api("GET", "/api/middlewares/events", params=params).json()["items"]


def test_status_shows_the_connected_middleware_and_its_hooks(mw):
    status = wait_until(lambda: (lambda items: items if items and items[0]["connected"] else None)(
        mw.api("GET", "/api/middlewares").json()["items"]), 10)
    assert status, mw.api("GET", "/api/middlewares").text
    item = status[0]
    assert item["name"] == "test-mw" and item["transport"] == "stdio" and item["version"] == 1
    assert [h["type"] for h in item["hooks"]] == ["http-request", "http-response"]
    assert seen_messages(mw.seen)[0] == {"type": "hello", "version": 1}


def test_plain_path_deny_rewrite_tag_and_filters(mw, origin):
    base = f"http://127.0.0.2:{origin.port}"
    denied = plain(mw, "GET", f"{base}/mw/deny")
    assert denied.status_code == 451 and denied.text == "denied by the test middleware\n"
    assert denied.headers["X-Greyproxy-Reason"] == "middleware_denied"
    assert origin.requests == []  # a denied request never leaves

    sent = plain(mw, "POST", f"{base}/mw/rewrite-request", data=b"original body",
                 headers={"Authorization": "Bearer agent-token"})
    assert sent.status_code == 200 and sent.content == b"rewritten body"  # the origin echoes what it got
    got = origin.requests[-1]
    assert got["body"] == b"rewritten body" and got["headers"]["X-Added"] == "yes"
    assert got["headers"]["Authorization"] == "Bearer agent-token"  # a middleware may not set it
    assert got["headers"]["Content-Length"] == str(len(b"rewritten body"))

    assert plain(mw, "GET", f"{base}/mw/tag").status_code == 200
    assert plain(mw, "GET", f"{base}/elsewhere").text == "hello from origin\n"
    uris = [m.get("uri") for m in seen_messages(mw.seen)]
    assert "/elsewhere" not in uris, "the path filter keeps other requests away from the middleware"

    actions = wait_until(lambda: (lambda e: e if len(e) >= 3 else None)(events(mw)), 5)
    assert [(e["action"], e["hook"]) for e in reversed(actions)] == [
        ("deny", "http-request"), ("rewrite", "http-request"), ("tagged-allow", "http-request")]
    assert actions[0]["tags"] == {"reviewed": True} and actions[0]["middleware"] == "test-mw"
    assert actions[-1]["status_code"] == 451 and actions[-1]["container_name"] == "agent1"


def test_plain_path_response_block_and_rewrite_are_recorded_on_the_transaction(mw, origin):
    base = f"http://127.0.0.2:{origin.port}"
    blocked = plain(mw, "GET", f"{base}/mw/block-response")
    assert blocked.status_code == 502 and blocked.text == "blocked by the test middleware\n"
    rewritten = plain(mw, "GET", f"{base}/mw/rewrite-response")
    assert rewritten.status_code == 299 and rewritten.text == "replaced"
    assert rewritten.headers["X-Rewritten"] == "1"
    response_msg = [m for m in seen_messages(mw.seen) if m["type"] == "http-response"][-1]
    assert response_msg["status_code"] == 200
    assert response_msg["response_body"] is not None  # the body the origin sent, for the middleware to judge

    def rewritten_txn():
        items = mw.api("GET", "/api/transactions", params={"container": "agent1"}).json()["items"]
        return next((t for t in items if t["url"].endswith("/mw/rewrite-response")), None)

    txn = wait_until(rewritten_txn, 5)
    assert txn and txn["status_code"] == 299
    assert [(a["middleware"], a["action"]) for a in txn["middleware_actions"]] == [("test-mw", "rewrite")]
    # Written in batches (by whichever worker process took each request): wait for both.
    assert wait_until(lambda: {e["action"] for e in events(mw, hook="http-response")} == {"block", "rewrite"}, 5), \
        events(mw, hook="http-response")


def test_intercepted_https_sees_placeholders_and_can_be_denied(gp_factory, tls_origin, tmp_path):
    seen = tmp_path / "seen.jsonl"
    gp = gp_factory(config_yaml=middleware_yaml(seen) + f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}'}}\n")
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "localhost",
                                              "port_pattern": "*", "action": "allow"}).status_code == 201
    cred = gp.api("POST", "/api/credentials", json={"label": "apikey", "value": "real-secret-value"}).json()
    session = requests.Session()
    session.trust_env = False
    kw = {"proxies": {"https": f"socks5h://agent1:x@127.0.0.1:{gp.ports['socks5']}"},
          "verify": str(gp.data_dir / "ca-cert.pem"), "timeout": 20}
    url = f"https://localhost:{tls_origin.port}"
    ok = session.post(f"{url}/mw/pass", data=b"{}", headers={"X-Api-Key": cred["placeholder"]}, **kw)
    assert ok.status_code == 200
    assert tls_origin.seen[-1]["headers"]["X-Api-Key"] == "real-secret-value"  # substituted after the middleware
    request_msg = [m for m in seen_messages(seen) if m["type"] == "http-request"][-1]
    assert request_msg["tls"] is True and request_msg["host"] == "localhost"
    assert request_msg["headers"]["X-Api-Key"] == [cred["placeholder"]]
    assert "real-secret-value" not in seen.read_text()

    denied = session.get(f"{url}/mw/deny", **kw)
    assert denied.status_code == 451 and denied.text == "denied by the test middleware\n"
    assert [s["path"] for s in tls_origin.seen] == ["/mw/pass"]


def test_sighup_without_the_middleware_lets_requests_through(mw, origin):
    base = f"http://127.0.0.2:{origin.port}"
    assert plain(mw, "GET", f"{base}/mw/deny").status_code == 451
    mw.config_path.write_text("")  # no middlewares any more
    mw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: mw.api("GET", "/api/middlewares").json()["items"] == [], 10)
    assert plain(mw, "GET", f"{base}/mw/deny").text == "hello from origin\n"


def test_bad_middleware_config_refuses_to_start(gp_factory):
    with pytest.raises(RuntimeError, match=r"middlewares\[0\]"):
        gp_factory(config_yaml="middlewares:\n  - {command: [x], url: 'ws://127.0.0.1:1'}\n")


def test_expect_continue_is_answered_before_the_body_is_read_for_a_middleware(mw, origin):
    import base64
    import socket

    auth = base64.b64encode(b"agent1:x").decode()
    head = (f"POST http://127.0.0.2:{origin.port}/mw/rewrite-request HTTP/1.1\r\nHost: 127.0.0.2:{origin.port}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            "Connection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", mw.ports["http"]), timeout=10) as sock:
        sock.sendall(head.encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # not a wait for a body never sent
        sock.sendall(b"hello")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    while answer.startswith(b"HTTP/1.1 100"):  # the origin's own 100 Continue is passed on too
        answer = answer.split(b"\r\n\r\n", 1)[1]
    assert answer.split(b"\r\n", 1)[0].endswith(b"200 OK") and answer.endswith(b"rewritten body")
    assert origin.requests[-1]["body"] == b"rewritten body"
