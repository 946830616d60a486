"""`serve --workers N` (docs/workers.md): N data-path processes share the proxy ports, one
control plane decides. What an agent and a human see must not depend on which worker took a
connection: every assertion here is on what the clients and the origin saw, with connections
spread over both workers (checked from /proc, not assumed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.netutil import curl, wait_until

pytestmark = pytest.mark.no_ca


def worker_pids(gp) -> list[int]:
    return [w["pid"] for w in gp.api("GET", "/api/health").json()["workers"]]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def accepted_by(pid: int, port: int) -> int:
    """How many established connections to the proxy port `port` process `pid` holds."""
    inodes = _socket_inodes(pid)
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


def held_curls(gp, origin, n: int, user: str = "agent1") -> list[subprocess.Popen]:
    url = f"http://{origin.host}:{origin.port}/hello"
    return [curl("-s", "-x", f"http://{user}:x@127.0.0.1:{gp.ports['http']}", url) for _ in range(n)]


def pending_for(gp, origin) -> dict | None:
    for item in gp.api("GET", "/api/pending").json()["items"]:
        if (item["destination_host"], item["destination_port"]) == (origin.host, origin.port):
            return item
    return None


def spread(gp, n: int) -> dict[int, int]:
    """Wait until `n` connections are established in the workers; their count per worker."""
    pids = worker_pids(gp)

    def counts():
        found = {pid: accepted_by(pid, gp.ports["http"]) for pid in pids}
        return found if sum(found.values()) >= n else None

    found = wait_until(counts, 10)
    assert found, "the held connections never showed up in the workers"
    return found


def held_in_both_workers(gp, origin, n: int) -> tuple[list[subprocess.Popen], dict]:
    """`n` clients held on one destination, in both workers (checked); their pending request."""
    clients = held_curls(gp, origin, n)
    counts = spread(gp, n)
    assert all(c > 0 for c in counts.values()), f"all held in one worker: {counts}"
    item = wait_until(lambda: pending_for(gp, origin), 5)
    assert item, "the held connections never became a pending request"
    return clients, item


def test_two_workers_serve_the_ports_and_the_control_plane_holds_none(gp_factory, origin):
    gp = gp_factory(["--workers", "2"])
    health = gp.api("GET", "/api/health").json()
    assert health["status"] == "ok", health
    assert [w["alive"] for w in health["workers"]] == [True, True]
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port), "action": "allow"}).status_code in (200, 201)
    clients = [curl("-s", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                     f"http://{origin.host}:{origin.port}/n{i}") for i in range(20)]
    for client in clients:
        out, _ = client.communicate(timeout=20)
        assert out == origin.body
    assert sorted(r["path"] for r in origin.requests) == sorted(f"/n{i}" for i in range(20))
    assert accepted_by(gp.proc.pid, gp.ports["http"]) == 0
    # every connection was logged, whichever worker took it
    assert gp.wait_for(lambda: gp.api("GET", "/api/logs?limit=100").json().get("total", 0) >= 20, timeout=10)


def test_one_approval_releases_the_connections_held_in_every_worker(gp_factory, origin):
    gp = gp_factory(["--workers", "2"], hold_seconds=30)
    clients, item = held_in_both_workers(gp, origin, 16)
    # the waiter count shown to the human spans the workers
    assert gp.wait_for(lambda: (pending_for(gp, origin) or {}).get("waiter_count") == 16, timeout=5), \
        pending_for(gp, origin)
    assert all(c.poll() is None for c in clients), "nothing may pass before the approval"
    assert origin.requests == []
    started = time.monotonic()
    resp = gp.api("POST", f"/api/pending/{item['id']}/allow", json={"scope": "exact", "duration": "1h"})
    assert resp.status_code == 200, resp.text
    for client in clients:
        out, _ = client.communicate(timeout=10)
        assert out == origin.body
    assert time.monotonic() - started < 5
    assert len(origin.requests) == 16


def test_a_denial_refuses_the_connections_held_in_every_worker(gp_factory, origin):
    gp = gp_factory(["--workers", "2"], hold_seconds=30)
    clients, item = held_in_both_workers(gp, origin, 12)
    assert gp.api("POST", f"/api/pending/{item['id']}/deny", json={}).status_code == 200
    for client in clients:
        client.communicate(timeout=10)
    assert origin.requests == [], "a denied destination must never be reached"


def test_deleting_a_rule_reaches_every_worker(gp_factory, origin):
    gp = gp_factory(["--workers", "2"], hold_seconds=1)
    rule = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port), "action": "allow"}).json()
    assert gp.api("DELETE", f"/api/rules/{rule['id']}").status_code in (200, 204)
    time.sleep(0.3)
    clients = held_curls(gp, origin, 10)
    for client in clients:
        client.communicate(timeout=15)
    assert origin.requests == [], "a worker still decided by the deleted rule"


def test_reload_reaches_the_workers(gp_factory, origin, tmp_path):
    gp = gp_factory(["--workers", "2"], config_yaml="blocked_message: before\n")
    assert gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": origin.host,
                                              "port_pattern": "*", "action": "deny"}).status_code in (200, 201)
    gp.config_path.write_text("blocked_message: after-the-reload\n")
    gp.proc.send_signal(signal.SIGHUP)

    def all_say_after():
        bodies = []
        for _ in range(10):
            out = subprocess.run(["curl", "-s", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                                  f"http://{origin.host}:{origin.port}/"], capture_output=True, timeout=10).stdout
            bodies.append(b"after-the-reload" in out)
        return all(bodies)

    assert wait_until(all_say_after, 10), "a worker still answers with the old blocked_message"


def test_a_dead_worker_degrades_health_and_the_other_serves(gp_factory, origin):
    gp = gp_factory(["--workers", "2"])
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port), "action": "allow"}).status_code in (200, 201)
    victim = worker_pids(gp)[0]
    os.kill(victim, signal.SIGKILL)
    health = gp.wait_for(lambda: (h := gp.api("GET", "/api/health").json())["status"] == "degraded" and h, timeout=5)
    assert health and "worker" in " ".join(health["reasons"])
    for i in range(6):
        out = subprocess.run(["curl", "-s", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                              f"http://{origin.host}:{origin.port}/after{i}"], capture_output=True, timeout=10).stdout
        assert out == origin.body


def test_stop_ends_every_worker(gp_factory):
    gp = gp_factory(["--workers", "2"])
    pids = worker_pids(gp)
    gp.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_client_cannot_multiply_its_connection_cap_by_the_workers(gp_factory):
    """Each of N workers enforces 1/N of the caps: spread over both, one address still gets at
    most `connections_per_address` connections in all."""
    gp = gp_factory(["--workers", "2"], config_yaml="limits: {connections_per_address: 4}\n")
    socks = [socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=5) for _ in range(12)]
    try:
        time.sleep(0.5)
        refused = 0
        for sock in socks:
            sock.settimeout(0.3)
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue  # accepted and waiting for its request head
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            refused += 1
        assert refused >= 8, f"only {refused} of 12 refused with a cap of 4"
    finally:
        for sock in socks:
            sock.close()


def test_the_api_reads_what_every_worker_wrote_and_health_sees_their_store(gp_factory, origin):
    """An API read right after the traffic sees every worker's log rows (not a second later,
    when their writers would flush); a worker whose writes fail makes health degraded, as the
    control plane's own writer does."""
    import sqlite3

    gp = gp_factory(["--workers", "2"])
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port), "action": "deny"}).status_code == 201
    clients = [curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                    f"http://agent1:x@127.0.0.1:{gp.ports['http']}", f"http://{origin.host}:{origin.port}/d{i}")
               for i in range(12)]
    assert [c.communicate(timeout=20)[0] for c in clients] == [b"403"] * 12
    logs = gp.api("GET", "/api/logs", params={"limit": 100}).json()  # at once: no waiting
    assert logs["total"] == 12 and {r["result"] for r in logs["items"]} == {"blocked"}

    locker = sqlite3.connect(gp.data_dir / "greyproxy.db", timeout=0, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        for client in [curl("-s", "-o", "/dev/null", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                            f"http://{origin.host}:{origin.port}/l{i}") for i in range(8)]:
            client.communicate(timeout=20)
        body = gp.wait_for(lambda: (b := gp.api("GET", "/api/health").json())["status"] == "degraded"
                           and any(r.startswith("worker ") and "database is locked" in r for r in b["reasons"])
                           and b, timeout=30, interval=0.5)
        assert body, gp.api("GET", "/api/health").json()
    finally:
        locker.rollback()
        locker.close()
    assert gp.wait_for(lambda: gp.api("GET", "/api/health").json()["status"] == "ok", timeout=15, interval=0.25)
