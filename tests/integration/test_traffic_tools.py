"""Traffic tools through a real `greyproxy serve` and real origins: list filters, the diff of two
transactions, replay with modifications (and never a stored `[REDACTED]`), capture recordings,
HAR import and the full HAR export."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from greyproxy.store.models import HttpTransaction
from tests.integration.netutil import wait_until
from tests.integration.test_transactions_api import (
    allow,
    assert_error,
    seed,
    transactions,
    txn_row,
    via_proxy,
)
from tests.ports import free_port

REDACTED = "[REDACTED]"


class EchoHandler(BaseHTTPRequestHandler):
    """Answers `/status/<code>/...` with that code and a JSON echo of what it received."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        parts = self.path.split("/")
        code = int(parts[2]) if len(parts) > 2 and parts[1] == "status" and parts[2].isdigit() else 200
        out = json.dumps({"method": self.command, "path": self.path, "body": body.decode("utf-8", "replace")}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


class EchoOrigin:
    def __init__(self, host: str = "127.0.0.2") -> None:
        self.server = ThreadingHTTPServer((host, free_port(host)), EchoHandler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        self.host, self.port = host, self.server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.server.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo():
    origin = EchoOrigin()
    yield origin
    origin.close()


def wait_count(gp, count: int, **params) -> list[dict]:
    found = wait_until(lambda: (lambda b: b if b["total"] >= count else None)(transactions(gp, **params)), 5)
    assert found, f"fewer than {count} transactions"
    return found["items"]


# -- list filters --------------------------------------------------------------------------------
def test_list_filters_that_were_ignored(gp, echo):
    allow(gp, echo.host, echo.port)
    agent = via_proxy(gp)
    for path in ("/status/200/alpha", "/status/404/beta", "/status/500/gamma?q=beta"):
        assert agent.get(echo.base + path, timeout=10).status_code == int(path.split("/")[2])
    wait_count(gp, 3)
    seed(gp, HttpTransaction, [
        txn_row(status_code=None, url="https://seed.example/noanswer"),
        txn_row(method="GET", url="https://seed.example/ws", status_code=101),
        txn_row(method="WS_REQ", url="wss://seed.example/ws", status_code=101, request_body=b"x"),
    ])

    def paths(**params) -> set[str]:
        return {i["url"].split("://", 1)[1].split("/", 1)[1] for i in transactions(gp, **params)["items"]}

    assert paths(status_min=400) == {"status/404/beta", "status/500/gamma?q=beta"}
    assert paths(status_min=200, status_max=299) == {"status/200/alpha"}
    assert paths(status_max=101, status_min=101) == {"ws"}
    assert paths(has_error="true") == {"status/404/beta", "status/500/gamma?q=beta", "noanswer"}
    assert "noanswer" not in paths(has_error="false") and "status/200/alpha" in paths(has_error="false")
    assert transactions(gp, is_websocket="true")["total"] == 2
    assert transactions(gp, is_websocket="false")["total"] == 4
    assert paths(search="beta") == {"status/404/beta", "status/500/gamma?q=beta"}
    assert paths(search="seed.example") == {"noanswer", "ws"}
    # path_contains looks at the path only: not the query, not the host
    assert paths(path_contains="beta") == {"status/404/beta"}
    assert transactions(gp, path_contains="127.0.0")["total"] == 0
    assert transactions(gp, path_contains="seed")["total"] == 0
    assert paths(path_contains="100%") == set()  # LIKE wildcards are literal
    # filters combine (AND) and apply to the HAR export too
    assert paths(status_min=400, path_contains="gamma") == {"status/500/gamma?q=beta"}
    har = gp.api("GET", "/api/transactions/export/har", params={"has_error": "true", "container": "agent1"}).json()
    assert sorted(e["response"]["status"] for e in har["log"]["entries"]) == [404, 500]

    for params, word in (({"status_min": "abc"}, "status_min"), ({"status_min": 500, "status_max": 400}, "status_min"),
                         ({"status_max": 5000}, "status_max"), ({"has_error": "maybe"}, "has_error"),
                         ({"is_websocket": "2"}, "is_websocket"), ({"search": "x" * 2000}, "search"),
                         ({"path_contains": "a\x00b"}, "path_contains"), ({"recording_id": "-1"}, "recording_id")):
        assert_error(gp.api("GET", "/api/transactions", params=params), 400, word)


# -- diff ------------------------------------------------------------------------------------------
def test_diff_of_two_transactions(gp, echo):
    allow(gp, echo.host, echo.port)
    agent = via_proxy(gp)
    agent.post(echo.base + "/status/200/x", json={"model": "a", "n": [1, 2], "same": True},
               headers={"X-Only-A": "1", "X-Both": "one"}, timeout=10)
    agent.post(echo.base + "/status/201/x", json={"model": "b", "n": [1, 2, 3], "same": True},
               headers={"X-Both": "two", "X-Only-B": "2"}, timeout=10)
    b, a = wait_count(gp, 2)[:2]
    resp = gp.api("GET", "/api/transactions/diff", params={"a": a["id"], "b": b["id"]})
    assert resp.status_code == 200, resp.text
    d = resp.json()
    assert d["a"]["id"] == a["id"] and d["b"]["id"] == b["id"]
    req = d["request"]
    assert req["method"] == {"equal": True, "a": "POST", "b": "POST"}
    assert req["url"]["equal"] is False and req["url"]["b"].endswith("/status/201/x")
    assert req["headers"]["added"] == {"X-Only-B": ["2"]}
    assert req["headers"]["removed"] == {"X-Only-A": ["1"]}
    assert req["headers"]["changed"]["X-Both"] == {"a": ["one"], "b": ["two"]}
    body = req["body"]
    assert body["equal"] is False and body["truncated"] is False
    assert {(c["path"], c["change"]) for c in body["json_changes"]} == {("model", "changed"), ("n[2]", "added")}
    assert '-{"model": "a"' in body["text_diff"] and '+{"model": "b"' in body["text_diff"]
    assert d["response"]["status_code"] == {"equal": False, "a": 200, "b": 201}
    assert d["response"]["body"]["equal"] is False

    same = gp.api("GET", "/api/transactions/diff", params={"a": a["id"], "b": a["id"]}).json()
    assert same["request"]["body"] == {"equal": True, "a_size": a["request_body_size"],
                                       "b_size": a["request_body_size"], "truncated": False}
    assert same["request"]["headers"]["equal"] is True

    assert_error(gp.api("GET", "/api/transactions/diff", params={"a": a["id"]}), 400, "'b'")
    assert_error(gp.api("GET", "/api/transactions/diff", params={"a": "x", "b": 1}), 400)
    assert_error(gp.api("GET", "/api/transactions/diff", params={"a": "9" * 5000, "b": 1}), 400)
    assert_error(gp.api("GET", "/api/transactions/diff", params={"a": a["id"], "b": 999999}), 404, "not found")


def test_diff_of_large_and_deep_bodies_is_bounded(gp):
    big_a = "\n".join(f"line {i}" for i in range(40_000)).encode()
    big_b = "\n".join(f"line {i * 7}" for i in range(40_000)).encode()
    deep = b"[" * 50_000 + b"]" * 50_000
    seed(gp, HttpTransaction, [txn_row(request_body=big_a, response_body=deep),
                               txn_row(request_body=big_b, response_body=deep + b" ")])
    ids = sorted(i["id"] for i in transactions(gp)["items"])
    resp = gp.api("GET", "/api/transactions/diff", params={"a": ids[0], "b": ids[1]}, timeout=20)
    assert resp.status_code == 200, resp.text
    body = resp.json()["request"]["body"]
    assert body["truncated"] is True and len(body["text_diff"].splitlines()) <= 2000
    assert resp.json()["response"]["body"]["equal"] is False


# -- replay with modifications --------------------------------------------------------------------
def test_replay_with_modifications_goes_through_the_rules(gp, echo):
    allow(gp, echo.host, echo.port)
    agent = via_proxy(gp)
    agent.post(echo.base + "/status/200/orig?keep=1&token=secret-tok", data=b'{"a": 1}',
               headers={"Content-Type": "application/json", "Authorization": "Bearer sk-orig",
                        "X-Drop": "me", "X-Keep": "kept"}, timeout=10)
    item = wait_count(gp, 1)[0]
    assert "secret-tok" not in item["url"]
    echo.seen.clear()

    # the URL's token and the stored Authorization were redacted: refused, nothing sent
    both = gp.api("POST", f"/api/transactions/{item['id']}/replay")
    assert_error(both, 400, "the url")
    assert "header 'Authorization'" in both.json()["error"]
    assert_error(gp.api("POST", f"/api/transactions/{item['id']}/replay",
                        json={"url": echo.base + "/status/200/orig"}), 400, "header 'authorization'")
    assert echo.seen == []

    mods = {"method": "PUT", "url": echo.base + "/status/202/changed?v=2",
            "headers": {"Authorization": "Bearer sk-new", "X-Drop": None, "X-Added": ["a", "b"]},
            "body": '{"b": 2}'}
    resp = gp.api("POST", f"/api/transactions/{item['id']}/replay", json=mods)
    assert resp.status_code == 201, resp.text
    new = resp.json()
    seen = echo.seen[-1]
    assert (seen["method"], seen["path"], seen["body"]) == ("PUT", "/status/202/changed?v=2", b'{"b": 2}')
    assert seen["headers"]["Authorization"] == "Bearer sk-new" and seen["headers"]["X-Keep"] == "kept"
    assert "X-Drop" not in seen["headers"] and seen["headers"]["Host"] == f"{echo.host}:{echo.port}"
    assert seen["headers"]["Content-Length"] == "8"
    assert (new["method"], new["status_code"], new["replay_of"]) == ("PUT", 202, item["id"])
    assert new["request_body"] == '{"b": 2}' and new["request_headers"]["Authorization"] == [REDACTED]
    assert "sk-new" not in json.dumps(new)

    # a body given as base64, and no Authorization at all
    resp = gp.api("POST", f"/api/transactions/{item['id']}/replay",
                  json={"url": echo.base + "/status/200/b64", "headers": {"Authorization": None},
                        "body_base64": "AAEC/w=="})
    assert resp.status_code == 201, resp.text
    assert echo.seen[-1]["body"] == b"\x00\x01\x02\xff" and "Authorization" not in echo.seen[-1]["headers"]

    # a changed URL is a changed destination: the rules decide it, the guards dial it
    sent = len(echo.seen)
    other = EchoOrigin("127.0.0.4")
    try:
        blocked = gp.api("POST", f"/api/transactions/{item['id']}/replay",
                         json={"url": other.base + "/", "headers": {"Authorization": None}})
        assert blocked.status_code == 403 and blocked.json()["reason"] == "no_matching_rule"
        assert other.seen == []
    finally:
        other.close()
    # the request-level rules (method, path) apply to a replay as to a live request
    for action, path in (("deny", "/status/*/secret"), ("hold", "/status/*/held")):
        rule = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": echo.host,
                                                  "port_pattern": str(echo.port), "action": action,
                                                  "method_pattern": "DELETE", "path_pattern": path})
        assert rule.status_code == 201, rule.text
        refused = gp.api("POST", f"/api/transactions/{item['id']}/replay",
                         json={"method": "DELETE", "url": echo.base + path.replace("*", "200"),
                               "headers": {"Authorization": None}})
        assert refused.status_code == 403, refused.text
        assert refused.json()["reason"] == f"{'denied' if action == 'deny' else 'held'}_by_request_rule"
    assert len(echo.seen) == sent
    api = gp.api("POST", f"/api/transactions/{item['id']}/replay",
                 json={"url": f"http://127.0.0.1:{gp.ports['api']}/api/rules", "headers": {"Authorization": None}})
    assert api.status_code in (403, 502) and api.status_code != 201, api.text
    assert len(echo.seen) == sent
    logs = gp.api("GET", "/api/logs", params={"result": "blocked"}).json()["items"]
    assert any(r["destination_host"] == "127.0.0.4" for r in logs)

    base = f"/api/transactions/{item['id']}/replay"
    for body, word in (({"nope": 1}, "nope"), ({"method": "GE T"}, "method"), ({"url": "ftp://x/"}, "ftp"),
                       ({"url": "http://a b/"}, "characters"), ({"url": "http://[::1/"}, "url"),
                       ({"url": "http://exa%mple.com/"}, "host"),
                       ({"headers": {"Host": "evil"}}, "host"), ({"headers": {"Content-Length": "1"}}, "content-length"),
                       ({"headers": {"X-A": "a\r\nX-B: b"}}, "characters"), ({"headers": {"X A": "1"}}, "header name"),
                       ({"headers": {"X-A": 1}}, "x-a"), ({"headers": []}, "headers"),
                       ({"body": "x", "body_base64": "eA=="}, "not both"), ({"body_base64": "!!"}, "base64"),
                       ({"body": 5}, "body"), ([1], "object"), ({"url": "http://a/" + "x" * 9000}, "longer")):
        assert_error(gp.api("POST", base, json=body), 400, word)
    assert len(echo.seen) == sent


