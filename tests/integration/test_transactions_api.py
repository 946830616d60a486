"""Captured traffic through a real `greyproxy serve`: list/detail filters, HAR export and
curl, replay under the rules, redaction settings and the retro-active job."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading

import peewee
import pytest
import requests
from haralyzer import HarParser

from greyproxy.store.models import HttpTransaction
from greyproxy.store.postgres import PostgresDatabase
from tests.backends import database_url  # noqa: F401 - every test here runs on SQLite and PostgreSQL
from tests.integration.netutil import wait_until
from tests.integration.tlsutil import TLSOrigin

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

REDACTED = "[REDACTED]"


# -- helpers -------------------------------------------------------------------------------------
def allow(gp, host: str, port: int | str = "*", container: str = "*") -> dict:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": container, "destination_pattern": host,
                                              "port_pattern": str(port)})
    assert resp.status_code == 201, resp.text
    return resp.json()


def via_proxy(gp, user: str = "agent1") -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": f"http://{user}:x@127.0.0.1:{gp.ports['http']}"}
    return session


def transactions(gp, **params) -> dict:
    resp = gp.api("GET", "/api/transactions", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_total(gp, count: int, **params) -> list[dict]:
    body = wait_until(lambda: (lambda b: b if b["total"] >= count else None)(transactions(gp, **params)), 5)
    assert body, f"fewer than {count} transactions were recorded"
    return body["items"]


def seed(gp, model: type[peewee.Model], rows: list[dict]) -> None:
    """Rows written straight into the running server's database: its SQLite file (WAL lets two
    processes in), or its PostgreSQL database."""
    url = gp.extra_args[gp.extra_args.index("--database-url") + 1] if "--database-url" in gp.extra_args else None
    db = PostgresDatabase(url) if url else peewee.SqliteDatabase(str(gp.data_dir / "greyproxy.db"),
                                                                 pragmas={"busy_timeout": 10000})
    with db.bind_ctx([model]), db.atomic():
        for row in rows:
            model.create(**row)
    db.close()


def txn_row(**fields) -> dict:
    row = {"timestamp": dt.datetime.now(dt.UTC).replace(tzinfo=None), "container_name": "seeded",
           "destination_host": "seed.example", "destination_port": 443, "method": "GET",
           "url": "https://seed.example/", "status_code": 200}
    row.update(fields)
    return row


def assert_error(resp: requests.Response, status: int, contains: str = "") -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert contains.lower() in resp.json()["error"].lower()


@pytest.fixture
def traffic(gp, origin):
    """Three real exchanges through the HTTP proxy: a GET with secrets, a JSON POST, another
    container's GET."""
    allow(gp, origin.host, origin.port)
    base = f"http://{origin.host}:{origin.port}"
    agent1, agent2 = via_proxy(gp, "agent1"), via_proxy(gp, "agent2")
    r1 = agent1.get(f"{base}/a?token=abc123&x=1", headers={"Authorization": "Bearer sk-live-secret",
                                                          "X-Custom": "visible-1"}, timeout=10)
    r2 = agent1.post(f"{base}/b", data=b'{"k": "v", "n": [1, 2]}',
                     headers={"Content-Type": "application/json", "Authorization": "Bearer sk-live-secret"},
                     timeout=10)
    r3 = agent2.get(f"{base}/c", timeout=10)
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 200)
    items = wait_total(gp, 3)
    by_path = {i["url"].split(str(origin.port), 1)[1].split("?")[0]: i for i in items}
    origin.requests.clear()
    return by_path


