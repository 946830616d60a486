"""Two real nodes on one PostgreSQL (issue 14): what one node decides, the other acts on."""

from __future__ import annotations

import time

import requests

from tests.integration.netutil import curl, wait_until


def pending(node) -> list[dict]:
    return node.api("GET", "/api/pending").json()["items"]


def wait_pending(node, host: str, port: int, timeout: float = 5.0) -> dict:
    found = wait_until(lambda: [i for i in pending(node)
                                if i["destination_host"] == host and i["destination_port"] == port], timeout)
    assert found, f"{host}:{port} never showed up in {node.data_dir.name}'s /api/pending"
    return found[0]


def test_health_names_the_node_and_the_link(two_nodes):
    a, b = two_nodes
    ha, hb = a.api("GET", "/api/health").json(), b.api("GET", "/api/health").json()
    assert (ha["node"], hb["node"]) == ("node-a", "node-b")
    assert ha["status"] == hb["status"] == "ok" and ha["fleet"]["connected"] and hb["fleet"]["connected"]


def test_held_on_b_is_released_by_an_approval_through_a(two_nodes, origin):
    a, b = two_nodes
    client = curl("--socks5-hostname", f"agent1:x@127.0.0.1:{b.ports['socks5']}",
                  f"http://{origin.host}:{origin.port}/fleet")
    item = wait_pending(a, origin.host, origin.port)  # A's dashboard lists B's pending row ...
    assert wait_until(lambda: wait_pending(a, origin.host, origin.port)["waiter_count"] == 1, 3), \
        "A does not count the connection held on B"  # ... with B's waiter
    assert client.poll() is None, "curl must still be held on B"
    started = time.monotonic()
    resp = a.api("POST", f"/api/pending/{item['id']}/allow", json={"scope": "exact", "duration": "1h"})
    assert resp.status_code == 200, resp.text
    out, err = client.communicate(timeout=10)
    assert client.returncode == 0, err
    assert out == origin.body and time.monotonic() - started < 2
    assert [r["path"] for r in origin.requests] == ["/fleet"]  # the origin saw the request once, from B
    assert pending(a) == [] and pending(b) == []
    # the log row, listed by A, says B answered it
    logs = wait_until(lambda: a.api("GET", f"/api/logs?destination={origin.host}").json()["items"], 3)
    assert logs and {row["node_id"] for row in logs} == {"node-b"}


def via(node, url: str) -> int:
    """GET through the node's HTTP proxy as agent1; the status code the client sees."""
    session = requests.Session()
    session.trust_env = False
    proxy = f"http://agent1:x@127.0.0.1:{node.ports['http']}"
    return session.get(url, proxies={"http": proxy}, timeout=5).status_code


def test_deny_rule_created_on_a_blocks_on_b_within_a_second(two_nodes, origin):
    a, b = two_nodes
    url = f"http://{origin.host}:{origin.port}/probe"
    allow = a.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": "*"})
    assert allow.status_code == 201, allow.text
    assert wait_until(lambda: via(b, url) == 200, 2)
    deny = a.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                             "port_pattern": str(origin.port), "action": "deny"})
    assert deny.status_code == 201, deny.text
    created = time.monotonic()
    assert wait_until(lambda: via(b, url) == 403, 1.0, 0.02), "B still lets agent1 through a second after A's deny"
    assert time.monotonic() - created < 1.0
    seen = len(origin.requests)
    assert via(b, url) == 403 and len(origin.requests) == seen  # the origin hears nothing more


def test_dismissal_on_a_blocks_the_connection_held_on_b(two_nodes, origin):
    a, b = two_nodes
    client = curl("-x", f"http://agent1:x@127.0.0.1:{b.ports['http']}", f"http://{origin.host}:{origin.port}/x",
                  "-o", "/dev/null", "-w", "%{http_code}")
    item = wait_pending(a, origin.host, origin.port)
    assert a.api("DELETE", f"/api/pending/{item['id']}").status_code in (200, 204)
    out, _ = client.communicate(timeout=5)
    assert out == b"403" and origin.requests == []


def test_pending_events_reach_the_other_nodes_websocket_clients(two_nodes, origin):
    import json

    import websocket

    a, b = two_nodes
    ws = websocket.create_connection(f"ws://127.0.0.1:{a.ports['api']}/ws", timeout=5,
                                     header=[f"Authorization: Bearer {a.token}"])
    try:
        client = curl("--socks5-hostname", f"agent2:x@127.0.0.1:{b.ports['socks5']}",
                      f"http://{origin.host}:{origin.port}/", timeout=3)
        deadline = time.monotonic() + 5
        seen = []
        while time.monotonic() < deadline:
            event = json.loads(ws.recv())
            seen.append(event.get("type"))
            if event.get("type") == "pending_request.created":
                assert event["data"]["container_name"] == "agent2"
                break
        else:
            raise AssertionError(f"A's WebSocket never saw B's pending request: {seen}")
        client.kill()
    finally:
        ws.close()


SESSION_PH = "greyproxy:credential:v1:gw-fleet:" + "c" * 32


