"""Decisions "until restart" (docs/user-guide.md#until-restart): a rule with no expiry that lets
the connection through now and is gone, with one audit entry, once greyproxy starts again."""

from __future__ import annotations

import pytest

from tests.backends import database_url  # noqa: F401 - runs on SQLite and PostgreSQL
from tests.integration.test_api import assert_error, create_rule, hold_in_background
from tests.integration.test_request_rules import ProxyConn, held_item

pytestmark = pytest.mark.no_ca


def purge_entries(gp) -> list[dict]:
    return gp.api("GET", "/api/audit", params={"kind": "rule.purge"}).json()["items"]


def test_allow_until_restart_lets_through_then_goes_at_restart(gp, origin):
    thread, result = hold_in_background(gp, origin, user="agent1")
    row = gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"])[0]
    resp = gp.api("POST", f"/api/pending/{row['id']}/allow", json={"duration": "restart"})
    assert resp.status_code == 200, resp.text
    rule = resp.json()["rule"]
    assert rule["rule_type"] == "until_restart" and rule["expires_at"] is None and rule["is_active"]
    thread.join(5)
    assert result["rep"] == 0  # the held connection went through on this rule

    # The same duration on POST /api/rules; a permanent rule beside them must survive the restart.
    api_rule = create_rule(gp, destination_pattern="restart.example.com", duration="restart")
    assert api_rule["rule_type"] == "until_restart" and api_rule["expires_at"] is None
    kept = create_rule(gp, destination_pattern="kept.example.com", duration="permanent")
    assert kept["rule_type"] == "permanent"
    listed = {r["id"]: r["rule_type"] for r in gp.api("GET", "/api/rules").json()["items"]}
    assert listed[rule["id"]] == listed[api_rule["id"]] == "until_restart"
    assert purge_entries(gp) == []

    gp.restart()
    ids = {r["id"] for r in gp.api("GET", "/api/rules", params={"include_expired": "true"}).json()["items"]}
    assert rule["id"] not in ids and api_rule["id"] not in ids and kept["id"] in ids
    entries = purge_entries(gp)
    assert len(entries) == 1
    assert entries[0]["actor"] == "system"
    assert entries[0]["after"]["removed"] == 2 and entries[0]["after"]["rule_type"] == "until_restart"

    # The next attempt is held again (not let through by a forgotten rule).
    thread, result = hold_in_background(gp, origin, user="agent1")
    again = gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"])
    assert [(p["container_name"], p["destination_port"]) for p in again] == [("agent1", origin.port)]
    assert thread.is_alive() and "rep" not in result
    gp.api("POST", f"/api/pending/{again[0]['id']}/deny")
    thread.join(5)
    assert result["rep"] == 0x02

    # A second restart with nothing to remove writes no entry.
    gp.restart()
    assert len(purge_entries(gp)) == 1


def test_bulk_allow_until_restart(gp, origin):
    thread, result = hold_in_background(gp, origin, user="agent2")
    row = gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"])[0]
    resp = gp.api("POST", "/api/pending/bulk-allow", json={"pending_ids": [row["id"]], "duration": "restart"})
    assert resp.status_code == 200, resp.text
    assert [r["rule_type"] for r in resp.json()["rules_created"]] == ["until_restart"]
    thread.join(5)
    assert result["rep"] == 0


@pytest.mark.parametrize("fields, contains", [
    ({"duration": "restart", "expires_in_seconds": 60}, "duration"),
    ({"rule_type": "until_restart", "expires_in_seconds": 60}, "until_restart"),
    ({"duration": "until restart"}, "duration"),
    ({"duration": 7}, "duration"),
])
def test_bad_until_restart_bodies_are_400(gp, fields, contains):
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "a", "destination_pattern": "x.example.com",
                                               **fields})
    assert_error(resp, 400, contains)


def test_held_http_request_allowed_until_restart(gp_factory, origin):
    """A held single request (request-level hold rule) answered 'until restart': the next POST
    passes on the rule; after a restart that rule is gone and the POST is held again."""
    gp = gp_factory(hold_seconds=15)
    base = {"container_pattern": "agent1", "destination_pattern": origin.host, "port_pattern": str(origin.port)}
    create_rule(gp, **base)
    create_rule(gp, **base, action="hold", method_pattern="POST", path_pattern="/v1/*")
    conn = ProxyConn(gp, origin)
    conn.send("POST", "/v1/x", b"one")
    item = held_item(gp, method="POST")
    out = gp.api("POST", f"/api/pending-http/{item['id']}/allow", json={"duration": "restart"}).json()
    assert out["rule"]["rule_type"] == "until_restart" and out["rule"]["expires_at"] is None
    assert conn.response()[0] == 200
    conn.send("POST", "/v1/x", b"two")  # the rule decides: not held
    assert conn.response()[0] == 200
    assert [r["body"] for r in origin.requests] == [b"one", b"two"]

    gp.restart()
    conn = ProxyConn(gp, origin)
    conn.send("POST", "/v1/x", b"three")
    again = held_item(gp, method="POST")
    assert conn.waiting() and [r["body"] for r in origin.requests] == [b"one", b"two"]
    gp.api("POST", f"/api/pending-http/{again['id']}/deny", json={})
    assert conn.response()[0] == 403
    assert purge_entries(gp)[0]["after"]["removed"] == 1