# -- list and detail -----------------------------------------------------------------------------
def test_list_filters_pagination_and_detail(gp, traffic):
    a, b, c = traffic["/a"], traffic["/b"], traffic["/c"]
    assert a["url"].endswith(f"/a?token={REDACTED}&x=1")  # sensitive query values redacted
    assert a["request_headers"]["Authorization"] == [REDACTED]
    assert a["request_headers"]["X-Custom"] == ["visible-1"]
    assert "request_body" not in a  # the list has no bodies
    assert {"request_body_truncated", "response_body_truncated", "replay_of"} <= set(a)

    assert transactions(gp)["total"] == 3
    assert [i["id"] for i in transactions(gp, container="agent2")["items"]] == [c["id"]]
    assert [i["id"] for i in transactions(gp, method="POST")["items"]] == [b["id"]]
    assert transactions(gp, method="post")["total"] == 0  # exact
    assert transactions(gp, destination="127.0.0")["total"] == 3
    assert transactions(gp, destination="elsewhere")["total"] == 0
    assert transactions(gp, from_date="2999-01-01T00:00:00Z")["total"] == 0
    assert transactions(gp, to_date="2999-01-01T00:00:00Z")["total"] == 3
    page = transactions(gp, limit=2, offset=2)
    assert (page["total"], page["page"], page["pages"], len(page["items"])) == (3, 2, 2, 1)
    newest_first = [i["id"] for i in transactions(gp)["items"]]
    assert newest_first == sorted(newest_first, reverse=True)

    detail = gp.api("GET", f"/api/transactions/{b['id']}").json()
    assert detail["request_body"] == '{"k": "v", "n": [1, 2]}'
    assert detail["request_body_size"] == 23 and detail["method"] == "POST"
    assert detail["response_body"] is None  # the origin answers application/octet-stream: not kept
    assert detail["response_body_size"] == 23
    assert gp.api("GET", f"/api/transactions/{a['id']}").json()["response_body"] == "hello from origin\n"

    assert_error(gp.api("GET", "/api/transactions/999999"), 404, "not found")
    assert_error(gp.api("GET", "/api/transactions/abc"), 400)
    assert_error(gp.api("GET", "/api/transactions", params={"limit": 0}), 400, "limit")
    assert_error(gp.api("GET", "/api/transactions", params={"from_date": "yesterday"}), 400, "from_date")
    assert_error(gp.api("GET", "/api/transactions",
                        params={"from_date": "2030-01-02T00:00:00Z", "to_date": "2030-01-01T00:00:00Z"}), 400)
    assert_error(gp.api("GET", "/api/transactions/1/curl", token=False), 401)


def test_session_and_websocket_method_filters(gp):
    seed(gp, HttpTransaction, [
        txn_row(session_id="s-1"),
        txn_row(method="WS_REQ", url="wss://seed.example/", status_code=101, request_body=b"ping"),
        txn_row(method="WS_RESP", url="wss://seed.example/", status_code=101, request_body=b"pong"),
    ])
    assert transactions(gp, session_id="s-1")["total"] == 1
    assert transactions(gp, method="WS_REQ")["items"][0]["method"] == "WS_REQ"
    frame = transactions(gp, method="WS_RESP")["items"][0]
    assert gp.api("GET", f"/api/transactions/{frame['id']}").json()["request_body"] == "pong"
    assert_error(gp.api("POST", f"/api/transactions/{frame['id']}/replay"), 400, "websocket")


# -- HAR and curl ----------------------------------------------------------------------------------
def test_har_export_of_three_transactions_matches_the_store(gp, traffic):
    resp = gp.api("GET", "/api/transactions/export/har")
    assert resp.status_code == 200 and "attachment" in resp.headers["Content-Disposition"]
    har = resp.json()
    parser = HarParser(har)
    entries = parser.pages[0].entries
    assert len(entries) == 3
    for entry in entries:
        stored = gp.api("GET", f"/api/transactions/{entry.raw_entry['_greyproxy']['id']}").json()
        assert entry.request.method == stored["method"]
        assert entry.request.url == stored["url"]
        assert entry.status == stored["status_code"]
        assert entry.time == stored["duration_ms"]
        assert entry.raw_entry["_greyproxy"]["container"] == stored["container_name"]
        flat = {(h["name"], h["value"]) for h in entry.request.headers}
        assert flat == {(k, v) for k, vs in stored["request_headers"].items() for v in vs}
        assert (entry.request.text if "postData" in entry.request.raw_entry else None) == stored["request_body"]
        assert entry.response.raw_entry["content"].get("text") == stored["response_body"]
        assert "sk-live-secret" not in json.dumps(entry.raw_entry) and "abc123" not in json.dumps(entry.raw_entry)
    # oldest first, as a browser's HAR
    assert [e.raw_entry["_greyproxy"]["id"] for e in entries] == sorted(e.raw_entry["_greyproxy"]["id"] for e in entries)

    only_b = gp.api("GET", "/api/transactions/export/har", params={"method": "POST"}).json()
    assert len(only_b["log"]["entries"]) == 1
    one = gp.api("GET", f"/api/transactions/{traffic['/c']['id']}/har").json()
    assert [e.request.url for e in HarParser(one).pages[0].entries] == [traffic["/c"]["url"]]
    assert_error(gp.api("GET", "/api/transactions/export/har", params={"limit": 10**6}), 400)


