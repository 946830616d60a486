"""Issue 13: policy changes patch the index (a heartbeat rebuilds nothing), bulk routes are
bounded and yield to the proxy while they work."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time

import requests

SESSION_ID = "gw-storm-0123456789ab"


def policy(gp) -> dict:
    return gp.api("GET", "/api/metrics").json()["policy"]


def proxied_get(gp, origin, timeout: float = 15.0) -> requests.Response:
    proxy = f"http://agent1:x@127.0.0.1:{gp.ports['http']}"
    return requests.get(f"http://{origin.host}:{origin.port}/", proxies={"http": proxy}, timeout=timeout)


def allow_origin(gp, origin) -> int:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                               "port_pattern": str(origin.port), "action": "allow"})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["id"]


def test_heartbeats_and_rule_writes_patch_the_index_without_rebuilding(gp, origin):
    body = {"session_id": SESSION_ID, "container_name": "storm", "ttl_seconds": 300,
            "network_rules": [{"destination_pattern": "example.com", "port_pattern": "443"}]}
    assert gp.api("POST", "/api/sessions", json=body).status_code == 200
    before = policy(gp)
    for _ in range(30):
        assert gp.api("POST", f"/api/sessions/{SESSION_ID}/heartbeat").status_code == 200
    # a rule created is used by the very next connection (patched synchronously), then deleted
    rule_id = allow_origin(gp, origin)
    assert proxied_get(gp, origin).status_code == 200
    assert gp.api("DELETE", f"/api/rules/{rule_id}").status_code == 200
    after = policy(gp)
    assert after["rebuilds"] == before["rebuilds"]  # nothing above rebuilt the index
    assert after["session_extensions"] - before["session_extensions"] == 30
    assert after["patches"] - before["patches"] == 2
    assert after["rules"] == before["rules"]


def test_bulk_routes_refuse_more_than_the_bound(gp):
    for route in ("/api/pending/bulk-allow", "/api/pending/bulk-dismiss"):
        resp = gp.api("POST", route, json={"pending_ids": list(range(1, 10_002))})
        assert resp.status_code == 400
        assert "10000" in resp.json()["error"]
    resp = gp.api("POST", "/api/pending/bulk-dismiss", json={"pending_ids": list(range(1, 10_001))})
    assert resp.status_code == 200 and resp.json()["removed"] == 0
    rules = [{"container_pattern": "bound", "destination_pattern": f"h{i}.bound.example", "port_pattern": "443",
              "action": "allow"} for i in range(10_001)]
    resp = gp.api("POST", "/api/rules/ingest", json=rules)
    assert resp.status_code == 400 and "10000" in resp.json()["error"]
    assert gp.api("GET", "/api/rules", params={"container": "bound"}).json()["total"] == 0
    resp = gp.api("POST", "/api/rules/ingest", json=rules[:10_000])
    assert resp.status_code == 200 and resp.json()["imported"] == 10_000


def test_bulk_allow_of_the_maximum_keeps_the_proxy_serving(gp, origin):
    allow_origin(gp, origin)
    n = 10_000
    now = dt.datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(gp.data_dir / "greyproxy.db", timeout=10) as db:
        db.executemany(
            "INSERT INTO pending_requests (container_name, container_id, destination_host, destination_port,"
            " first_seen, last_seen, attempt_count) VALUES ('bulk', '', ?, 443, ?, ?, 1)",
            [(f"h{i}.bulk.example", now, now) for i in range(n)])
        ids = [row[0] for row in db.execute("SELECT id FROM pending_requests WHERE container_name = 'bulk'")]
    assert len(ids) == n
    result: dict = {}

    def bulk() -> None:
        result["started"] = time.monotonic()
        result["resp"] = requests.post(gp.api_url + "/api/pending/bulk-allow", json={"pending_ids": ids}, timeout=180,
                                       headers={"Authorization": f"Bearer {gp.token}"})
        result["ended"] = time.monotonic()

    thread = threading.Thread(target=bulk)
    thread.start()
    served: list[float] = []
    while thread.is_alive():
        resp = proxied_get(gp, origin)
        assert resp.status_code == 200
        served.append(time.monotonic())
        time.sleep(0.01)  # under the per-container request rate limit
    thread.join()
    resp = result["resp"]
    assert resp.status_code == 200, resp.text
    assert resp.json()["pending_removed"] == n
    during = [t for t in served if result["started"] < t < result["ended"]]
    assert len(during) >= 2, (len(served), result["ended"] - result["started"])
    after = policy(gp)
    assert after["rules"] >= n + 1
    # the new rules are live: a bulk-allowed destination is decided allow
    assert gp.api("GET", "/api/pending/count").json()["count"] == 0


def test_a_big_json_body_does_not_stop_the_proxy(gp, origin):
    """Parsing a body of several MB takes a second or more: it happens off the hub, so the
    proxy and /api/health keep answering while it does."""
    allow_origin(gp, origin)
    body = json.dumps([{"container_pattern": "wide", "destination_pattern": f"h{i}.wide.example",
                        "port_pattern": "443", "action": "allow", "notes": "n" * 8} for i in range(45_000)])
    assert 5_000_000 < len(body) < 8 * 1024 * 1024
    result: dict = {}

    def post() -> None:
        result["resp"] = requests.post(gp.api_url + "/api/rules/ingest", data=body, timeout=120,
                                       headers={"Authorization": f"Bearer {gp.token}",
                                                "Content-Type": "application/json"})

    thread = threading.Thread(target=post)
    waits: list[float] = []
    thread.start()
    while thread.is_alive() and len(waits) < 500:
        started = time.monotonic()
        assert proxied_get(gp, origin).status_code == 200
        waits.append(time.monotonic() - started)
        time.sleep(0.01)
    thread.join()
    assert result["resp"].status_code == 400  # 45,000 rules: over the bound, after the parse
    assert waits and max(waits) < 1.0, (len(waits), max(waits))
