"""REST control plane against a real `greyproxy serve` (docs/decisions.md#rules)."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
import requests

from tests.backends import database_url  # noqa: F401 - every test here runs on SQLite and PostgreSQL
from tests.integration.netutil import socks_connect

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

RULE = {"container_pattern": "agent1", "destination_pattern": "example.com", "port_pattern": "443"}


def create_rule(gp, **fields) -> dict:
    resp = gp.api("POST", "/api/rules", json={**RULE, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def assert_error(resp: requests.Response, status: int, contains: str = "") -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert contains.lower() in body["error"].lower()


# -- guard: token, Host, Origin, Content-Type ------------------------------------------


def test_health_needs_no_token_but_everything_else_does(gp):
    resp = gp.api("GET", "/api/health", token=False)
    assert resp.status_code == 200
    body = resp.json()
    assert body["service"] == "greyproxy" and body["status"] == "ok" and body["version"]
    assert body["ports"]["api"] == gp.ports["api"]
    assert body["ports"]["http-proxy"] == gp.ports["http"]
    assert body["ports"]["socks5-proxy"] == gp.ports["socks5"]
    assert {"dns-proxy-udp", "dns-proxy-tcp"} <= set(body["ports"])

    for method, path in [
        ("GET", "/api/rules"),
        ("GET", "/api/pending"),
        ("POST", "/api/allowall"),
        ("GET", "/api/settings"),
        ("GET", "/api/events"),
        ("GET", "/api/nope"),
    ]:
        assert_error(gp.api(method, path, token=False), 401, "API token")
    wrong = gp.api("GET", "/api/rules", token=False, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401)
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert gp.api("GET", "/api/rules").status_code == 200


def test_foreign_host_and_origin_are_refused(gp):
    port = gp.ports["api"]
    assert_error(gp.api("GET", "/api/rules", headers={"Host": f"evil.example:{port}"}), 403, "host")
    assert_error(gp.api("GET", "/api/health", headers={"Host": "evil.example"}), 403, "host")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", f"[::1]:{port}"):
        assert gp.api("GET", "/api/rules", headers={"Host": host}).status_code == 200, host

    assert_error(gp.api("GET", "/api/rules", headers={"Origin": "http://evil.example"}), 403, "origin")
    assert_error(gp.api("POST", "/api/rules", json=RULE, headers={"Origin": "null"}), 403, "origin")
    same_origin = {"Origin": f"http://127.0.0.1:{port}"}
    assert gp.api("POST", "/api/rules", json=RULE, headers=same_origin).status_code == 201


def test_configured_allowed_origin(gp_factory):
    gp = gp_factory(config_yaml="api:\n  allowed_origins: ['https://console.example']\n")
    ok = gp.api("GET", "/api/rules", headers={"Origin": "https://console.example"})
    assert ok.status_code == 200
    assert_error(gp.api("GET", "/api/rules", headers={"Origin": "https://other.example"}), 403)


def test_json_body_needs_json_content_type(gp):
    resp = gp.api("POST", "/api/rules", data=json.dumps(RULE), headers={"Content-Type": "text/plain"})
    assert_error(resp, 415, "application/json")
    resp = gp.api(
        "POST",
        "/api/allowall",
        data="mode=allow",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(resp, 415)
    assert gp.api("GET", "/api/allowall").json() == {"active": False}


def test_dashboard_token_becomes_a_cookie(gp):
    resp = gp.api("GET", f"/dashboard?token={gp.token}&tab=rules", token=False, allow_redirects=False)
    assert resp.status_code == 302
    assert resp.headers["Location"].endswith("/dashboard?tab=rules")
    cookie = resp.headers["Set-Cookie"]
    assert "greyproxy_token=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    gp.session.cookies.clear()  # the session stored the cookie; send it explicitly instead
    with_cookie = gp.api("GET", "/api/rules", token=False, cookies={"greyproxy_token": gp.token})
    assert with_cookie.status_code == 200
    wrong = gp.api("GET", "/dashboard?token=wrong", token=False, allow_redirects=False)
    # A page answers a browser with the HTML login page (tests/e2e/test_login.py), still a 401 and no cookie.
    assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
    # The query token is accepted on /dashboard only.
    assert_error(gp.api("GET", f"/api/rules?token={gp.token}", token=False), 401)


def test_no_auth_mode(gp_factory):
    gp = gp_factory(extra_args=["--no-auth"])
    assert gp.token is None
    assert gp.api("GET", "/api/rules", token=False).status_code == 200
    # Host and Origin checks stay on without a token.
    assert_error(gp.api("GET", "/api/rules", headers={"Host": "evil.example"}), 403)


# -- errors: 400 for bad input, never 500 --------------------------------------------------------

BAD_REQUESTS = [
    ("POST", "/api/rules", "{not json", "invalid JSON"),
    ("POST", "/api/rules", "[1, 2]", "object"),
    ("POST", "/api/rules", {"destination_pattern": "x.com"}, "container_pattern"),
    ("POST", "/api/rules", {"container_pattern": "a"}, "destination_pattern"),
    ("POST", "/api/rules", {**RULE, "action": "maybe"}, "action"),
    ("POST", "/api/rules", {**RULE, "rule_type": "sometimes"}, "rule_type"),
    ("POST", "/api/rules", {**RULE, "destination_pattern": "has space.com"}, "destination_pattern"),
    ("POST", "/api/rules", {**RULE, "destination_pattern": "https://example.com/"}, "destination_pattern"),
    ("POST", "/api/rules", {**RULE, "destination_pattern": "10.0.0.0/99"}, "CIDR"),
    ("POST", "/api/rules", {**RULE, "destination_pattern": "a.**.com"}, "**"),
    ("POST", "/api/rules", {**RULE, "container_pattern": "[abc"}, "container_pattern"),
    ("POST", "/api/rules", {**RULE, "port_pattern": "http"}, "port_pattern"),
    ("POST", "/api/rules", {**RULE, "port_pattern": "70000"}, "port_pattern"),
    ("POST", "/api/rules", {**RULE, "port_pattern": "9000-8000"}, "port_pattern"),
    ("POST", "/api/rules", {**RULE, "port_pattern": 443}, "port_pattern"),
    ("POST", "/api/rules", {**RULE, "container_pattern": 7}, "container_pattern"),
    ("POST", "/api/rules", {**RULE, "expires_in_seconds": 0}, "expires_in_seconds"),
    ("POST", "/api/rules", {**RULE, "expires_in_seconds": "60"}, "expires_in_seconds"),
    ("POST", "/api/rules", {**RULE, "expires_in_seconds": True}, "expires_in_seconds"),
    ("POST", "/api/rules", {**RULE, "created_by": "builtin"}, "created_by"),
    ("POST", "/api/rules", {**RULE, "created_by": "session:abc"}, "created_by"),
    ("POST", "/api/rules", {**RULE, "expires_in_seconds": 10**30}, "expires_in_seconds"),
    ("POST", "/api/rules/ingest", {"not": "an array"}, "array"),
    ("POST", "/api/rules/ingest", [RULE, {**RULE, "port_pattern": "x"}], "item 1"),
    ("GET", "/api/rules/abc", None, "id"),
    ("GET", "/api/rules/-1", None, "id"),
    ("GET", "/api/rules/99999999999999999999999", None, "id"),
    ("PUT", "/api/rules/1.5", {"notes": "x"}, "id"),
    ("DELETE", "/api/rules/abc", None, "id"),
    ("PUT", "/api/rules/1", {"expires_at": "tomorrow"}, "expires_at"),
    ("PUT", "/api/rules/1", {"expires_at": "9999-12-31T23:00:00-14:00"}, "expires_at"),
    ("PUT", "/api/rules/1", {"expires_at": 5}, "expires_at"),
    ("PUT", "/api/rules/1", {"action": "perhaps"}, "action"),
    ("PUT", "/api/rules/1", {"destination_pattern": ""}, "destination_pattern"),
    ("PUT", "/api/rules/1", {"port_pattern": "1,,2"}, "port_pattern"),
    ("GET", "/api/rules?action=maybe", None, "action"),
    ("GET", "/api/rules?limit=ten", None, "limit"),
    ("GET", "/api/rules?limit=0", None, "limit"),
    ("GET", "/api/rules?include_expired=perhaps", None, "include_expired"),
    ("POST", "/api/pending/abc/allow", {}, "id"),
    ("POST", "/api/pending/0/deny", {}, "id"),
    ("DELETE", "/api/pending/x", None, "id"),
    ("POST", "/api/pending/1/allow", {"scope": "galaxy"}, "scope"),
    ("POST", "/api/pending/1/deny", {"scope": 3}, "scope"),
    ("POST", "/api/pending/1/allow", {"duration": "forever"}, "duration"),
    ("POST", "/api/pending/1/allow", {"duration": "-5m"}, "duration"),
    ("POST", "/api/pending/1/allow", "[]", "object"),
    ("POST", "/api/pending/bulk-allow", {"pending_ids": ["1"]}, "pending_ids"),
    ("POST", "/api/pending/bulk-allow", {"pending_ids": [1], "duration": "soon"}, "duration"),
    ("POST", "/api/pending/bulk-dismiss", {}, "pending_ids"),
    ("GET", "/api/pending?limit=-3", None, "limit"),
    ("GET", "/api/logs?result=maybe", None, "result"),
    ("GET", "/api/logs?from_date=yesterday", None, "from_date"),
    ("GET", "/api/logs?from_date=2030-01-02T00:00:00Z&to_date=2030-01-01T00:00:00Z", None, "from_date"),
    ("GET", "/api/logs?offset=x", None, "offset"),
    ("GET", "/api/logs?offset=99999999999999999999999", None, "offset"),
    # An explicit grouping too fine for the range; without group_by the range works (test_api_surface.py).
    ("GET", "/api/logs/stats?from_date=2000-01-01T00:00:00Z&group_by=hour", None, "buckets"),
    ("GET", "/api/dashboard?period=year", None, "period"),
    ("GET", "/api/dashboard?group_by=minute", None, "group_by"),
    ("GET", "/api/dashboard?from_date=2000-01-01T00:00:00Z&group_by=hour", None, "group_by"),
    ("POST", "/api/allowall", {"mode": "maybe", "duration": "1h"}, "mode"),
    ("POST", "/api/allowall", {"mode": "allow"}, "duration"),
    ("POST", "/api/allowall", {"mode": "allow", "duration": "9h"}, "8h"),
    ("POST", "/api/allowall", {"mode": "allow", "duration": "0s"}, "positive"),
    ("POST", "/api/allowall", {"mode": "allow", "duration": "an hour"}, "duration"),
    ("PUT", "/api/settings", {"theme": "neon"}, "theme"),
    ("PUT", "/api/settings", {"mitmEnabled": "no"}, "mitmEnabled"),  # the flat keys are accepted, typed
    ("PUT", "/api/settings", {"mitmEnable": False}, "mitmEnable"),
    ("PUT", "/api/settings", {"mitm": {"enabled": "no"}}, "enabled"),
    ("PUT", "/api/settings", {"mitm": True}, "mitm"),
    ("PUT", "/api/notifications", {"enabled": 1}, "enabled"),
    ("POST", "/api/container-modes", {"container_pattern": "a*", "mode": "loose"}, "mode"),
    ("POST", "/api/container-modes", {"mode": "report"}, "container_pattern"),
    ("DELETE", "/api/container-modes/abc", None, "id"),
]


def test_bad_input_is_400_never_500(gp):
    before = gp.api("GET", "/api/rules").json()["total"]
    for method, path, body, contains in BAD_REQUESTS:
        if isinstance(body, str):
            resp = gp.api(method, path, data=body, headers={"Content-Type": "application/json"})
        else:
            resp = gp.api(method, path, json=body)
        assert resp.status_code == 400, (method, path, body, resp.status_code, resp.text)
        assert_error(resp, 400, contains)
    # Nothing above wrote a rule, including the half-valid ingest batch.
    assert gp.api("GET", "/api/rules").json()["total"] == before
    assert gp.api("GET", "/api/allowall").json() == {"active": False}


def test_missing_ids_are_404_and_unknown_routes_are_json(gp):
    for method, path, body in [
        ("GET", "/api/rules/424242", None),
        ("PUT", "/api/rules/424242", {"notes": "x"}),
        ("DELETE", "/api/rules/424242", None),
        ("POST", "/api/pending/424242/allow", None),
        ("POST", "/api/pending/424242/deny", {"scope": "any_port", "duration": "1h"}),
        ("DELETE", "/api/pending/424242", None),
        ("DELETE", "/api/container-modes/424242", None),
    ]:
        assert_error(gp.api(method, path, json=body), 404, "not found")
    assert_error(gp.api("GET", "/api/does-not-exist"), 404)
    resp = gp.api("PATCH", "/api/rules")
    assert_error(resp, 405)
    assert "POST" in resp.headers["Allow"]


def test_empty_bulk_requests(gp):
    resp = gp.api("POST", "/api/pending/bulk-allow", json={"pending_ids": [424242]})
    assert resp.json() == {"rules_created": [], "pending_removed": 0}
    resp = gp.api("POST", "/api/pending/bulk-dismiss", json={"pending_ids": [424242]})
    assert resp.json() == {"status": "ok", "removed": 0}
    assert gp.api("GET", "/api/pending").json() == {"items": [], "total": 0}
    assert gp.api("GET", "/api/pending/count").json() == {"count": 0}


# -- rules --------------------------------------------------------------------------------------


def test_rule_create_normalizes_and_deduplicates(gp):
    rule = create_rule(gp, destination_pattern=" Example.COM. ", port_pattern="443, 8000 - 8080", notes="n")
    assert rule["destination_pattern"] == "example.com"
    assert rule["port_pattern"] == "443,8000-8080"
    assert rule["action"] == "allow" and rule["rule_type"] == "permanent" and rule["created_by"] == "admin"
    assert rule["source"] == "global" and rule["is_active"] and rule["expires_at"] is None
    assert rule["notes"] == "n"
    again = create_rule(gp, destination_pattern="example.com", port_pattern="443,8000-8080")
    assert again["id"] == rule["id"]

    glob = create_rule(gp, destination_pattern="api.*", port_pattern="*", action="deny", created_by="ci")
    assert glob["destination_pattern"] == "api.*" and glob["created_by"] == "ci"
    temp = create_rule(gp, destination_pattern="tmp.example.com", expires_in_seconds=600)
    assert temp["rule_type"] == "temporary" and temp["expires_at"]


def test_rule_list_filters(gp):
    create_rule(gp, container_pattern="alpha", destination_pattern="one.example.com")
    create_rule(gp, container_pattern="beta", destination_pattern="two.example.com", action="deny")
    create_rule(gp, container_pattern="alpha", destination_pattern="three.test")

    def ids(query: str) -> list[str]:
        body = gp.api("GET", f"/api/rules{query}").json()
        assert body["total"] == len(body["items"]) or "limit" in query
        return [r["destination_pattern"] for r in body["items"]]

    assert ids("?container=alph") == ["three.test", "one.example.com"]  # newest first
    assert ids("?destination=example.com") == ["two.example.com", "one.example.com"]
    assert ids("?action=deny") == ["two.example.com"]
    page = gp.api("GET", "/api/rules?container=a&limit=1&offset=1").json()
    assert page["total"] == 3 and [r["destination_pattern"] for r in page["items"]] == ["two.example.com"]


def test_rule_update_and_delete(gp):
    rule = create_rule(gp)
    resp = gp.api("PUT", f"/api/rules/{rule['id']}", json={"notes": "why", "port_pattern": "80,443"})
    assert resp.status_code == 200, resp.text
    updated = resp.json()
    assert updated["notes"] == "why" and updated["port_pattern"] == "80,443"
    assert updated["destination_pattern"] == rule["destination_pattern"]

    # Expiry: an RFC 3339 time in the past hides the rule; "" makes it permanent again.
    past = gp.api("PUT", f"/api/rules/{rule['id']}", json={"expires_at": "2001-01-01T00:00:00Z"}).json()
    assert past["is_active"] is False and past["rule_type"] == "temporary"
    assert all(r["id"] != rule["id"] for r in gp.api("GET", "/api/rules").json()["items"])
    listed = gp.api("GET", "/api/rules?include_expired=true").json()["items"]
    assert any(r["id"] == rule["id"] for r in listed)
    cleared = gp.api("PUT", f"/api/rules/{rule['id']}", json={"expires_at": ""}).json()
    assert cleared["expires_at"] is None and cleared["is_active"] and cleared["rule_type"] == "permanent"

    # Making it identical to another rule is a conflict, not a 500.
    other = create_rule(gp, destination_pattern="other.example.com")
    resp = gp.api(
        "PUT",
        f"/api/rules/{other['id']}",
        json={"destination_pattern": "example.com", "port_pattern": "80,443"},
    )
    assert_error(resp, 409)

    assert gp.api("DELETE", f"/api/rules/{rule['id']}").json() == {"status": "ok", "deleted": True}
    assert_error(gp.api("DELETE", f"/api/rules/{rule['id']}"), 404)
    assert_error(gp.api("GET", f"/api/rules/{rule['id']}"), 404)


def test_rule_ingest(gp):
    existing = create_rule(gp, destination_pattern="dup.example.com")
    batch = [
        {"container_pattern": "agent1", "destination_pattern": "dup.example.com", "port_pattern": "443"},
        {"container_pattern": "agent1", "destination_pattern": "**.npmjs.org"},
        {"container_pattern": "*", "destination_pattern": "10.0.0.0/8", "action": "deny", "notes": "lan"},
    ]
    resp = gp.api("POST", "/api/rules/ingest", json=batch)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"imported": 2, "skipped": 1, "pending_cleaned": 0}
    items = gp.api("GET", "/api/rules?container=agent1").json()["items"]
    assert {r["destination_pattern"] for r in items} >= {"dup.example.com", "**.npmjs.org"}
    assert gp.api("GET", f"/api/rules/{existing['id']}").status_code == 200
    again = gp.api("POST", "/api/rules/ingest", json=batch).json()
    assert again == {"imported": 0, "skipped": 3, "pending_cleaned": 0}
    assert gp.api("POST", "/api/rules/ingest", json=[]).json() == {
        "imported": 0,
        "skipped": 0,
        "pending_cleaned": 0,
    }


def test_restart_keeps_rules(gp):
    rule = create_rule(gp, destination_pattern="keep.example.com", notes="survives")
    gp.restart()
    again = gp.api("GET", f"/api/rules/{rule['id']}")
    assert again.status_code == 200
    assert again.json()["notes"] == "survives"


# -- silent mode, settings, container modes ------------------------------------------------------


def test_allowall_lifecycle(gp):
    assert gp.api("GET", "/api/allowall").json() == {"active": False}
    on = gp.api("POST", "/api/allowall", json={"mode": "allow", "duration": "30m"}).json()
    assert on["active"] is True and on["mode"] == "allow"
    assert 1790 <= on["remaining_seconds"] <= 1800 and on["expires_at"].endswith("Z")
    assert gp.api("GET", "/api/allowall").json()["mode"] == "allow"
    deny = gp.api("POST", "/api/allowall", json={"mode": "deny", "duration": "restart"}).json()
    assert deny == {"active": True, "mode": "deny"}  # no expiry: until restart
    assert gp.api("DELETE", "/api/allowall").json() == {"active": False}
    assert gp.api("GET", "/api/allowall").json() == {"active": False}
    short = gp.api("POST", "/api/allowall", json={"mode": "allow", "duration": "1s"}).json()
    assert short["active"] is True
    assert gp.wait_for(lambda: gp.api("GET", "/api/allowall").json() == {"active": False}, timeout=5)


def test_settings_round_trip_and_persistence(gp):
    initial = gp.api("GET", "/api/settings").json()
    assert initial["theme"] == "system"
    assert initial["mitm"]["enabled"] is True and initial["mitm"]["bypass"] == []
    assert initial["notifications"]["enabled"] is True and initial["notifications"]["activeClaims"] == 0

    resp = gp.api("PUT", "/api/settings", json={"theme": "dark", "mitm": {"enabled": False}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["theme"] == "dark" and resp.json()["mitm"]["enabled"] is False
    assert gp.api("PUT", "/api/notifications", json={"enabled": False}).json() == {"enabled": False}

    path = gp.data_dir / "settings.json"
    assert json.loads(path.read_text()) == {
        "theme": "dark",
        "mitmEnabled": False,
        "notificationsEnabled": False,
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644

    gp.restart()
    after = gp.api("GET", "/api/settings").json()
    assert after["theme"] == "dark" and after["mitm"]["enabled"] is False
    assert after["notifications"]["enabled"] is False
    assert gp.api("GET", "/api/notifications").json() == {"enabled": False, "active_claims": 0}
    # A partial PUT changes only what it names.
    assert gp.api("PUT", "/api/settings", json={"theme": "light"}).json()["mitm"]["enabled"] is False


def test_container_modes(gp_factory):
    gp = gp_factory(config_yaml="container_modes:\n  - {container: 'ci-*', mode: open}\n")
    listed = gp.api("GET", "/api/container-modes").json()
    assert [(m["container_pattern"], m["mode"], m["source"]) for m in listed["items"]] == [
        ("ci-*", "open", "config")
    ]

    resp = gp.api("POST", "/api/container-modes", json={"container_pattern": "learn-*", "mode": "report"})
    assert resp.status_code == 201, resp.text
    mode = resp.json()
    assert mode["container_pattern"] == "learn-*" and mode["mode"] == "report" and mode["id"] > 0
    # Setting the same pattern again changes its mode instead of adding a row.
    again = gp.api(
        "POST", "/api/container-modes", json={"container_pattern": "learn-*", "mode": "enforce"}
    ).json()
    assert again["id"] == mode["id"] and again["mode"] == "enforce"
    assert gp.api("GET", "/api/container-modes").json()["total"] == 2

    assert gp.api("DELETE", f"/api/container-modes/{mode['id']}").json() == {"status": "ok", "deleted": True}
    assert_error(gp.api("DELETE", f"/api/container-modes/{mode['id']}"), 404)


# -- logs and dashboard --------------------------------------------------------------------------


def test_logs_stats_and_dashboard_see_fresh_traffic(gp, origin):
    deny = create_rule(
        gp, container_pattern="agent1", destination_pattern=origin.host, port_pattern="*", action="deny"
    )
    rep, sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)
    sock.close()
    assert rep == 0x02
    allow = create_rule(gp, container_pattern="agent2", destination_pattern=origin.host, port_pattern="*")
    rep, sock = socks_connect(gp.ports["socks5"], origin.host, origin.port, user="agent2")
    sock.close()
    assert rep == 0

    def logs(query: str = "") -> dict:
        return gp.api("GET", f"/api/logs{query}").json()

    body = gp.wait_for(lambda: (b := logs()) and b["total"] >= 2 and b)
    assert body["total"] == 2 and body["page"] == 1 and body["pages"] == 1
    newest, oldest = body["items"]
    assert (newest["result"], newest["container_name"], newest["rule_id"]) == (
        "allowed",
        "agent2",
        allow["id"],
    )
    assert newest["rule_summary"] == f"agent2 → {origin.host}:*"
    assert newest["destination_host"] == origin.host and newest["destination_port"] == origin.port
    assert newest["timestamp"].endswith("Z")
    assert (oldest["result"], oldest["container_name"], oldest["rule_id"]) == (
        "blocked",
        "agent1",
        deny["id"],
    )
    assert oldest["rule_summary"] == f"agent1 → {origin.host}:*"

    assert [i["container_name"] for i in logs("?result=blocked")["items"]] == ["agent1"]
    assert logs("?container=agent2")["total"] == 1
    assert logs(f"?destination={origin.host}")["total"] == 2
    assert logs("?destination=nowhere.example")["total"] == 0
    assert logs("?from_date=2999-01-01T00:00")["total"] == 0
    paged = logs("?limit=1&offset=1")
    assert paged["page"] == 2 and paged["pages"] == 2 and len(paged["items"]) == 1

    stats = gp.api("GET", "/api/logs/stats").json()
    assert (stats["total_requests"], stats["allowed"], stats["blocked"]) == (2, 1, 1)
    assert stats["top_destinations"][0]["host"] == origin.host
    assert stats["top_destinations"][0]["containers"] == ["agent1"]
    assert sum(b["allowed"] + b["blocked"] for b in stats["timeline"]) == 2

    dash = gp.api("GET", "/api/dashboard?period=7d").json()
    assert (dash["total_requests"], dash["allowed"], dash["blocked"], dash["allow_rate"]) == (2, 1, 1, 50.0)
    assert {c["name"]: c["percentage"] for c in dash["by_container"]} == {"agent1": 50.0, "agent2": 50.0}
    assert dash["top_blocked"][0]["count"] == 1
    assert len(dash["timeline"]) in (7, 8)  # 7 days grouped by day (8 when the window spans midnight)
    assert len(dash["recent"]) == 2
    assert (
        gp.api("GET", "/api/dashboard?recent_limit=1&group_by=hour").json()["recent"][0]["container_name"]
        == "agent2"
    )


# -- Server-Sent Events ---------------------------------------------------------------------


def read_sse(lines):
    """Yield (event, data) pairs from the lines of an SSE stream."""
    event, data = None, []
    for line in lines:
        if line == "":
            if event is not None:
                yield event, json.loads("\n".join(data))
            event, data = None, []
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


def test_sse_streams_rule_events(gp):
    url = f"{gp.api_url}/api/events?types=rule.created,rule.deleted"
    headers = {"Authorization": f"Bearer {gp.token}"}
    with gp.session.get(url, headers=headers, stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = resp.iter_lines(decode_unicode=True)
        assert next(lines).startswith("retry:")  # the stream is open and subscribed
        # Not in ?types=: must not arrive.
        gp.api("POST", "/api/allowall", json={"mode": "allow", "duration": "1m"})
        rule = create_rule(gp, destination_pattern="sse.example.com")
        gp.api("DELETE", f"/api/rules/{rule['id']}")
        events = read_sse(lines)
        assert next(events) == ("rule.created", rule)
        kind, data = next(events)
        assert kind == "rule.deleted" and data["id"] == rule["id"]


def test_sse_requires_token(gp):
    assert_error(gp.api("GET", "/api/events", token=False, stream=True), 401)


@pytest.mark.parametrize("path", ["/api/rules/", "/api/pending/"])
def test_trailing_slash_is_tolerated(gp, path):
    assert gp.api("GET", path).status_code == 200


def test_oversized_body_is_413_json(gp):
    resp = gp.api(
        "POST",
        "/api/rules",
        data=b"[" + b"1," * 5_000_000 + b"1]",
        headers={"Content-Type": "application/json"},
    )
    assert_error(resp, 413)
    assert gp.api("GET", "/api/health").status_code == 200


# -- pending rows from a real held connection -----------------------------------------------------


def hold_in_background(gp, origin, user: str = "agent1") -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        result["rep"], sock = socks_connect(gp.ports["socks5"], origin.host, origin.port, user=user)
        sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_pending_listing_bad_decisions_and_ingest_cleanup(gp, origin):
    thread, result = hold_in_background(gp, origin)
    pending = gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"])
    assert len(pending) == 1
    row = pending[0]
    assert (row["container_name"], row["destination_host"], row["destination_port"]) == (
        "agent1",
        origin.host,
        origin.port,
    )
    assert row["attempt_count"] == 1 and row["first_seen"].endswith("Z")
    assert gp.api("GET", "/api/pending/count").json() == {"count": 1}
    assert gp.api("GET", "/api/pending?container=agent1").json()["total"] == 1
    assert gp.api("GET", "/api/pending?destination=elsewhere").json()["total"] == 0

    # Bad decisions on a real row are 400s and leave it pending.
    assert_error(gp.api("POST", f"/api/pending/{row['id']}/allow", json={"scope": "galaxy"}), 400, "scope")
    assert_error(gp.api("POST", f"/api/pending/{row['id']}/deny", json={"duration": "30 minutes"}), 400)
    assert gp.api("GET", "/api/pending/count").json() == {"count": 1}

    # Ingesting an allow rule that covers the row removes it and releases the held client.
    batch = [
        {"container_pattern": "agent1", "destination_pattern": origin.host, "port_pattern": str(origin.port)}
    ]
    assert gp.api("POST", "/api/rules/ingest", json=batch).json() == {
        "imported": 1,
        "skipped": 0,
        "pending_cleaned": 1,
    }
    thread.join(5)
    assert result["rep"] == 0
    assert gp.api("GET", "/api/pending").json() == {"items": [], "total": 0}


def test_rest_deny_with_scope_creates_deny_rule(gp, origin):
    thread, result = hold_in_background(gp, origin, user="agent7")
    row = gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"])[0]
    resp = gp.api("POST", f"/api/pending/{row['id']}/deny", json={"scope": "all_containers", "notes": "no"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["pending_removed"] is True
    rule = body["rule"]
    assert (rule["container_pattern"], rule["destination_pattern"], rule["port_pattern"], rule["action"]) == (
        "*",
        origin.host,
        str(origin.port),
        "deny",
    )
    assert rule["created_by"] == "api" and rule["notes"] == "no" and rule["rule_type"] == "permanent"
    thread.join(5)
    assert result["rep"] == 0x02
    assert_error(gp.api("POST", f"/api/pending/{row['id']}/allow"), 404)
