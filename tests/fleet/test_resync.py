"""A node cut off from the database misses the others' notifications; when it is back it reads
everything again (issue 14). Node B reaches PostgreSQL through a TCP relay the test can cut, so
node A can change the rules while B cannot hear of it."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import requests

from tests.integration.netutil import wait_until
from tests.ports import free_port


class Relay:
    """127.0.0.1:port → the database; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port("127.0.0.1")
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.server.settimeout(0.2)
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.running = False
        self.cut()
        self.server.close()


def test_a_node_cut_off_keeps_deciding_then_resyncs(gp_factory, fleet_db, key_file, origin):
    parts = urlsplit(fleet_db)
    relay = Relay((parts.hostname, parts.port))
    via_relay = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    try:
        def node(name: str, url: str):
            return gp_factory(extra_args=["--database-url", url], hold_seconds=2, name=name,
                              config_yaml=f"fleet: {{node_id: {name}, credential_key_file: '{key_file}'}}\n")

        a, b = node("node-a", fleet_db), node("node-b", via_relay)
        for n in (a, b):
            assert wait_until(lambda n=n: n.api("GET", "/api/health").json().get("fleet", {}).get("connected"), 10)
        url = f"http://{origin.host}:{origin.port}/r"
        session = requests.Session()
        session.trust_env = False
        proxy = {"http": f"http://agent1:x@127.0.0.1:{b.ports['http']}"}

        def through_b() -> int:
            return session.get(url, proxies=proxy, timeout=5).status_code

        assert a.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                                 "port_pattern": "*"}).status_code == 201
        assert wait_until(lambda: through_b() == 200, 1.0, 0.02)

        relay.cut()
        assert wait_until(lambda: b.api("GET", "/api/health").json()["status"] == "degraded", 15)
        deny = a.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                                 "port_pattern": str(origin.port), "action": "deny"})
        assert deny.status_code == 201
        time.sleep(1.0)
        assert through_b() == 200  # B heard nothing: it keeps deciding from what it had
        refused = b.api("POST", "/api/rules", json={"container_pattern": "x", "destination_pattern": "x.example"})
        assert refused.status_code == 503 and set(refused.json()) == {"error"}  # not a 500: try again later

        relay.restore()
        assert wait_until(lambda: b.api("GET", "/api/health").json()["status"] == "ok", 15), \
            b.api("GET", "/api/health").json()
        assert wait_until(lambda: through_b() == 403, 2.0, 0.05), "B did not pick up the rule made while cut off"
        fleet = b.api("GET", "/api/health").json()["fleet"]
        assert fleet["reconnects"] >= 1 and fleet["resyncs"] >= 2
    finally:
        relay.close()


def test_a_rule_made_while_the_node_resyncs_is_enforced(node_factory, fleet_db, origin):
    """A full resync (the link's connect, a change too big to NOTIFY) rebuilds the index from the
    store while the API creates a rule: the rule the API confirmed lets its request through, with
    no later rebuild to mend a loss. In CI a rule made just as the link first resynced vanished
    from the index: the rebuild read the container modes (a database read) after its journal
    closed, and the rule's patch landed on the index about to be replaced."""
    node = node_factory("node-a", hold_seconds=0.5)
    assert wait_until(lambda: node.api("GET", "/api/health").json().get("fleet", {}).get("connected"), 10)
    notifier = psycopg2.connect(fleet_db)
    notifier.autocommit = True
    session = requests.Session()
    session.trust_env = False
    refused = []
    try:
        for i in range(40):
            container = f"agent{i}"
            # One resync asked by another node, the rule created a moment before or after it.
            resync = threading.Timer(random.uniform(0, 0.006), lambda: notifier.cursor().execute(
                "SELECT pg_notify('greyproxy_fleet', %s)", (json.dumps({"n": "node-z", "t": "resync"}),)))
            resync.start()
            made = node.api("POST", "/api/rules", json={"container_pattern": container,
                                                        "destination_pattern": origin.host,
                                                        "port_pattern": str(origin.port)})
            assert made.status_code == 201, made.text
            resync.join()
            time.sleep(0.05)  # the resync's rebuild is over: nothing later can mend the index
            resp = session.get(f"http://{origin.host}:{origin.port}/r{i}", timeout=5,
                               proxies={"http": f"http://{container}:x@127.0.0.1:{node.ports['http']}"})
            if resp.status_code != 200:
                refused.append((i, resp.status_code, resp.headers.get("X-Greyproxy-Reason")))
    finally:
        notifier.close()
    assert not refused, f"confirmed rules missing from the index: {refused}"
    assert {f"/r{i}" for i in range(40)} <= {r["path"] for r in origin.requests}
    assert node.api("GET", "/api/metrics").json()["policy"]["rebuilds"] >= 20  # the resyncs did rebuild
