"""Issue 16 (part A) against a real `greyproxy serve`: hostile input on every JSON route is a
400 (never a 500 or a hang), and the routes and shapes the reference has: dissectors,
endpoint rules, version, maintenance status, middlewares, flat settings keys, rule expiry,
log filters and long stats ranges, notifications without a backend."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time

import pytest
import requests
import websocket

from greyproxy.api.openapi import spec
from tests.integration.mwutil import middleware_yaml
from tests.integration.netutil import socks_connect
from tests.ports import free_port

MIB = 1024 * 1024
DEEP = "[" * 100_000 + "]" * 100_000


def assert_error(resp, status: int, contains: str = "") -> dict:
    assert resp.status_code == status, (resp.request.method, resp.request.url[:120], resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"} and body["error"], body
    assert contains.lower() in body["error"].lower(), body
    return body


def _concrete(path: str, value: str = "1") -> str:
    return re.sub(r"{[^}]+}", value, path)


def json_routes() -> list[tuple[str, str]]:
    """Every (method, path) whose OpenAPI operation takes a JSON body."""
    out = []
    for path, item in spec()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            if "application/json" in content:
                out.append((method.upper(), path))
    return sorted(out)


def id_routes() -> list[tuple[str, str]]:
    return sorted((m.upper(), p) for p, item in spec()["paths"].items() for m in item
                  if "{" in p and m in ("get", "put", "post", "delete"))


def send_raw(gp, method: str, path: str, raw: str | bytes):
    return gp.api(method, path, data=raw, headers={"Content-Type": "application/json"})


# -- bad input, by class ------------------------------------------------------------------------


def test_every_json_route_refuses_deep_nesting_and_lone_surrogates(gp):
    routes = json_routes()
    assert len(routes) >= 15, routes  # the document lists the JSON routes; this must not pass vacuously
    for method, path in routes:
        url = _concrete(path)
        started = time.monotonic()
        assert_error(send_raw(gp, method, url, DEEP), 400, "nested deeper")
        assert time.monotonic() - started < 5, f"{method} {path} took too long on deep JSON"
        assert_error(send_raw(gp, method, url, '{"a": {"b": [[[[["\\ud800"]]]]]}}'), 400, "surrogate")
        assert_error(send_raw(gp, method, url, '{"\\udfff": 1}'), 400, "surrogate")
        assert_error(send_raw(gp, method, url, '{"n": NaN}'), 400, "NaN")
        assert_error(send_raw(gp, method, url, "[" * 33 + "]" * 33), 400, "nested deeper")
    assert gp.api("GET", "/api/health").json()["status"] in ("ok", "degraded")


def test_path_ids_of_5000_digits_and_hostile_string_ids(gp):
    for method, path in id_routes():
        body = {} if method in ("POST", "PUT") else None
        for value in ("9" * 5000, "1" * 20, "%00", "..%2f..%2fetc", "x" * 300):
            resp = gp.api(method, _concrete(path, value), json=body)
            assert resp.status_code < 500, (method, path, value[:20], resp.status_code, resp.text[:200])
            if resp.status_code not in (404, 405):
                assert resp.json()["error"]
    for method, path in [("GET", "/api/rules/"), ("DELETE", "/api/rules/"), ("DELETE", "/api/pending/"),
                         ("POST", "/api/sessions/{}/heartbeat"), ("DELETE", "/api/sessions/"),
                         ("DELETE", "/api/credentials/")]:
        url = path.format("9" * 5000) if "{}" in path else path + "9" * 5000
        body = assert_error(gp.api(method, url), 400, "invalid")
        assert len(body["error"]) < 200  # the id is not echoed whole


def test_session_ids_are_validated_and_every_session_stays_addressable(gp):
    for bad in ("a/b", "../x", "a b", "a:b", "x@y", "-lead", ".hidden", "s" * 129, "a\u0000b", "\u00e9t\u00e9"):
        resp = gp.api("POST", "/api/sessions", json={"session_id": bad, "container_name": "c", "allow_all": True})
        assert_error(resp, 400, "session_id")
    assert gp.api("GET", "/api/sessions").json() == []
    good = "gw_1.session-A"
    resp = gp.api("POST", "/api/sessions", json={"session_id": good, "container_name": "c", "allow_all": True})
    assert resp.status_code == 200, resp.text
    assert gp.api("POST", f"/api/sessions/{good}/heartbeat").status_code == 200
    assert gp.api("DELETE", f"/api/sessions/{good}").json() == {"session_id": good, "deleted": True}


def test_megabyte_strings_and_nul_bytes_are_refused(gp):
    huge, nul = "a" * MIB, "exa\u0000mple.com"
    rule = {"container_pattern": "c", "destination_pattern": "example.com"}
    cases = [
        ("POST", "/api/rules", {**rule, "destination_pattern": huge + ".com"}),
        ("POST", "/api/rules", {**rule, "container_pattern": huge}),
        ("POST", "/api/rules", {**rule, "destination_pattern": nul}),
        ("POST", "/api/rules", {**rule, "container_pattern": "c\u0000"}),
        ("POST", "/api/rules", {**rule, "port_pattern": "443\u0000"}),
        ("POST", "/api/rules", {**rule, "notes": huge * 2}),  # notes may hold up to 1 MiB
        ("POST", "/api/rules/ingest", [{**rule, "destination_pattern": nul}]),
        ("PUT", "/api/rules/1", {"destination_pattern": huge}),
        ("PUT", "/api/rules/1", {"container_pattern": "a\u0000"}),
        ("POST", "/api/sessions", {"session_id": "s1", "container_name": huge, "allow_all": True}),
        ("POST", "/api/sessions", {"session_id": "s1", "container_name": "c\u0000", "allow_all": True}),
        ("POST", "/api/sessions", {"session_id": "s1", "container_name": "c",
                                   "network_rules": [{"destination_pattern": huge}]}),
        ("POST", "/api/sessions", {"session_id": "s1", "container_name": "c",
                                   "network_rules": [{"destination_pattern": nul}]}),
        ("POST", "/api/sessions", {"session_id": "s1", "container_name": "c", "allow_all": True,
                                   "metadata": {"k": huge}}),
        ("POST", "/api/credentials", {"label": huge, "value": "secret-value-1"}),
        ("POST", "/api/credentials", {"label": "l", "value": "secret-value-1", "hosts": [nul]}),
        ("POST", "/api/credentials", {"label": "l", "value": "secret-value-1", "containers": [huge]}),
        ("POST", "/api/container-modes", {"container_pattern": huge, "mode": "open"}),
        ("POST", "/api/container-modes", {"container_pattern": "a\u0000", "mode": "open"}),
        ("POST", "/api/endpoint-rules", {"host_pattern": huge, "path_pattern": "/x", "decoder_name": "openai"}),
        ("POST", "/api/endpoint-rules", {"host_pattern": "h.example", "path_pattern": "/x\u0000",
                                         "decoder_name": "openai"}),
        ("PUT", "/api/settings", {"redactedHeaders": [huge]}),
    ]
    for method, path, body in cases:
        resp = gp.api(method, path, json=body)
        assert resp.status_code == 400, (method, path, resp.status_code, resp.text[:200])
        assert resp.json()["error"]
    assert gp.api("GET", "/api/rules").json()["total"] == 3  # the built-in rules only
    assert gp.api("GET", "/api/sessions").json() == []
    assert gp.api("GET", "/api/credentials").json() == []


def test_websocket_commands_get_the_same_reader(gp):
    ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws",
                                     header=[f"Authorization: Bearer {gp.token}"], timeout=10)
    try:
        json.loads(ws.recv())  # connected
        for raw in ("[" * 50_000 + "]" * 50_000, '{"command": "ping", "x": "\\ud800"}',
                    '{"command": "dismiss", "pending_id": "' + "9" * 5000 + '"}'):
            ws.send(raw)
            reply = json.loads(ws.recv())
            assert reply["type"] == "error" and reply["error"] != "internal error", reply
        ws.send(json.dumps({"command": "ping"}))
        assert json.loads(ws.recv())["type"] == "pong"
    finally:
        ws.close()


# -- rules: expires_at, rule_type glob, unknown keys ----------------------------------------------


def test_rule_keys_are_checked_and_a_rule_round_trips(gp):
    base = {"container_pattern": "c", "destination_pattern": "round.example"}
    assert_error(gp.api("POST", "/api/rules", json={**base, "expires": "1h"}), 400, "expires")
    assert_error(gp.api("POST", "/api/rules", json={**base, "destinaton_pattern": "x"}), 400, "destinaton_pattern")
    assert_error(gp.api("POST", "/api/rules/ingest", json=[base, {**base, "colour": 1}]), 400, "item 1")
    assert_error(gp.api("POST", "/api/rules", json={**base, "expires_at": "2001-01-01T00:00:00Z"}), 400, "past")
    assert_error(gp.api("POST", "/api/rules", json={**base, "expires_at": "2099-01-01T00:00:00Z",
                                                    "expires_in_seconds": 60}), 400, "either")
    glob = gp.api("POST", "/api/rules", json={**base, "rule_type": "glob"})
    assert glob.status_code == 201, glob.text
    assert glob.json()["rule_type"] == "permanent" and glob.json()["expires_at"] is None
    # A rule as GET shows it may be posted back (the read-only fields are ignored): same row.
    again = gp.api("POST", "/api/rules", json=glob.json())
    assert again.status_code == 201 and again.json()["id"] == glob.json()["id"]
    assert_error(gp.api("PUT", f"/api/rules/{glob.json()['id']}", json={"note": "x"}), 400, "note")


def test_expires_at_on_create_makes_a_grant_that_expires(gp_factory, origin):
    gp = gp_factory(hold_seconds=1)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port), "expires_at": until})
    assert resp.status_code == 201, resp.text
    rule = resp.json()
    assert rule["expires_at"] is not None and rule["rule_type"] == "temporary" and rule["is_active"] is True
    stored = dt.datetime.fromisoformat(rule["expires_at"].replace("Z", "+00:00"))
    assert abs((stored - dt.datetime.fromisoformat(until.replace("Z", "+00:00"))).total_seconds()) <= 1
    proxies = {"http": f"http://agent1:x@127.0.0.1:{gp.ports['http']}"}
    url = f"http://{origin.host}:{origin.port}/grant"
    session = requests.Session()
    session.trust_env = False
    assert session.get(url, proxies=proxies, timeout=10).status_code == 200  # granted while it lasts
    assert len(origin.requests) == 1
    time.sleep(max(0.0, (stored - dt.datetime.now(dt.UTC)).total_seconds()) + 1.0)
    late = session.get(url, proxies=proxies, timeout=10)
    assert late.status_code == 403 and late.headers.get("X-Greyproxy-Reason")  # held, then refused
    assert len(origin.requests) == 1  # the origin never saw the late request
    listed = gp.api("GET", "/api/rules", params={"include_expired": "true"}).json()["items"]
    assert [r["is_active"] for r in listed if r["id"] == rule["id"]] == [False]
    assert rule["id"] not in [r["id"] for r in gp.api("GET", "/api/rules").json()["items"]]


# -- settings, notifications, middlewares ------------------------------------------------------


def test_settings_accept_the_flat_keys(gp):
    resp = gp.api("PUT", "/api/settings", json={"mitmEnabled": False, "conversationsEnabled": False,
                                                "notificationsEnabled": False})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["mitm"]["enabled"] is False and body["conversations"]["enabled"] is False
    assert body["notifications"]["enabled"] is False
    assert json.loads((gp.data_dir / "settings.json").read_text()) == {
        "mitmEnabled": False, "conversationsEnabled": False, "notificationsEnabled": False}
    # Both forms at once must agree; the nested form still works.
    assert_error(gp.api("PUT", "/api/settings", json={"mitmEnabled": True, "mitm": {"enabled": False}}), 400,
                 "disagree")
    assert gp.api("PUT", "/api/settings", json={"mitmEnabled": True, "mitm": {"enabled": True}}).status_code == 200
    assert gp.api("PUT", "/api/settings", json={"mitm": {"enabled": False}}).json()["mitm"]["enabled"] is False
    assert_error(gp.api("PUT", "/api/settings", json={"mitmEnabled": 0}), 400, "mitmEnabled")
    assert_error(gp.api("PUT", "/api/settings", json={"mitm_enabled": True}), 400, "mitm_enabled")


@pytest.mark.skipif(shutil.which("notify-send") is not None, reason="needs a machine without notify-send")
def test_notifications_say_there_is_no_backend(gp):
    assert_error(gp.api("PUT", "/api/notifications", json={"enabled": True}), 409, "no desktop notification backend")
    assert gp.api("PUT", "/api/notifications", json={"enabled": False}).json() == {"enabled": False}
    ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws",
                                     header=[f"Authorization: Bearer {gp.token}"], timeout=10)
    try:
        json.loads(ws.recv())
        ws.send(json.dumps({"command": "claim_notifications"}))
        reply = json.loads(ws.recv())
        assert reply["type"] == "notification_claimed" and reply["backend"] == "none"
        assert "no desktop notification backend" in reply["warning"]
    finally:
        ws.close()


def test_middlewares_have_the_reference_shape(gp_factory, tmp_path):
    gp = gp_factory(config_yaml=middleware_yaml(tmp_path / "seen.jsonl"))
    body = gp.wait_for(lambda: (lambda b: b if b["middlewares"] and b["middlewares"][0]["connected"] else None)(
        gp.api("GET", "/api/middlewares").json()), timeout=10)
    assert body, gp.api("GET", "/api/middlewares").text
    item = body["middlewares"][0]
    assert {"url", "kind", "name", "connected", "protocol_version", "hooks", "max_body_bytes", "timeout_ms",
            "on_disconnect"} <= set(item)
    assert item["kind"] == "stdio" and item["connected"] is True and item["protocol_version"] == 1
    assert item["timeout_ms"] > 0 and item["on_disconnect"] in ("allow", "deny")
    assert body["items"] == body["middlewares"] and body["total"] == 1


# -- the routes the reference has and we lacked ---------------------------------------------------


def test_version_dissectors_and_maintenance_status(gp):
    version = gp.api("GET", "/api/version").json()
    assert version["engine"] == "greyproxy" and version["version"] == gp.api("GET", "/api/health").json()["version"]
    assert version["api_version"] and {"endpoint_rules", "dissectors", "log_filters"} <= set(version["capabilities"])
    names = [d["name"] for d in gp.api("GET", "/api/dissectors").json()["dissectors"]]
    assert names == ["anthropic", "openai", "openai-ws", "openai-chat", "google-ai"]
    assert all(d["description"] for d in gp.api("GET", "/api/dissectors").json()["dissectors"])
    status = gp.api("GET", "/api/maintenance/status").json()
    assert status["assembler_version_current"] == status["assembler_version_stored"]
    assert status["needs_rebuild"] is False
    assert status["tasks"]["redact_headers"]["task"] == "redact_headers"


def test_endpoint_rules_crud(gp):
    builtin = gp.api("GET", "/api/endpoint-rules").json()["rules"]
    assert ("api.anthropic.com", "/v1/messages", "POST", "anthropic") in [
        (r["host_pattern"], r["path_pattern"], r["method"], r["decoder_name"]) for r in builtin]
    assert not any(r["user_defined"] for r in builtin)
    new = {"host_pattern": "LiteLLM.local:4000", "path_pattern": "/v1/chat/*", "decoder_name": "openai-chat",
           "priority": 7}
    resp = gp.api("POST", "/api/endpoint-rules", json=new)
    assert resp.status_code == 201, resp.text
    rule = resp.json()
    assert rule["host_pattern"] == "litellm.local:4000" and rule["method"] == "POST" and rule["user_defined"]
    assert rule["priority"] == 7 and rule["enabled"] is True
    assert gp.api("GET", "/api/endpoint-rules").json()["rules"][0]["id"] == rule["id"]  # highest priority first
    changed = gp.api("PUT", f"/api/endpoint-rules/{rule['id']}", json={**new, "enabled": False}).json()
    assert changed["ok"] is True and changed["rule"]["enabled"] is False
    assert rule["id"] not in [r["id"] for r in gp.api("GET", "/api/endpoint-rules").json()["rules"]]
    assert rule["id"] in [r["id"] for r in gp.api("GET", "/api/endpoint-rules?include_disabled=true").json()["rules"]]
    assert_error(gp.api("PUT", f"/api/endpoint-rules/{builtin[0]['id']}", json=new), 400, "built in")
    assert_error(gp.api("DELETE", f"/api/endpoint-rules/{builtin[0]['id']}"), 400, "built in")
    for bad, field in [({"host_pattern": "*"}, "host_pattern"), ({"host_pattern": "%"}, "host_pattern"),
                       ({"path_pattern": "v1"}, "path_pattern"), ({"decoder_name": "gpt"}, "decoder_name"),
                       ({"method": "BREW"}, "method"), ({"priority": "high"}, "priority"), ({"extra": 1}, "extra")]:
        assert_error(gp.api("POST", "/api/endpoint-rules", json={**new, **bad}), 400, field)
    assert gp.api("DELETE", f"/api/endpoint-rules/{rule['id']}").json() == {"ok": True}
    assert_error(gp.api("DELETE", f"/api/endpoint-rules/{rule['id']}"), 404)
    kinds = [e["kind"] for e in gp.api("GET", "/api/audit", params={"kind": "endpoint_rule"}).json()["items"]]
    assert sorted(kinds) == ["endpoint_rule.create", "endpoint_rule.delete", "endpoint_rule.update"]


# -- logs: filters and long stats ranges ----------------------------------------------------------


def test_log_filters_and_stats_over_long_ranges(gp, origin):
    closed = free_port("127.0.0.3")
    for dest, port, action in ((origin.host, origin.port, "deny"), ("127.0.0.3", closed, "allow")):
        assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": dest,
                                                  "port_pattern": str(port), "action": action}).status_code == 201
        _, sock = socks_connect(gp.ports["socks5"], dest, port)  # refused either way (reply or in-band)
        sock.close()
    rows = gp.wait_for(lambda: len(gp.api("GET", "/api/logs").json()["items"]) >= 2 or None)
    assert rows
    failed = gp.api("GET", "/api/logs", params={"has_error": "true"}).json()["items"]
    # Allowed, but nothing answered on that port: no dialled IP.
    assert [(r["destination_host"], r["result"], r["dialed_ip"]) for r in failed] == [("127.0.0.3", "allowed", None)]
    others = gp.api("GET", "/api/logs", params={"has_error": "false"}).json()["items"]
    assert origin.host in [r["destination_host"] for r in others] and "127.0.0.3" not in [
        r["destination_host"] for r in others]
    found = gp.api("GET", "/api/logs", params={"search": ".0.3"}).json()
    assert found["total"] == 1 and found["items"][0]["destination_host"] == "127.0.0.3"
    assert gp.api("GET", "/api/logs", params={"reason": "denied_by_rule"}).json()["total"] == 1
    for name in ("status_min", "status_max", "is_websocket", "path_contains"):
        assert_error(gp.api("GET", "/api/logs", params={name: "1"}), 400, "/api/transactions")
    assert_error(gp.api("GET", "/api/logs", params={"has_error": "maybe"}), 400, "has_error")

    long = gp.api("GET", "/api/logs/stats", params={"from_date": "2000-01-01T00:00:00Z"})
    assert long.status_code == 200, long.text
    stats = long.json()
    assert stats["group_by"] == "week" and stats["total_requests"] >= 2
    assert stats["period"]["from"] == "2000-01-01T00:00:00Z"
    assert sum(p["blocked"] for p in stats["timeline"]) == stats["blocked"]
    ages = gp.api("GET", "/api/logs/stats", params={"from_date": "0001-01-01T00:00:00Z",
                                                    "to_date": "9999-12-31T00:00:00Z"}).json()
    assert ages["total_requests"] == stats["total_requests"] and len(ages["timeline"]) <= 2000
    daily = gp.api("GET", "/api/logs/stats", params={"group_by": "day"}).json()
    assert daily["group_by"] == "day" and len(daily["timeline"]) == 1
    assert_error(gp.api("GET", "/api/logs/stats", params={"group_by": "minute"}), 400, "group_by")


def test_a_user_endpoint_rule_decides_the_decoder(gp, origin):
    """A Gemini-shaped call to an unknown host is no conversation (its body has no model and
    messages to guess from) until an endpoint rule names the decoder; then it is one."""
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1",
                                              "destination_pattern": origin.host}).status_code == 201
    session = requests.Session()
    session.trust_env = False
    proxies = {"http": f"http://agent1:x@127.0.0.1:{gp.ports['http']}"}
    url = f"http://{origin.host}:{origin.port}/v1beta/models/gemini-test:generateContent"

    def ask(text: str) -> None:
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        assert session.post(url, json=body, proxies=proxies, timeout=10).status_code == 200

    ask("before the rule")
    assert gp.wait_for(lambda: gp.api("GET", "/api/transactions").json()["total"] >= 1)
    time.sleep(1.5)  # the assembler runs half a second after new traffic
    assert gp.api("GET", "/api/conversations").json()["items"] == []
    rule = {"host_pattern": origin.host, "path_pattern": "/v1beta/models/*", "decoder_name": "google-ai"}
    assert gp.api("POST", "/api/endpoint-rules", json=rule).status_code == 201
    ask("after the rule")
    found = gp.wait_for(lambda: gp.api("GET", "/api/conversations").json()["items"], timeout=10)
    assert [c["first_prompt"] for c in found] == ["after the rule"], found


def test_maintenance_status_follows_the_progress_events(gp):
    events = gp.session.get(gp.api_url + "/api/events", params={"types": "maintenance.progress"}, timeout=10,
                            stream=True, headers={"Authorization": f"Bearer {gp.token}"})
    try:
        assert gp.api("POST", "/api/maintenance/redact-headers").status_code == 200
        lines = events.iter_lines(decode_unicode=True)
        data = None
        for line in lines:  # bounded by the read timeout of the stream
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if data.get("done"):
                    break
        assert data is not None and data["task"] == "redact_headers" and data["done"] is True
    finally:
        events.close()
    task = gp.wait_for(lambda: (lambda t: t if t["done"] else None)(
        gp.api("GET", "/api/maintenance/status").json()["tasks"]["redact_headers"]))
    assert task and task["processed"] == data["processed"] and task["total"] == data["total"]