def test_replay_refuses_a_stored_redacted_body(gp, echo):
    allow(gp, echo.host, echo.port)
    seed(gp, HttpTransaction, [txn_row(container_name="agent1", destination_host=echo.host, destination_port=echo.port,
                                       method="POST", url=echo.base + "/status/200/",
                                       request_headers=json.dumps({"Content-Type": ["application/json"]}),
                                       request_body=b'{"key": "[REDACTED]"}', request_body_size=20)])
    item = transactions(gp)["items"][0]
    assert_error(gp.api("POST", f"/api/transactions/{item['id']}/replay"), 400, "body")
    assert echo.seen == []
    resp = gp.api("POST", f"/api/transactions/{item['id']}/replay", json={"body": '{"key": "real"}'})
    assert resp.status_code == 201, resp.text
    assert echo.seen[-1]["body"] == b'{"key": "real"}'


def test_replay_swaps_a_credential_placeholder_where_it_belongs(gp, echo):
    allow(gp, echo.host, echo.port)
    secret = "sk-replay-secret-0123456789"
    cred = gp.api("POST", "/api/credentials", json={"label": "echo-key", "value": secret, "hosts": [echo.host]})
    if cred.status_code == 503:
        pytest.skip(cred.json()["error"])  # credential support is off on this node
    assert cred.status_code in (200, 201), cred.text
    placeholder = cred.json()["placeholder"]
    elsewhere = gp.api("POST", "/api/credentials", json={"label": "other-key", "value": "sk-other-secret-0123456",
                                                         "hosts": ["other.example"]}).json()["placeholder"]
    via_proxy(gp).get(echo.base + "/status/200/keyed", headers={"Authorization": "Bearer x"}, timeout=10)
    item = wait_count(gp, 1)[0]

    resp = gp.api("POST", f"/api/transactions/{item['id']}/replay",
                  json={"headers": {"Authorization": f"Bearer {placeholder}", "X-Other": elsewhere},
                        "url": f"{echo.base}/status/200/keyed?key={placeholder}"})
    assert resp.status_code == 201, resp.text
    seen = echo.seen[-1]
    # swapped where it belongs (header and query value), and not for a host it is not bound to
    assert seen["headers"]["Authorization"] == f"Bearer {secret}" and seen["path"].endswith(f"?key={secret}")
    assert seen["headers"]["X-Other"] == elsewhere
    new = resp.json()
    assert new["substituted_credentials"] == ["echo-key"]
    stored = gp.api("GET", f"/api/transactions/{new['id']}").text
    assert secret not in stored and "sk-other-secret" not in stored