def test_session_created_on_a_substitutes_credentials_on_b(two_nodes, origin):
    a, b = two_nodes
    glob = a.api("POST", "/api/credentials", json={"label": "openai", "value": "sk-global-fleet-secret-12345"})
    assert glob.status_code in (200, 201), glob.text
    resp = a.api("POST", "/api/sessions", json={
        "session_id": "gw-fleet", "container_name": "claude", "mappings": {SESSION_PH: "session-fleet-secret-777"},
        "global_credentials": ["openai"], "ttl_seconds": 300,
        "network_rules": [{"destination_pattern": origin.host, "port_pattern": str(origin.port)}]})
    assert resp.status_code == 200, resp.text
    session = requests.Session()
    session.trust_env = False
    proxy = {"http": f"http://claude:x@127.0.0.1:{b.ports['http']}"}
    headers = {"Authorization": f"Bearer {SESSION_PH}", "X-Api-Key": glob.json()["placeholder"]}

    def through_b(timeout: float = 5) -> int:
        try:
            return session.get(f"http://{origin.host}:{origin.port}/s?k={SESSION_PH}", headers=headers,
                               proxies=proxy, timeout=timeout).status_code
        except requests.ReadTimeout:
            return 0  # held: no rule lets it through

    assert wait_until(lambda: through_b() == 200, 1.0, 0.02), "B does not know A's session within a second"
    seen = origin.requests[-1]
    assert seen["headers"]["Authorization"] == "Bearer session-fleet-secret-777"
    assert seen["headers"]["X-Api-Key"] == "sk-global-fleet-secret-12345"
    assert seen["path"] == "/s?k=session-fleet-secret-777"
    # ended on A: B stops substituting and its rule goes
    assert a.api("DELETE", "/api/sessions/gw-fleet").status_code == 200
    time.sleep(1.0)
    count = len(origin.requests)
    assert through_b(timeout=1.5) != 200
    assert len(origin.requests) == count, "B still lets the ended session's container through"


def test_the_same_request_held_on_both_nodes_is_one_pending_row_with_both_waiters(two_nodes, origin):
    a, b = two_nodes
    url = f"http://{origin.host}:{origin.port}/both"
    clients = [curl("-x", f"http://agent9:x@127.0.0.1:{node.ports['http']}", url) for node in (a, b, a, b)]

    def row(node) -> dict | None:
        items = [i for i in pending(node) if i["container_name"] == "agent9"]
        return items[0] if len(items) == 1 else None

    for node in (a, b):  # one row (not one per node), counting the four held connections
        assert wait_until(lambda n=node: (row(n) or {}).get("waiter_count") == 4, 5), pending(node)
    assert wait_until(lambda: (row(a) or {}).get("attempt_count") == 4, 5), pending(a)
    assert a.api("POST", f"/api/pending/{row(a)['id']}/allow", json={"scope": "exact"}).status_code == 200
    for client in clients:
        out, err = client.communicate(timeout=10)
        assert client.returncode == 0 and out == origin.body, err
    assert len(origin.requests) == 4
    for node in (a, b):
        assert node.api("GET", "/api/health").json()["status"] == "ok"  # no writer failed on the race


def test_nodes_racing_on_new_pending_rows_make_one_row_each_and_lose_no_count(two_nodes, origin):
    a, b = two_nodes
    url = f"http://{origin.host}:{origin.port}/race"
    names = [f"racer{i}" for i in range(8)]
    clients = [curl("-x", f"http://{name}:x@127.0.0.1:{node.ports['http']}", url, timeout=15)
               for name in names for node in (a, b, a, b)]
    try:
        def rows() -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for item in pending(a):
                out.setdefault(item["container_name"], []).append(item)
            return out

        assert wait_until(lambda: all(len(rows().get(n, [])) == 1 and rows()[n][0]["attempt_count"] == 4
                                      for n in names), 8), rows()
        for node in (a, b):
            assert node.api("GET", "/api/health").json()["status"] == "ok", node.logs()[-3000:]
    finally:
        for client in clients:
            client.kill()
            client.wait(timeout=5)


def test_a_session_replaced_on_a_leaves_no_old_secret_on_b(two_nodes, origin):
    a, b = two_nodes
    old_ph, new_ph = "greyproxy:credential:v1:gw-swap:" + "d" * 32, "greyproxy:credential:v1:gw-swap:" + "e" * 32
    rule = [{"destination_pattern": origin.host, "port_pattern": str(origin.port)}]
    session = requests.Session()
    session.trust_env = False
    proxy = {"http": f"http://swap:x@127.0.0.1:{b.ports['http']}"}

    def sent_through_b(placeholder: str) -> str:
        session.get(f"http://{origin.host}:{origin.port}/", headers={"Authorization": placeholder}, proxies=proxy,
                    timeout=5)
        return origin.requests[-1]["headers"]["Authorization"]

    body = {"session_id": "gw-swap", "container_name": "swap", "ttl_seconds": 300, "network_rules": rule}
    assert a.api("POST", "/api/sessions", json={**body, "mappings": {old_ph: "old-secret-value-1"}}).status_code == 200
    assert wait_until(lambda: sent_through_b(old_ph) == "old-secret-value-1", 2)
    assert a.api("POST", "/api/sessions", json={**body, "mappings": {new_ph: "new-secret-value-2"}}).status_code == 200
    assert wait_until(lambda: sent_through_b(new_ph) == "new-secret-value-2", 2)
    assert sent_through_b(old_ph) == old_ph  # the replaced mapping is gone on B too
