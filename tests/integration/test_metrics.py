"""/metrics (Prometheus text, scraped with prometheus_client's own parser) and /api/metrics
agree with the connection log after real traffic."""

from __future__ import annotations

import subprocess
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.netutil import EchoServer, recv_exact, socks_connect

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

ALLOWED, BLOCKED = 7, 4
PAYLOAD = b"x" * 5000


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def scrape(gp) -> dict[str, list]:
    resp = gp.api("GET", "/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families: dict[str, list] = {}
    for family in text_string_to_metric_families(resp.text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def log_total(gp, result: str) -> int:
    return gp.api("GET", f"/api/logs?result={result}&limit=1").json()["total"]


def test_metrics_match_the_logs_after_traffic(gp, echo, origin):
    assert gp.api("GET", "/metrics", token=False).status_code == 401
    assert gp.api("GET", "/api/metrics", token=False).status_code == 401
    rule = {"container_pattern": "agent1", "destination_pattern": echo.host, "port_pattern": str(echo.port)}
    assert gp.api("POST", "/api/rules", json=rule).status_code == 201
    deny = {"container_pattern": "agent1", "destination_pattern": "*.denied.test", "action": "deny"}
    assert gp.api("POST", "/api/rules", json=deny).status_code == 201

    for _ in range(ALLOWED):
        code, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port)
        assert code == 0
        sock.sendall(PAYLOAD)
        assert recv_exact(sock, len(PAYLOAD)) == PAYLOAD
        sock.close()
    for i in range(BLOCKED):
        code, sock = socks_connect(gp.ports["socks5"], f"h{i}.denied.test", 443)
        sock.close()
        assert code == 2

    # One connection held right now: the gauges show it.
    held = threading.Thread(target=lambda: socks_connect(gp.ports["socks5"], origin.host, origin.port)[1].close())
    held.start()
    assert gp.wait_for(lambda: gp.api("GET", "/api/pending/count").json()["count"] == 1)
    families = scrape(gp)
    assert total(families["greyproxy_held_connections"], "greyproxy_held_connections") == 1
    assert total(families["greyproxy_pending_requests"], "greyproxy_pending_requests") == 1
    pending = gp.api("GET", "/api/pending").json()["items"][0]
    assert gp.api("POST", f"/api/pending/{pending['id']}/deny", json={}).status_code == 200
    held.join(10)

    assert gp.wait_for(lambda: log_total(gp, "allowed") == ALLOWED and log_total(gp, "blocked") == BLOCKED + 1)
    families = scrape(gp)
    conns = families["greyproxy_connections"]
    assert total(conns, "greyproxy_connections_total", result="allowed") == log_total(gp, "allowed") == ALLOWED
    assert total(conns, "greyproxy_connections_total", result="blocked") == log_total(gp, "blocked") == BLOCKED + 1
    assert total(conns, "greyproxy_connections_total", result="blocked", reason="denied_by_rule") == BLOCKED + 1
    assert total(conns, "greyproxy_connections_total", result="allowed", reason="allowed_by_rule") == ALLOWED

    decision = families["greyproxy_decision_seconds"]
    assert total(decision, "greyproxy_decision_seconds_count") == ALLOWED + BLOCKED + 1
    assert total(families["greyproxy_hold_seconds"], "greyproxy_hold_seconds_count") == 1
    assert total(families["greyproxy_held_connections"], "greyproxy_held_connections") == 0
    # Bytes through the tunnels: every payload went up and came back down.
    assert gp.wait_for(lambda: total(scrape(gp)["greyproxy_relayed_bytes"], "greyproxy_relayed_bytes_total",
                                     direction="down") >= ALLOWED * len(PAYLOAD))
    relayed = scrape(gp)["greyproxy_relayed_bytes"]
    assert total(relayed, "greyproxy_relayed_bytes_total", direction="up") >= ALLOWED * len(PAYLOAD)
    batches = families["greyproxy_db_write_batch_seconds"]
    assert total(batches, "greyproxy_db_write_batch_seconds_count", table="request_logs") >= 1
    assert total(families["greyproxy_build_info"], "greyproxy_build_info") == 1

    as_json = gp.api("GET", "/api/metrics").json()
    assert as_json["connections"]["allowed"] == ALLOWED and as_json["connections"]["blocked"] == BLOCKED + 1
    assert as_json["connections"]["by_reason"]["blocked"] == {"denied_by_rule": BLOCKED + 1}
    assert as_json["decision_seconds"]["count"] == ALLOWED + BLOCKED + 1
    assert as_json["bytes_relayed"]["down"] >= ALLOWED * len(PAYLOAD)
    assert as_json["pending_requests"] == 0 and as_json["held_connections"] == 0
    assert as_json["db_rows_written"]["request_logs"] >= ALLOWED + BLOCKED + 1


def test_mitm_handshakes_are_counted_by_result(intercepting_gp, tls_origin):
    gp = intercepting_gp()
    url = f"https://localhost:{tls_origin.port}/"
    base = ["curl", "-sS", "--noproxy", "", "--max-time", "20", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}"]
    env = {"PATH": "/usr/bin:/bin"}
    trusted = subprocess.run([*base, "--cacert", str(gp.ca_path), url], capture_output=True, timeout=30, env=env)
    assert trusted.returncode == 0, trusted.stderr
    untrusted = subprocess.run([*base, "--cacert", str(tls_origin.ca_path), url], capture_output=True, timeout=30,
                               env=env)
    assert untrusted.returncode != 0  # the client refuses our certificate
    counts = gp.wait_for(lambda: (lambda m: m if sum(m.values()) >= 2 else None)(
        gp.api("GET", "/api/metrics").json()["mitm_handshakes"]))
    assert counts == {"ok": 1, "client_error": 1}
    samples = scrape(gp)["greyproxy_mitm_handshakes"]
    assert total(samples, "greyproxy_mitm_handshakes_total", result="ok") == 1
    assert total(samples, "greyproxy_mitm_handshakes_total", result="client_error") == 1
