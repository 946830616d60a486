"""PostgreSQL restarts under traffic (issue 14): the nodes keep deciding from memory, report
`degraded`, reconnect, resync, and nothing acknowledged before the restart is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.netutil import wait_until
from tests.pgcluster import PgCluster, pg_bin

TRAFFIC_SECONDS_MAX = 30  # the load loop's bound


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A cluster of this test's own: restarting the shared one would disturb the others."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    cluster = PgCluster().init()
    yield cluster
    cluster.destroy()


@pytest.fixture
def fleet_db(own_cluster: PgCluster) -> str:
    return own_cluster.fresh_url()


class Traffic:
    """Requests through each node in turn, from a thread, until stopped (or the bound)."""

    def __init__(self, nodes: list[Any], url: str) -> None:
        self.nodes, self.url = nodes, url
        self.results: list[tuple[float, str, int]] = []  # (time, node, status or 0 for an error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + TRAFFIC_SECONDS_MAX
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            node = self.nodes[i % len(self.nodes)]
            i += 1
            proxy = {"http": f"http://agent1:x@127.0.0.1:{node.ports['http']}"}
            try:
                status = session.get(self.url, proxies=proxy, timeout=5,
                                     headers={"Connection": "close"}).status_code
            except requests.RequestException:
                status = 0
            self.results.append((time.monotonic(), node.data_dir.name, status))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def health(node: Any) -> dict:
    return node.api("GET", "/api/health", timeout=10).json()


def test_restart_during_traffic(node_factory, own_cluster, origin):
    a, b = node_factory("node-a"), node_factory("node-b")
    for node in (a, b):
        assert wait_until(lambda n=node: health(n).get("fleet", {}).get("connected"), 10), node.logs()
    rule = a.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                             "port_pattern": str(origin.port)})
    assert rule.status_code == 201, rule.text
    url = f"http://{origin.host}:{origin.port}/t"
    with Traffic([a, b], url) as traffic:
        assert wait_until(lambda: sum(1 for r in traffic.results if r[2] == 200) >= 10, 5)
        own_cluster.stop("fast")
        down_at = time.monotonic()
        # the nodes notice and say so (200, degraded), and keep deciding from memory
        assert wait_until(lambda: all(health(n)["status"] == "degraded" for n in (a, b)), 15), \
            (health(a), health(b))
        assert wait_until(lambda: sum(1 for t, _n, s in traffic.results if t > down_at + 0.5 and s == 200) >= 10, 10)
        own_cluster.start()
        up_at = time.monotonic()
        assert wait_until(lambda: all(health(n)["status"] == "ok" and health(n)["fleet"]["connected"]
                                      for n in (a, b)), 20), (health(a), health(b))
        reconnected = time.monotonic() - up_at
        assert wait_until(lambda: sum(1 for t, _n, s in traffic.results if t > up_at + reconnected) >= 10, 10)
    served_during_outage = [r for r in traffic.results if down_at < r[0] < up_at]
    assert served_during_outage and all(s == 200 for _t, _n, s in served_during_outage), \
        "a request was refused while the database was down"
    assert {n for _t, n, _s in served_during_outage} == {"node-a", "node-b"}
    # nothing acknowledged is lost: the rule, and a log row for every request the nodes answered
    assert a.api("GET", f"/api/rules/{rule.json()['id']}").status_code == 200
    answered = sum(1 for _t, _n, s in traffic.results if s == 200)
    assert len(origin.requests) == answered

    def logged() -> int:
        return a.api("GET", f"/api/logs?container=agent1&destination={origin.host}&limit=1").json()["total"]

    assert wait_until(lambda: logged() == answered, 10), (logged(), answered)
    # the link works again: a deny rule made on B stops A within a second
    deny = b.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                             "port_pattern": str(origin.port), "action": "deny"})
    assert deny.status_code == 201, deny.text
    session = requests.Session()
    session.trust_env = False
    proxy = {"http": f"http://agent1:x@127.0.0.1:{a.ports['http']}"}
    assert wait_until(lambda: session.get(url, proxies=proxy, timeout=5).status_code == 403, 1.0, 0.02)
    for node in (a, b):  # each reconnected once and read everything again
        assert health(node)["fleet"]["reconnects"] >= 1 and health(node)["fleet"]["resyncs"] >= 2
