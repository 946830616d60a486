"""Fleet mode: rules made "until restart" are shared, so they go when any node starts; the
nodes still running drop them from their index too (docs/user-guide.md#until-restart)."""

from __future__ import annotations

import time

import requests

from tests.integration.netutil import wait_until


def via(node, url: str) -> int:
    session = requests.Session()
    session.trust_env = False
    proxy = f"http://agent1:x@127.0.0.1:{node.ports['http']}"
    return session.get(url, proxies={"http": proxy}, timeout=10).status_code


def connected(node) -> bool:
    return bool(node.api("GET", "/api/health").json().get("fleet", {}).get("connected"))


def test_a_starting_node_removes_them_for_every_node(node_factory, origin):
    a = node_factory("node-a", hold_seconds=1.0)
    b = node_factory("node-b", hold_seconds=1.0)
    assert wait_until(lambda: connected(a) and connected(b), 10)
    url = f"http://{origin.host}:{origin.port}/"
    resp = a.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                             "port_pattern": str(origin.port), "duration": "restart"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["rule_type"] == "until_restart"
    assert wait_until(lambda: via(b, url) == 200, 5)  # B follows A's new rule
    seen = len(origin.requests)

    a.restart()  # A deletes it and asks B to reload its rules
    assert wait_until(lambda: connected(a), 10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and via(b, url) == 200:
        seen = len(origin.requests)
        time.sleep(0.2)
    assert via(b, url) != 200  # held on B, then refused at the hold timeout
    assert len(origin.requests) == seen
    entries = a.api("GET", "/api/audit", params={"kind": "rule.purge"}).json()["items"]
    assert [(e["actor"], e["after"]["removed"]) for e in entries] == [("system", 1)]