def test_upgrade_har_carries_its_frames(gp):
    seed(gp, HttpTransaction, [
        txn_row(method="GET", url="https://seed.example/ws", status_code=101),
        txn_row(method="WS_REQ", url="wss://seed.example/ws", status_code=101, request_body=b"hello"),
        txn_row(method="WS_RESP", url="wss://seed.example/ws", status_code=101, request_body=b"world"),
    ])
    upgrade = transactions(gp, method="GET")["items"][0]
    har = gp.api("GET", f"/api/transactions/{upgrade['id']}/har").json()
    messages = har["log"]["entries"][0]["_webSocketMessages"]
    assert [(m["type"], m["data"]) for m in messages] == [("send", "hello"), ("receive", "world")]


def run_shell(command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["sh", "-c", command], capture_output=True, timeout=30, env=env)


def test_curl_command_reproduces_the_request_with_secrets_redacted(gp, origin, traffic):
    post = traffic["/b"]
    resp = gp.api("GET", f"/api/transactions/{post['id']}/curl")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    command = resp.text
    assert "sk-live-secret" not in command and "curl " in command
    done = run_shell(command.strip() + " -sS --max-time 20")
    assert done.returncode == 0, done.stderr
    seen = origin.requests[-1]
    assert seen["path"] == "/b"
    assert seen["body"] == b'{"k": "v", "n": [1, 2]}'
    assert seen["headers"]["Authorization"] == REDACTED
    assert seen["headers"]["Content-Type"] == "application/json"
    assert "Proxy-Authorization" not in seen["headers"]
    assert done.stdout == b'{"k": "v", "n": [1, 2]}'  # the origin echoes the body

    get = gp.api("GET", f"/api/transactions/{traffic['/a']['id']}/curl").text
    assert run_shell(get.strip() + " -sS --max-time 20").stdout == b"hello from origin\n"
    seen = origin.requests[-1]
    assert seen["path"] == f"/a?token={REDACTED}&x=1"  # the query secret stays redacted too
    assert seen["headers"]["Authorization"] == REDACTED and seen["headers"]["X-Custom"] == "visible-1"


# -- replay --------------------------------------------------------------------------------------
def test_replay_is_subject_to_the_rules_and_stored_as_new(gp, origin, traffic):
    post = traffic["/b"]
    # The stored Authorization was redacted: never sent as the literal marker, a value is asked for.
    assert_error(gp.api("POST", f"/api/transactions/{post['id']}/replay"), 400, "header 'Authorization'")
    assert origin.requests == []
    fresh = {"headers": {"Authorization": "Bearer sk-fresh-value"}}
    resp = gp.api("POST", f"/api/transactions/{post['id']}/replay", json=fresh)
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["replay_of"] == post["id"] and new["id"] != post["id"]
    assert new["method"] == "POST" and new["url"] == post["url"] and new["status_code"] == 200
    assert new["request_body"] == '{"k": "v", "n": [1, 2]}' and new["response_body_size"] == 23
    assert new["request_headers"]["Authorization"] == [REDACTED]  # the given value is not stored
    seen = origin.requests[-1]
    assert seen["body"] == b'{"k": "v", "n": [1, 2]}' and seen["headers"]["Authorization"] == "Bearer sk-fresh-value"
    assert "sk-fresh-value" not in gp.api("GET", f"/api/transactions/{new['id']}").text
    assert transactions(gp)["total"] == 4

    # a deny rule now matches: refused, nothing sent
    sent = len(origin.requests)
    deny = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port), "action": "deny"})
    assert deny.status_code == 201, deny.text
    blocked = gp.api("POST", f"/api/transactions/{post['id']}/replay", json=fresh)
    assert blocked.status_code == 403
    assert blocked.json()["reason"] == "denied_by_rule" and blocked.json()["error"]
    # no rule at all: would be held, and a replay is never held
    for rule in gp.api("GET", "/api/rules").json()["items"]:
        if rule["source"] == "global":
            gp.api("DELETE", f"/api/rules/{rule['id']}")
    held = gp.api("POST", f"/api/transactions/{post['id']}/replay", json=fresh)
    assert held.status_code == 403 and held.json()["reason"] == "no_matching_rule"
    assert len(origin.requests) == sent
    logs = gp.api("GET", "/api/logs", params={"result": "blocked"}).json()["items"]
    assert {"denied_by_rule", "no_matching_rule"} <= {r["reason"] for r in logs}

    assert_error(gp.api("POST", "/api/transactions/424242/replay"), 404)


