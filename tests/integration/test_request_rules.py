"""Request-level rules (docs/request-rules.md) on a real `greyproxy serve`, real sockets and a
real origin: a POST held while GETs on the same connection pass, released through REST and
through /ws, its body reaching the origin byte-identical; deny answers 403 with the reason."""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
import websocket

from tests.integration.netutil import wait_until

BODY = bytes(range(256)) * 40 + b"\r\n\r\nPOST /smuggled HTTP/1.1\r\n\r\n" + os.urandom(3000)


def api_ok(gp, method, path, **kw):
    resp = gp.api(method, path, **kw)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


@pytest.fixture
def held_gp(gp_factory, origin):
    gp = gp_factory(hold_seconds=15)
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                           "port_pattern": str(origin.port)})
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                           "port_pattern": str(origin.port), "action": "hold",
                                           "method_pattern": "POST", "path_pattern": "/v1/*"})
    return gp


class ProxyConn:
    """One keep-alive client connection to the HTTP proxy, absolute-URI requests."""

    def __init__(self, gp, origin) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=20)
        self.base = f"http://{origin.host}:{origin.port}"
        self.auth = base64.b64encode(b"agent1:x").decode()
        self.buf = b""

    def send(self, method: str, path: str, body: bytes = b"", extra: str = "") -> None:
        head = (f"{method} {self.base}{path} HTTP/1.1\r\nHost: {self.base[7:]}\r\n"
                f"Proxy-Authorization: Basic {self.auth}\r\nContent-Length: {len(body)}\r\n{extra}\r\n")
        self.sock.sendall(head.encode() + body)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before a response: {self.buf!r}"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def waiting(self, seconds: float = 0.5) -> bool:
        """No answer has come within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(20)
        return False  # an answer (or a close) came


def held_item(gp, **match) -> dict:
    def find():
        items = gp.api("GET", "/api/pending-http?status=pending").json()["items"]
        return next((i for i in items if all(i[k] == v for k, v in match.items())), None)

    item = wait_until(find, 10)
    assert item, gp.api("GET", "/api/pending-http").json()
    return item


def test_post_is_held_while_get_passes_and_rest_approval_releases_it(held_gp, origin):
    gp = held_gp
    conn = ProxyConn(gp, origin)
    conn.send("GET", "/v1/x")
    assert conn.response()[0] == 200
    conn.send("POST", "/v1/x", BODY, extra="Authorization: Bearer sk-very-secret-token\r\n"
                                          "Content-Type: application/octet-stream\r\n")
    item = held_item(gp, method="POST")
    assert item["url"] == f"http://{origin.host}:{origin.port}/v1/x" and item["path"] == "/v1/x"
    assert item["headers"]["Authorization"] == ["[REDACTED]"]
    assert item["body_size"] == len(BODY) and item["body_preview"]
    assert "sk-very-secret-token" not in json.dumps(item)
    assert conn.waiting(), "the held request must not be answered before a human decides"
    assert [r["path"] for r in origin.requests] == ["/v1/x"]  # only the GET reached the origin
    assert gp.api("GET", "/api/pending-http/count").json() == {"count": 1}
    assert gp.api("GET", f"/api/pending-http/{item['id']}").json()["status"] == "pending"
    out = api_ok(gp, "POST", f"/api/pending-http/{item['id']}/allow", json={})
    assert out["rule"] is None and out["request"]["status"] == "allowed"
    code, _, echoed = conn.response()
    assert code == 200 and echoed == BODY  # the origin echoes what it received
    assert origin.requests[-1]["body"] == BODY  # byte-identical
    conn.send("GET", "/v1/x")  # the same connection carries on
    assert conn.response()[0] == 200
    conn.send("POST", "/v1/x", b"again")  # "once" wrote no rule: held again
    again = held_item(gp, method="POST")
    assert again["id"] != item["id"]
    gp.api("POST", f"/api/pending-http/{again['id']}/deny", json={})
    assert conn.response()[0] == 403
    done = gp.api("GET", "/api/pending-http?status=allowed").json()["items"]
    assert [d["id"] for d in done] == [item["id"]]
    audit = gp.api("GET", "/api/audit", params={"kind": "pending_http"}).json()["items"]
    kinds = sorted((a["kind"], a["target"]) for a in audit)
    assert kinds == sorted([("pending_http.allow", f"pending_http:{item['id']}"),
                            ("pending_http.deny", f"pending_http:{again['id']}")]), audit
    assert all(a["actor"] == "api" or a["actor"] == "token" for a in audit), audit
    assert "sk-very-secret-token" not in json.dumps(audit)


def test_ws_approval_releases_and_writes_a_rule(held_gp, origin):
    gp = held_gp
    ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws",
                                     header=[f"Authorization: Bearer {gp.token}"], timeout=10)
    assert json.loads(ws.recv())["type"] == "connected"
    conn = ProxyConn(gp, origin)
    conn.send("POST", "/v1/y", BODY)
    created = None
    deadline = time.monotonic() + 10
    while created is None and time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("type") == "pending_http.created":
            created = msg["data"]
    assert created and created["method"] == "POST" and created["path"] == "/v1/y"
    ws.send(json.dumps({"command": "allow_request", "request_id": created["id"], "duration": "1h"}))
    reply = None
    while reply is None:
        msg = json.loads(ws.recv())
        if msg.get("type") in ("command_success", "error"):
            reply = msg
    assert reply["type"] == "command_success" and reply["rule_id"], reply
    code, _, echoed = conn.response()
    assert code == 200 and echoed == BODY and origin.requests[-1]["body"] == BODY
    rule = api_ok(gp, "GET", f"/api/rules/{reply['rule_id']}")
    assert (rule["action"], rule["method_pattern"], rule["path_pattern"]) == ("allow", "POST", "/v1/y")
    assert rule["expires_at"]
    # the rule now lets the same request through at once
    conn.send("POST", "/v1/y", b"second")
    assert conn.response()[0] == 200
    test = api_ok(gp, "POST", "/api/rules/test", json={"container": "agent1", "destination": origin.host,
                                                        "port": origin.port, "method": "POST", "path": "/v1/y"})
    assert test["decision"] == "allow" and test["rule"]["id"] == rule["id"] and test["level"] == "request"
    # answering twice is refused
    ws.send(json.dumps({"command": "deny_request", "request_id": created["id"]}))
    while True:
        msg = json.loads(ws.recv())
        if msg.get("type") in ("command_success", "error"):
            break
    assert msg["type"] == "error" and "no longer waiting" in msg["error"]
    ws.close()


def test_deny_answers_403_with_the_reason_and_nothing_reaches_the_origin(held_gp, origin):
    gp = held_gp
    conn = ProxyConn(gp, origin)
    conn.send("POST", "/v1/z", BODY)
    item = held_item(gp, method="POST")
    api_ok(gp, "POST", f"/api/pending-http/{item['id']}/deny", json={"reason": "not during the freeze"})
    code, headers, text = conn.response()
    assert code == 403 and headers["x-greyproxy-reason"] == "request_denied"
    assert b"not during the freeze" in text and b"POST" in text
    assert origin.requests == []
    conn.send("GET", "/v1/z")  # the body was read whole: the connection stays usable
    assert conn.response()[0] == 200


def test_request_deny_rules_answer_at_once_whatever_the_spelling(held_gp, origin):
    gp = held_gp
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                           "port_pattern": str(origin.port), "action": "deny",
                                           "path_pattern": "/admin"})
    for path in ("/admin", "//admin/", "/x/../ADMIN", "/%61dmin", "/admin;x=1", "/admin?x=1"):
        conn = ProxyConn(gp, origin)
        conn.send("GET", path)
        code, headers, text = conn.response()
        assert code == 403 and headers["x-greyproxy-reason"] == "denied_by_request_rule", (path, text)
    assert origin.requests == []


def test_a_held_request_times_out_as_a_403(gp_factory, origin):
    gp = gp_factory(hold_seconds=1)
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host})
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                           "action": "hold", "method_pattern": "DELETE"})
    conn = ProxyConn(gp, origin)
    conn.send("DELETE", "/thing")
    code, headers, _ = conn.response()
    assert code == 403 and headers["x-greyproxy-reason"] == "pending_timeout"
    assert gp.api("GET", "/api/pending-http?status=expired").json()["total"] == 1


def test_bad_input_to_the_held_request_routes(held_gp):
    gp = held_gp
    assert gp.api("GET", "/api/pending-http/abc").status_code == 400
    assert gp.api("GET", "/api/pending-http/123").status_code == 404
    assert gp.api("POST", "/api/pending-http/123/allow", json={}).status_code == 404
    assert gp.api("POST", "/api/pending-http/123/allow", json={"bogus": 1}).status_code == 400
    assert gp.api("GET", "/api/pending-http?status=nope").status_code == 400
    assert gp.api("GET", "/api/pending-http", token=False).status_code == 401
    bad_rule = {"container_pattern": "a", "destination_pattern": "b.example", "action": "hold"}
    assert gp.api("POST", "/api/rules", json=bad_rule).status_code == 400
    bad_rule.update(path_pattern="no-slash")
    assert gp.api("POST", "/api/rules", json=bad_rule).status_code == 400


def test_cli_rules_test_says_which_rule_decides(held_gp, origin):
    import subprocess
    import sys

    def cli(*args):
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return subprocess.run([sys.executable, "-m", "greyproxy", "rules", "test", *args, "--data-dir",
                               str(held_gp.data_dir)], capture_output=True, text=True, timeout=30, env=env)

    base = f"http://{origin.host}:{origin.port}"
    out = cli("agent1", f"{base}/v1/x", "POST")
    assert out.returncode == 0, out.stderr
    assert "hold (held_by_request_rule)" in out.stdout and "POST /v1/*" in out.stdout, out.stdout
    assert "connection: allow (allowed_by_rule)" in out.stdout
    out = cli("agent1", f"{base}/v1/x")
    assert "allow (allowed_by_rule)" in out.stdout, out.stdout
    out = cli("agent1", f"{origin.host}:{origin.port}", "--json")
    assert json.loads(out.stdout)["level"] == "connection"
    out = cli("other", f"{base}/")
    assert "hold (no_matching_rule)" in out.stdout and "rule: none" in out.stdout
    out = cli("agent1", "ftp://x/")
    assert out.returncode == 2 and "scheme" in out.stderr


def _hold_on_tls_origin(gp, container, port):
    for body in ({"container_pattern": container, "destination_pattern": "localhost", "port_pattern": str(port)},
                 {"container_pattern": container, "destination_pattern": "localhost", "port_pattern": str(port),
                  "action": "hold", "method_pattern": "POST", "path_pattern": "/upload"}):
        api_ok(gp, "POST", "/api/rules", json=body)


def test_intercepted_https_request_is_held_and_released_byte_identical(intercepting_gp, tls_origin, tmp_path):
    import subprocess

    gp = intercepting_gp(hold_seconds=30)
    _hold_on_tls_origin(gp, "tlsagent", tls_origin.port)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(BODY)
    url = f"https://localhost:{tls_origin.port}"
    proxy = f"http://tlsagent:x@127.0.0.1:{gp.ports['http']}"
    client = subprocess.Popen(
        ["curl", "-sS", "--noproxy", "", "--max-time", "30", "--cacert", str(gp.ca_path), "-x", proxy,
         "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{payload}", f"{url}/upload",
         "--next", "--cacert", str(gp.ca_path), "-x", proxy, f"{url}/after"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    item = held_item(gp, method="POST", container_name="tlsagent")
    assert item["url"] == f"{url}/upload" and item["body_size"] == len(BODY)
    assert [s["method"] for s in tls_origin.seen] == []
    api_ok(gp, "POST", f"/api/pending-http/{item['id']}/allow", json={})
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert out.startswith(BODY) and out.endswith(b"hello over tls\n")
    assert tls_origin.seen[0]["body"] == BODY and tls_origin.seen[1]["path"] == "/after"


def test_http2_stream_is_held_too(intercepting_gp, tls_origin):
    import ssl
    import threading

    import httpx

    gp = intercepting_gp(hold_seconds=30)
    _hold_on_tls_origin(gp, "h2agent", tls_origin.port)
    url = f"https://localhost:{tls_origin.port}"
    results: dict[str, object] = {}
    with httpx.Client(http1=False, http2=True, proxy=f"http://h2agent:x@127.0.0.1:{gp.ports['http']}",
                      verify=ssl.create_default_context(cafile=str(gp.ca_path)), trust_env=False,
                      timeout=30) as client:
        worker = threading.Thread(target=lambda: results.setdefault("post", client.post(f"{url}/upload",
                                                                                        content=BODY)))
        worker.start()
        item = held_item(gp, method="POST", container_name="h2agent")
        assert item["body_size"] == len(BODY)
        api_ok(gp, "POST", f"/api/pending-http/{item['id']}/deny", json={"reason": "no uploads"})
        worker.join(30)
        post = results["post"]
        assert post.http_version == "HTTP/2"  # type: ignore[attr-defined]
        assert post.status_code == 403 and b"no uploads" in post.content  # type: ignore[attr-defined]
        assert client.get(f"{url}/after").status_code == 200  # the connection carries on
    assert [s["path"] for s in tls_origin.seen] == ["/after"]


def test_events_stream_carries_held_requests(held_gp, origin):
    import requests

    gp = held_gp
    seen: list[str] = []
    with requests.get(f"{gp.api_url}/api/events?types=pending_http.created,pending_http.allowed",
                      headers={"Authorization": f"Bearer {gp.token}"}, stream=True, timeout=20) as stream:
        conn = ProxyConn(gp, origin)
        conn.send("POST", "/v1/sse", b"x")
        item = held_item(gp, method="POST")
        api_ok(gp, "POST", f"/api/pending-http/{item['id']}/allow", json={})
        assert conn.response()[0] == 200
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
            if len(seen) == 2:
                break
    assert seen == ["pending_http.created", "pending_http.allowed"]


def test_a_tunnel_that_would_not_be_inspected_is_refused_when_request_rules_apply(gp_factory, tls_origin):
    import subprocess

    gp = gp_factory(config_yaml="mitm: {enabled: false}\n")
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "localhost",
                                           "port_pattern": str(tls_origin.port)})

    def fetch():
        return subprocess.run(["curl", "-sS", "--noproxy", "", "--max-time", "20", "--cacert", str(tls_origin.ca_path),
                               "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                               f"https://localhost:{tls_origin.port}/piped"], capture_output=True, timeout=30)

    assert fetch().stdout == b"hello over tls\n"  # piped: no request rule to enforce
    rule = api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "localhost",
                                                  "port_pattern": str(tls_origin.port), "action": "deny",
                                                  "path_pattern": "/admin"})
    done = fetch()
    assert done.returncode != 0 and b"access denied" in done.stderr, done.stderr
    assert [s["path"] for s in tls_origin.seen] == ["/piped"]
    rows = wait_until(lambda: [r for r in gp.api("GET", "/api/logs").json()["items"]
                               if r["reason"] == "request_rules_uninspected"])
    assert rows, "the refusal is logged with its reason"
    gp.api("DELETE", f"/api/rules/{rule['id']}")
    assert fetch().stdout == b"hello over tls\n"


def test_http2_other_streams_flow_while_one_is_held(intercepting_gp, tls_origin):
    import ssl

    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset

    from tests.integration.netutil import http_connect

    gp = intercepting_gp(hold_seconds=30)
    _hold_on_tls_origin(gp, "h2raw", tls_origin.port)
    code, _, raw = http_connect(gp.ports["http"], "localhost", tls_origin.port, user="h2raw")
    assert code == 200
    ctx = ssl.create_default_context(cafile=str(gp.ca_path))
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    authority = f"localhost:{tls_origin.port}"

    def headers(method: str, path: str, length: int | None = None) -> list[tuple[str, str]]:
        out = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
        return out + ([("content-length", str(length))] if length is not None else [])

    conn.send_headers(1, headers("POST", "/upload", 5))
    conn.send_data(1, b"hello", end_stream=True)
    sock.sendall(conn.data_to_send())
    held = held_item(gp, method="POST", container_name="h2raw")
    conn.send_headers(3, headers("GET", "/meanwhile"), end_stream=True)
    sock.sendall(conn.data_to_send())
    status: dict[int, int] = {}
    bodies: dict[int, bytes] = {1: b"", 3: b""}
    ended: set[int] = set()
    sock.settimeout(15)

    def pump(until) -> None:  # noqa: ANN001
        for _ in range(200):  # bounded
            if until():
                return
            data = sock.recv(65536)
            assert data, "the connection closed"
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    status[event.stream_id] = int(dict(event.headers)[":status"])
                elif isinstance(event, DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded | StreamReset):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())

    pump(lambda: 3 in ended)
    assert status[3] == 200 and bodies[3] == b"hello over tls\n" and 1 not in status  # GET done, POST held
    api_ok(gp, "POST", f"/api/pending-http/{held['id']}/allow", json={})
    pump(lambda: 1 in ended)
    assert status[1] == 200 and bodies[1] == b"hello"
    assert [s["path"] for s in tls_origin.seen] == ["/meanwhile", "/upload"]
    sock.close()


def test_report_mode_lets_the_request_through_and_logs_what_would_have_happened(gp_factory, origin):
    gp = gp_factory(config_yaml="container_modes: [{container: agent1, mode: report}]\n")
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host})
    api_ok(gp, "POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                           "action": "hold", "method_pattern": "POST"})
    conn = ProxyConn(gp, origin)
    conn.send("POST", "/v1/report", b"data")
    assert conn.response()[0] == 200 and origin.requests[-1]["body"] == b"data"
    rows = wait_until(lambda: [r for r in gp.api("GET", "/api/logs").json()["items"] if r.get("would") == "would_hold"])
    assert rows and rows[0]["method"] == "POST" and rows[0]["reason"] == "report_mode"
    assert gp.api("GET", "/api/pending-http").json()["total"] == 0
