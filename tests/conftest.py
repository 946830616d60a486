"""Shared fixtures: real `greyproxy serve` processes on port 0, and local origin servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser import browser, dashboards  # noqa: F401 - the browser fixtures, one definition for every test
from tests.ports import free_port

START_TIMEOUT = 20.0


class Greyproxy:
    """A `python -m greyproxy serve` child process with every listener on a free port."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, config_yaml: str | None = None,
                 hold_seconds: float = 5.0) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args or [])
        self.config_path: Path | None = None
        if config_yaml is not None:
            self.config_path = data_dir.parent / f"{data_dir.name}-config.yml"
            self.config_path.write_text(config_yaml)
        self.hold_seconds = hold_seconds
        self.proc: subprocess.Popen | None = None
        self.terminated = False
        self.ports: dict[str, int] = {}
        self.token: str | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.session = requests.Session()
        self.session.trust_env = False  # never send test API calls through an environment proxy

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "greyproxy", "serve", "--data-dir", str(self.data_dir),
               "--listen-http", "127.0.0.1:0", "--listen-socks5", "127.0.0.1:0", "--listen-dns", "127.0.0.1:0",
               "--listen-api", "127.0.0.1:0", "--hold-seconds", str(self.hold_seconds)]
        if self.config_path is not None:
            cmd += ["-C", str(self.config_path)]
        if "--workers" not in self.extra_args:  # not the machine's core count: see the `workers` fixture
            cmd += ["--workers", os.environ.get("GREYPROXY_TEST_WORKERS", "1")]
        return cmd + self.extra_args

    def start(self) -> Greyproxy:
        handshake = self.data_dir / "api-handshake.json"
        handshake.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.terminated = False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"greyproxy exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if handshake.exists():
                try:
                    info = json.loads(handshake.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.05)
                    continue
                self.ports = {k: v for k, v in info["ports"].items()}
                self.token = info["token"]
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"greyproxy did not start in time:\n{self.log_path.read_text()}")

    def terminate(self) -> None:
        """Ask it to stop (one SIGTERM, a graceful drain) without waiting: stop() then waits for it."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "log_file", None):
            self.log_file.close()

    def restart(self) -> Greyproxy:
        self.stop()
        return self.start()

    def api(self, method: str, path: str, json: Any = None, token: bool = True,
            headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        hdrs = dict(headers or {})
        if token and self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        kw.setdefault("timeout", 10)
        return self.session.request(method, self.api_url + path, json=json, headers=hdrs, **kw)

    def wait_for(self, predicate, timeout: float = 5.0, interval: float = 0.05) -> Any:
        """Poll until predicate() is truthy; returns its value (bounded in time)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(interval)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.call_failed = report.failed  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (tests/pgcluster.py); started only when
    a test asks for the PostgreSQL backend. Without PostgreSQL installed those tests skip
    locally and fail in CI (where `CI` is set), like the dashboard tests without chromium."""
    from tests.pgcluster import PgCluster, pg_bin

    if pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed")
    cluster = PgCluster().init()
    yield cluster
    cluster.destroy()


@pytest.fixture
def database_url() -> str | None:
    """The backend `gp_factory` gives its servers: None = SQLite in the data dir. A test module
    runs over both backends by overriding this fixture with `tests.backends.database_url`."""
    return None


@pytest.fixture
def workers() -> int:
    """The data-path processes `gp_factory` gives its servers (`serve --workers N`): one, so a
    test does not depend on the machine's cores. A module runs with 1 and 2 by overriding this
    fixture with `tests.workers.workers`; GREYPROXY_TEST_WORKERS=N runs the whole suite with N."""
    return int(os.environ.get("GREYPROXY_TEST_WORKERS", "1"))


@pytest.fixture
def gp_factory(tmp_path: Path, request: pytest.FixtureRequest, database_url: str | None,
               workers: int) -> Iterator[Any]:
    started: list[Greyproxy] = []

    def make(extra_args: list[str] | None = None, config_yaml: str | None = None, hold_seconds: float = 5.0,
             name: str = "data") -> Greyproxy:
        if database_url and "--database-url" not in (extra_args or []):
            extra_args = [*(extra_args or []), "--database-url", database_url]
        if "--workers" not in (extra_args or []):
            extra_args = [*(extra_args or []), "--workers", str(workers)]
        proxy = Greyproxy(tmp_path / name, extra_args, config_yaml, hold_seconds)
        started.append(proxy)
        return proxy.start()

    yield make
    for proxy in started:  # every one drains at the same time, then each is waited for
        proxy.terminate()
    for proxy in started:
        proxy.stop()
    if getattr(request.node, "call_failed", False):  # CI shows only the report: put the server logs in it
        for proxy in started:
            print(f"--- {proxy.log_path.name} (last 60 lines) ---")
            print("\n".join(proxy.logs().splitlines()[-60:]))


@pytest.fixture
def gp(gp_factory: Any) -> Greyproxy:
    return gp_factory()


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.server.requests.append({"path": self.path, "headers": dict(self.headers)})  # type: ignore[attr-defined]
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": data})  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class Origin:
    # 127.0.0.2, not 127.0.0.1: the builtin rules allow 127.0.0.1, and tests need unmatched destinations.
    def __init__(self, host: str = "127.0.0.2", body: bytes = b"hello from origin\n") -> None:
        self.server = ThreadingHTTPServer((host, free_port(host)), OriginHandler)
        self.server.daemon_threads = True
        self.server.body = body  # type: ignore[attr-defined]
        self.server.requests = []  # type: ignore[attr-defined]
        self.host = host
        self.port = self.server.server_address[1]
        self.body = body
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()