def test_replay_of_intercepted_https(gp_factory, tmp_path):
    tls = TLSOrigin(tmp_path)
    try:
        gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{tls.ca_path}'}}\n")
        assert gp.api("POST", "/api/cert/generate").status_code == 200
        ca = gp.data_dir / "ca-cert.pem"
        url = f"https://localhost:{tls.port}/?access_token=zzz"
        done = run_shell(f"curl -sS --max-time 20 --cacert {ca} -x http://tls:x@127.0.0.1:{gp.ports['http']} '{url}'")
        assert done.returncode == 0, done.stderr
        item = wait_total(gp, 1)[0]
        assert item["url"] == f"https://localhost:{tls.port}/?access_token={REDACTED}"
        before = len(tls.seen)
        # the stored URL holds a redacted query value: refused until a URL is given
        assert_error(gp.api("POST", f"/api/transactions/{item['id']}/replay"), 400, "url")
        assert len(tls.seen) == before
        resp = gp.api("POST", f"/api/transactions/{item['id']}/replay",
                      json={"url": f"https://localhost:{tls.port}/?access_token=fresh"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["status_code"] == 200 and resp.json()["replay_of"] == item["id"]
        assert resp.json()["url"] == f"https://localhost:{tls.port}/?access_token={REDACTED}"
        assert len(tls.seen) == before + 1
    finally:
        tls.close()


def test_replay_to_an_unreachable_origin_is_a_502(gp):
    seed(gp, HttpTransaction, [txn_row(container_name="agent1", destination_host="127.0.0.3",
                                       destination_port=9, url="http://127.0.0.3:9/")])
    allow(gp, "127.0.0.3", 9)
    item = transactions(gp)["items"][0]
    assert_error(gp.api("POST", f"/api/transactions/{item['id']}/replay"), 502, "replay failed")


CANNOT_REPLAY = [
    ({"url": "ftp://127.0.0.3/file"}, "ftp"),
    ({"destination_port": 0}, "destination"),
    ({"method": "GET /x HTTP/1.1\r\nX:"}, "method"),
    ({"url": "http://127.0.0.3/a b"}, "characters"),
    ({"request_body": None, "request_body_size": 900, "method": "POST"}, "body"),
    ({"request_body": b"cut", "request_body_size": 9_000_000, "request_body_truncated": True}, "body"),
]


def test_replay_refuses_what_it_cannot_send_faithfully(gp):
    allow(gp, "127.0.0.3")
    base = {"container_name": "agent1", "destination_host": "127.0.0.3", "destination_port": 80,
            "url": "http://127.0.0.3/"}
    seed(gp, HttpTransaction, [txn_row(**{**base, **fields}) for fields, _ in CANNOT_REPLAY])
    items = sorted(transactions(gp)["items"], key=lambda i: i["id"])
    for item, (_, message) in zip(items, CANNOT_REPLAY, strict=True):
        assert_error(gp.api("POST", f"/api/transactions/{item['id']}/replay"), 400, message)


# -- redaction settings and the retro-active job -------------------------------------------------
def test_redacted_headers_setting_applies_to_new_captures(gp, origin, traffic):
    settings = gp.api("GET", "/api/settings").json()
    assert settings["redactedHeaders"][:4] == ["Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie"]
    resp = gp.api("PUT", "/api/settings", json={"redactedHeaders": [*settings["redactedHeaders"], "X-Custom"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["redactedHeaders"] == [*settings["redactedHeaders"], "X-Custom"]  # no duplicates
    assert json.loads((gp.data_dir / "settings.json").read_text())["redactedHeaders"] == ["X-Custom"]

    via_proxy(gp).get(f"http://{origin.host}:{origin.port}/d", headers={"X-Custom": "now-hidden"}, timeout=10)
    newest = wait_total(gp, 4)[0]
    assert newest["request_headers"]["X-Custom"] == [REDACTED]
    # the row captured before the change keeps its value until the retro-active job runs
    assert gp.api("GET", f"/api/transactions/{traffic['/a']['id']}").json()["request_headers"]["X-Custom"] == ["visible-1"]

    for bad in (["X Custom"], [""], "X-Custom", [1], ["x" * 300]):
        assert_error(gp.api("PUT", "/api/settings", json={"redactedHeaders": bad}), 400, "redactedHeaders")
    gp.restart()
    assert "X-Custom" in gp.api("GET", "/api/settings").json()["redactedHeaders"]


class EventReader:
    """Collects SSE events of the given types in a thread, until closed."""

    def __init__(self, gp, types: str) -> None:
        self.events: list[tuple[str, dict]] = []
        self.response = gp.api("GET", "/api/events", params={"types": types}, stream=True, timeout=30)
        assert self.response.status_code == 200
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        kind = None
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    self.events.append((kind, json.loads(line[6:])))
        except (requests.RequestException, ValueError, AttributeError):
            pass

    def close(self) -> None:
        self.response.close()


def test_retroactive_redaction_job_with_progress_events(gp, traffic):
    seed(gp, HttpTransaction, [txn_row(request_headers=json.dumps({"X-Custom": [f"old-{i}"], "Accept": ["*/*"]}),
                                       url=f"https://seed.example/?sig=1&password=p{i}") for i in range(1200)])
    reader = EventReader(gp, "maintenance.progress")
    try:
        assert gp.api("PUT", "/api/settings", json={"redactedHeaders": ["x-custom"]}).status_code == 200
        resp = gp.api("POST", "/api/maintenance/redact-headers")
        assert resp.status_code == 200 and resp.json() == {"status": "redaction started"}
        done = wait_until(lambda: [e for k, e in reader.events if e.get("done")], 20)
        assert done, reader.events
    finally:
        reader.close()
    final = done[-1]
    assert final["task"] == "redact_headers" and final["processed"] == final["total"] == 1203
    assert "error" not in final
    partial = [e for _, e in reader.events if not e["done"]]
    assert len(partial) >= 3 and [e["processed"] for e in partial] == sorted(e["processed"] for e in partial)

    row = gp.api("GET", f"/api/transactions/{traffic['/a']['id']}").json()
    assert row["request_headers"]["X-Custom"] == [REDACTED]
    assert row["request_headers"]["Authorization"] == [REDACTED]
    seeded = transactions(gp, container="seeded", limit=5)["items"]
    assert all(i["request_headers"] == {"X-Custom": [REDACTED], "Accept": ["*/*"]} for i in seeded)
    assert all(i["url"].endswith(f"?sig=1&password={REDACTED}") for i in seeded)
    status = gp.api("GET", "/api/maintenance/redact-headers").json()
    assert status["done"] is True and status["running"] is False and status["processed"] == 1203


def test_settings_mitm_section_and_bypass(gp):
    body = gp.api("GET", "/api/settings").json()
    mitm = body["mitm"]
    assert mitm["enabled"] is True and mitm["bypass"] == [] and mitm["certGenerated"] is False
    assert mitm["certPath"] == str(gp.data_dir / "ca-cert.pem") and mitm["installed"] in (True, False)
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    mitm = gp.api("GET", "/api/settings").json()["mitm"]
    assert mitm["certGenerated"] is True and len(mitm["certExpiry"]) == 10

    resp = gp.api("PUT", "/api/settings", json={"mitm": {"enabled": False, "bypass": ["*.Example.com", "pinned.io."]}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["mitm"]["bypass"] == ["*.example.com", "pinned.io"]
    stored = json.loads((gp.data_dir / "settings.json").read_text())
    assert stored["mitmBypass"] == ["*.example.com", "pinned.io"] and stored["mitmEnabled"] is False
    for bad in ({"mitm": {"bypass": "x"}}, {"mitm": {"bypass": ["a b"]}}, {"mitm": {"other": 1}}):
        assert_error(gp.api("PUT", "/api/settings", json=bad), 400)
    gp.restart()
    after = gp.api("GET", "/api/settings").json()["mitm"]
    assert after["enabled"] is False and after["bypass"] == ["*.example.com", "pinned.io"]


def test_yaml_bypass_is_the_default(gp_factory):
    gp = gp_factory(config_yaml="mitm: {bypass: [bank.example]}\n")
    assert gp.api("GET", "/api/settings").json()["mitm"]["bypass"] == ["bank.example"]


def test_bypass_and_toggle_set_through_settings_apply_at_once(gp_factory, tmp_path):
    tls = TLSOrigin(tmp_path)
    try:
        gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{tls.ca_path}'}}\n")
        assert gp.api("POST", "/api/cert/generate").status_code == 200

        def fetch(user: str) -> bytes:
            done = run_shell(f"curl -sS --max-time 20 --cacert {tls.ca_path} "
                             f"-x http://{user}:x@127.0.0.1:{gp.ports['http']} https://localhost:{tls.port}/")
            assert done.returncode == 0, done.stderr  # the origin's own certificate: not intercepted
            return done.stdout

        def skip_reason(user: str) -> str | None:
            items = gp.api("GET", "/api/logs", params={"container": user}).json()["items"]
            return items[0].get("mitm_skip_reason") if items else None

        assert gp.api("PUT", "/api/settings", json={"mitm": {"bypass": ["localhost"]}}).status_code == 200
        assert fetch("byp") == b"hello over tls\n"
        assert wait_until(lambda: skip_reason("byp") == "mitm_bypass", 5)
        assert transactions(gp, container="byp")["total"] == 0

        assert gp.api("PUT", "/api/settings", json={"mitm": {"bypass": [], "enabled": False}}).status_code == 200
        assert fetch("off") == b"hello over tls\n"
        assert wait_until(lambda: skip_reason("off") == "mitm_disabled", 5)
    finally:
        tls.close()
