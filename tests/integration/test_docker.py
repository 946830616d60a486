"""Container identity (docs/user-guide.md#identity-who-is-the-client) against a fake Docker Engine API that the test serves on a
unix socket: names resolved by source IP, the cache honoured, an engine that is down or stuck
falls back to the username / unknown identity without holding the connection."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netutil import EchoServer, socks_connect
from tests.workers import workers  # noqa: F401 - every test here runs with 1 and 2 workers: one engine listing for all

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

CONTAINER_IP = "127.0.0.7"
CONTAINER = {
    "Id": "4f2a9c1be07d5e3f00112233", "Names": ["/my-app-1"], "Image": "python:3.11",
    "NetworkSettings": {"Networks": {"bridge": {"IPAddress": CONTAINER_IP, "GlobalIPv6Address": ""}}},
}


class _EngineHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        server: FakeEngine = self.server  # type: ignore[assignment]
        server.paths.append(self.path)
        body = json.dumps([CONTAINER] if self.path.startswith("/containers/json") else {"message": "no"}).encode()
        self.send_response(200 if self.path.startswith("/containers/json") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass

    def address_string(self) -> str:  # a unix socket peer has no address
        return "unix"


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), _EngineHandler)
        self.paths: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def listings(self) -> int:
        return sum(1 for p in self.paths if p.startswith("/containers/json"))

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def docker_config(path: Path) -> str:
    return f"docker: {{enabled: true, socket: '{path}', cache_ttl: 30s}}\n"


def setup_rules(gp, echo: EchoServer) -> None:
    """The container may reach the echo server; agent1 and unknown clients are denied at once."""
    for container, action in (("my-app-1", "allow"), ("agent1", "deny"), ("unknown-*", "deny")):
        rule = {"container_pattern": container, "destination_pattern": echo.host, "port_pattern": str(echo.port),
                "action": action}
        assert gp.api("POST", "/api/rules", json=rule).status_code == 201


def logs(gp) -> list[dict]:
    return gp.api("GET", "/api/logs?limit=100").json()["items"]


def test_container_names_resolved_and_cached(tmp_path, gp_factory, echo):
    engine = FakeEngine(tmp_path / "docker.sock")
    try:
        gp = gp_factory(config_yaml=docker_config(engine.server_address))
        setup_rules(gp, echo)
        # From the container's IP: the container's name wins over the proxy username.
        started = time.monotonic()
        code, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port, user="agent1", source=CONTAINER_IP)
        sock.close()
        assert code == 0
        # Not a container: the username, or unknown-<ip>, as without Docker.
        code, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port, user="agent1", source="127.0.0.8")
        sock.close()
        assert code == 2
        code, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port, user=None, source="127.0.0.9")
        sock.close()
        assert code == 2
        for _ in range(5):  # hits from memory, misses cached briefly: no more listings
            for source in (CONTAINER_IP, "127.0.0.8"):
                socks_connect(gp.ports["socks5"], echo.host, echo.port, source=source)[1].close()
        # One listing; misses are cached 5 s, so a very slow machine may have needed one more.
        assert engine.listings <= 1 + int((time.monotonic() - started) // 5), engine.paths

        rows = logs(gp)
        by_container = {}
        for row in rows:
            by_container.setdefault(row["container_name"], row)
        assert set(by_container) == {"my-app-1", "agent1", "unknown-127.0.0.9"}
        assert by_container["my-app-1"]["result"] == "allowed"
        assert by_container["my-app-1"]["container_id"] == "4f2a9c1be07d"
        assert by_container["agent1"]["result"] == "blocked" and not by_container["agent1"]["container_id"]
        lookups = gp.api("GET", "/api/metrics").json()["docker_lookups"]
        assert lookups["hit"] >= 6 and lookups["miss"] >= 6 and "error" not in lookups

        # A held connection from the container is pending under its name (and id).
        code_box: list[int] = []
        other = EchoServer()
        try:
            thread = threading.Thread(target=lambda: code_box.append(
                socks_connect(gp.ports["socks5"], other.host, other.port, source=CONTAINER_IP)[0]))
            thread.start()
            pending = gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"])
            assert pending and pending[0]["container_name"] == "my-app-1"
            assert pending[0]["container_id"] == "4f2a9c1be07d"
            assert gp.api("POST", f"/api/pending/{pending[0]['id']}/deny", json={}).status_code == 200
            thread.join(10)
            assert code_box == [2]
        finally:
            other.close()
    finally:
        engine.close()


def test_engine_down_or_stuck_falls_back_quickly(tmp_path, gp_factory, echo):
    stuck_path = tmp_path / "stuck.sock"
    # Accepts connections (the kernel's backlog) and never answers: the worst case.
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(str(stuck_path))
    stuck.listen(64)
    try:
        for name, path in (("down", tmp_path / "missing.sock"), ("stuck", stuck_path)):
            gp = gp_factory(config_yaml=docker_config(path), name=name)
            setup_rules(gp, echo)
            started = time.monotonic()
            code, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port, source=CONTAINER_IP)
            sock.close()
            first = time.monotonic() - started
            assert code == 2, "fallback identity agent1 is denied"
            assert first < 3.0, f"{name}: the lookup held the connection {first:.1f} s"
            started = time.monotonic()
            for _ in range(3):  # the failure is remembered: no new wait per connection
                socks_connect(gp.ports["socks5"], echo.host, echo.port, source=CONTAINER_IP)[1].close()
            assert time.monotonic() - started < 1.5
            assert {r["container_name"] for r in logs(gp)} == {"agent1"}
            assert gp.api("GET", "/api/metrics").json()["docker_lookups"].get("error", 0) >= 1
            assert "docker: container lookup failed" in gp.logs()
            gp.stop()
    finally:
        stuck.close()