# -- capture recordings ---------------------------------------------------------------------------
def test_recording_groups_traffic_and_exports_one_har(gp, echo):
    allow(gp, echo.host, echo.port)
    agent1, agent2 = via_proxy(gp, "agent1"), via_proxy(gp, "agent2")
    agent1.get(echo.base + "/status/200/before", timeout=10)
    resp = gp.api("POST", "/api/recordings", json={"name": "login flow", "container": "agent1"})
    assert resp.status_code == 201, resp.text
    rec = resp.json()
    assert rec["active"] is True and rec["name"] == "login flow" and rec["container_pattern"] == "agent1"
    everyone = gp.api("POST", "/api/recordings", json={"name": "all of it"}).json()

    agent1.get(echo.base + "/status/200/during-1", timeout=10)
    agent2.get(echo.base + "/status/200/during-other", timeout=10)
    gp.restart()  # a running recording survives a restart
    agent1 = via_proxy(gp, "agent1")
    agent1.post(echo.base + "/status/201/during-2", json={"x": 1}, timeout=10)
    stopped = gp.api("POST", f"/api/recordings/{rec['id']}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["active"] is False and stopped.json()["stopped_at"]
    agent1.get(echo.base + "/status/200/after", timeout=10)
    wait_count(gp, 5)

    def urls(**params) -> list[str]:
        return sorted(i["url"].rsplit("/", 1)[1] for i in transactions(gp, **params)["items"])

    # a recording that names the container wins over one that takes every container
    assert urls(recording_id=rec["id"]) == ["during-1", "during-2"]
    assert urls(recording_id=everyone["id"]) == ["after", "during-other"]
    assert "before" not in urls(recording_id=rec["id"]) + urls(recording_id=everyone["id"])
    assert gp.api("GET", f"/api/recordings/{rec['id']}").json()["transaction_count"] == 2

    listing = gp.api("GET", "/api/recordings").json()
    assert listing["total"] == 2 and [r["id"] for r in listing["items"]] == [everyone["id"], rec["id"]]
    assert [r["id"] for r in gp.api("GET", "/api/recordings", params={"active": "true"}).json()["items"]] == [
        everyone["id"]]

    har = gp.api("GET", f"/api/recordings/{everyone['id']}/har")
    assert har.status_code == 200 and "attachment" in har.headers["Content-Disposition"]
    entries = har.json()["log"]["entries"]
    assert sorted(e["request"]["url"].rsplit("/", 1)[1] for e in entries) == urls(recording_id=everyone["id"])
    assert all(e["_greyproxy"]["container"] in ("agent1", "agent2") for e in entries)

    assert_error(gp.api("POST", f"/api/recordings/{rec['id']}/stop"), 409, "not running")
    for body, word in (({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 300}, "name"), ({"name": 5}, "name"),
                       ({"name": "a\x00b"}, "control"), ({"name": "\ud800"}, "surrogate"),
                       ({"name": "ok", "container": "bad\x01"}, "container"), ({"name": "ok", "other": 1}, "other")):
        assert_error(gp.api("POST", "/api/recordings", json=body), 400, word)
    assert_error(gp.api("GET", "/api/recordings/abc"), 400)
    assert_error(gp.api("GET", "/api/recordings/424242"), 404)
    assert_error(gp.api("GET", "/api/recordings", token=False), 401)

    # deleting keeps the traffic unless asked
    kept = gp.api("DELETE", f"/api/recordings/{rec['id']}")
    assert kept.status_code == 200 and kept.json()["transactions_deleted"] == 0
    assert transactions(gp)["total"] == 5
    gone = gp.api("DELETE", f"/api/recordings/{everyone['id']}", params={"delete_transactions": "true"})
    assert gone.json()["transactions_deleted"] == 2 and transactions(gp)["total"] == 3
    assert gp.api("GET", "/api/recordings").json()["total"] == 0


def test_har_import_becomes_replayable_transactions(gp, echo):
    allow(gp, echo.host, echo.port)
    har = {"log": {"version": "1.2", "creator": {"name": "browser", "version": "1"}, "entries": [
        {"startedDateTime": "2026-01-02T03:04:05.123Z", "time": 42,
         "request": {"method": "POST", "url": echo.base + "/status/200/imported?api_key=live-key-123",
                     "headers": [{"name": "Authorization", "value": "Bearer sk-imported-secret"},
                                 {"name": "Content-Type", "value": "application/json"},
                                 {"name": ":authority", "value": "ignored"}],
                     "postData": {"mimeType": "application/json", "text": '{"hello": "world"}'}},
         "response": {"status": 200, "headers": [{"name": "Content-Type", "value": "application/json"}],
                      "content": {"mimeType": "application/json", "text": '{"ok": true}'}}},
        {"startedDateTime": "2026-01-02T03:04:06Z", "time": -1,
         "request": {"method": "GET", "url": "https://ws.example/socket", "headers": []},
         "response": {"status": 101, "headers": [], "content": {}},
         "_webSocketMessages": [{"type": "send", "time": 1767323046.5, "opcode": 1, "data": "ping"},
                                {"type": "receive", "time": 1767323047.0, "opcode": 2, "data": "AAE="}]},
    ]}}
    resp = gp.api("POST", "/api/recordings/import", params={"name": "from browser", "container": "agent1"}, json=har)
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["imported"] == 2 and out["transactions"] == 4 and out["recording"]["source"] == "har"
    rec_id = out["recording"]["id"]
    items = transactions(gp, recording_id=rec_id)["items"]
    assert len(items) == 4 and {i["container_name"] for i in items} == {"agent1"}
    post = next(i for i in items if i["method"] == "POST")
    detail = gp.api("GET", f"/api/transactions/{post['id']}").json()
    assert detail["timestamp"].startswith("2026-01-02T03:04:05") and detail["duration_ms"] == 42
    assert detail["request_body"] == '{"hello": "world"}' and detail["response_body"] == '{"ok": true}'
    # secrets in an imported file are redacted like any capture
    assert detail["request_headers"]["Authorization"] == [REDACTED] and "live-key-123" not in detail["url"]
    assert ":authority" not in detail["request_headers"]
    # the recording's HAR carries the frames on their upgrade (bytes that are UTF-8 come back as text)
    exported = gp.api("GET", f"/api/recordings/{rec_id}/har").json()["log"]["entries"]
    assert [(m["type"], m["data"]) for m in exported[1]["_webSocketMessages"]] == [("send", "ping"),
                                                                                    ("receive", "\x00\x01")]
    # and replay sends it (a value for the redacted header and URL is asked for first)
    assert_error(gp.api("POST", f"/api/transactions/{post['id']}/replay"), 400, "authorization")
    resp = gp.api("POST", f"/api/transactions/{post['id']}/replay",
                  json={"headers": {"Authorization": "Bearer fresh"}, "url": echo.base + "/status/200/imported"})
    assert resp.status_code == 201, resp.text
    assert echo.seen[-1]["body"] == b'{"hello": "world"}' and echo.seen[-1]["headers"]["Authorization"] == "Bearer fresh"

    # retention counts an import from when it was imported, not from the (old) times in the file
    seed(gp, HttpTransaction, [txn_row(timestamp=dt.datetime(2020, 1, 1), url="https://seed.example/old")])
    pruned = gp.api("POST", "/api/maintenance/prune")
    assert pruned.status_code == 200 and pruned.json()["deleted_transactions"] == 1, pruned.text
    assert transactions(gp, recording_id=rec_id)["total"] == 4


def _entry(url: str = "http://a.example/", **over: Any) -> dict:
    entry = {"startedDateTime": "2026-01-02T03:04:05Z", "request": {"method": "GET", "url": url, "headers": []},
             "response": {"status": 200, "headers": [], "content": {}}}
    entry.update(over)
    return entry


def test_har_import_validates_and_bounds(gp):
    def post(body: Any, raw: bytes | None = None) -> requests.Response:
        if raw is not None:
            return gp.api("POST", "/api/recordings/import", data=raw, headers={"Content-Type": "application/json"})
        return gp.api("POST", "/api/recordings/import", json=body)

    def har(*entries: dict) -> dict:
        return {"log": {"version": "1.2", "entries": list(entries)}}

    cases = [
        (har(_entry("ftp://x.example/")), "entries[0].request.url"),
        (har(_entry(), _entry("http://bad host/")), "entries[1].request.url"),
        (har(_entry("http://exa\u0000mple/")), "request.url"),
        (har(_entry(startedDateTime="yesterday")), "startedDateTime"),
        (har(_entry(request={"method": "G E T", "url": "http://a/"})), "method"),
        (har(_entry(request={"method": "WS_REQ", "url": "http://a/"})), "method"),
        (har(_entry(request={"method": "GET", "url": "http://a/", "headers": [{"name": "X", "value": "a\r\nb"}]})),
         "headers[0].value"),
        (har(_entry(request={"method": "GET", "url": "http://a/", "headers": "x"})), "headers"),
        (har(_entry(response={"status": "200"})), "status"),
        (har(_entry(response={"status": 200, "content": {"text": "!!", "encoding": "base64"}})), "base64"),
        (har(_entry(_webSocketMessages=[{"type": "other"}])), "type"),
        ({"log": {"entries": {}}}, "entries"),
        ({"nolog": 1}, "log"),
        ([1, 2], "document"),
        (har(*[_entry() for _ in range(5001)]), "5000"),
    ]
    for body, word in cases:
        assert_error(post(body), 400, word)
    assert_error(post(None, b"{not json"), 400, "json")
    assert_error(post(None, b"[" * 100_000 + b"]" * 100_000), 400)
    assert_error(post(har(_entry("http://a.example/\ud800"))), 400, "surrogate")
    assert_error(post(har(_entry(request={"method": "GET", "url": "http://a/",
                                          "headers": [{"name": "X", "value": "\udfff"}]}))), 400, "surrogate")
    assert_error(post(har(_entry("http://[::1/"))), 400, "request.url")
    assert_error(post(None, b" "), 400, "required")
    too_big = gp.api("POST", "/api/recordings/import", data=b" " * (9 * 1024 * 1024),
                     headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413
    assert transactions(gp)["total"] == 0 and gp.api("GET", "/api/recordings").json()["total"] == 0  # all or nothing


# -- HAR export without a limit ------------------------------------------------------------------
def test_har_export_streams_every_transaction(gp):
    seed(gp, HttpTransaction, [txn_row(url=f"https://seed.example/{i}") for i in range(1200)])
    resp = gp.api("GET", "/api/transactions/export/har", timeout=60)
    assert resp.status_code == 200 and resp.headers["X-Greyproxy-Matched"] == "1200"
    entries = resp.json()["log"]["entries"]
    assert len(entries) == 1200
    assert [e["_greyproxy"]["id"] for e in entries] == sorted(e["_greyproxy"]["id"] for e in entries)
    limited = gp.api("GET", "/api/transactions/export/har", params={"limit": 10})
    assert limited.headers["X-Greyproxy-Matched"] == "1200" and limited.headers["X-Greyproxy-Limit"] == "10"
    log = limited.json()["log"]
    assert len(log["entries"]) == 10 and "10 of 1200" in log["comment"]
