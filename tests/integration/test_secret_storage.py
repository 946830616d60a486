"""Issue 12 (docs/decisions.md#audit-observability-traffic-tools), storage and binding side, against an origin that echoes what it receives:
nothing greyproxy stores or serves holds a real credential value or a raw value redacted from
the request; a session's placeholder sent by another container goes upstream unchanged; the
scrub job cleans rows stored before.

Whether the client receives placeholders instead of the secrets is the response side's part
(reverse substitution); these tests look only at storage and the API."""

from __future__ import annotations

import gzip
import json
import sqlite3
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netutil import wait_until
from tests.integration.tlsutil import make_origin_pki
from tests.ports import free_port

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

CURL = ["curl", "-sS", "--noproxy", "", "--max-time", "15"]
SESSION_ID = "gw-echo-0123456789"
SESSION_PH = "greyproxy:credential:v1:gw-echo-0123456789:" + "c" * 32
SESSION_SECRET = "session-secret-ECHO-4242-abcdef"
GLOBAL_SECRET = "sk-global-echo-secret-987654321"
COOKIE_VALUE = "cookie-raw-VALUE-5555"
QUERY_TOKEN = "query-raw-TOKEN-6666"
SECRETS = (SESSION_SECRET, GLOBAL_SECRET, COOKIE_VALUE, QUERY_TOKEN)


class EchoHandler(BaseHTTPRequestHandler):
    """Echoes the request it got: headers, path and body in a JSON body (gzip'd under /gzip),
    and the Authorization and Cookie values in response headers whose names are not redacted."""

    protocol_version = "HTTP/1.1"

    def _echo(self, body: bytes) -> None:
        self.server.seen.append({"path": self.path, "headers": dict(self.headers)})  # type: ignore[attr-defined]
        payload = json.dumps({"path": self.path, "headers": dict(self.headers),
                              "body": body.decode("utf-8", "replace")}).encode()
        extra = {"Echo-Authorization": self.headers.get("Authorization", ""),
                 "Echo-Api-Key-Seen": self.headers.get("X-Api-Key", ""),
                 "Echo-Cookie": self.headers.get("Cookie", "")}
        if self.path.startswith("/gzip"):
            payload = gzip.compress(payload, mtime=0)
            extra["Content-Encoding"] = "gzip"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        self._echo(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._echo(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def log_message(self, *args: Any) -> None:
        pass


class EchoOrigin:
    def __init__(self, host: str, tls_folder: Path | None = None) -> None:
        self.server = ThreadingHTTPServer((host, free_port(host)), EchoHandler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        self.ca_path = None
        if tls_folder is not None:
            self.ca_path, leaf = make_origin_pki(tls_folder)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(leaf)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.server.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo():
    origin = EchoOrigin("127.0.0.2")
    yield origin
    origin.close()


@pytest.fixture
def tls_echo(tmp_path):
    folder = tmp_path / "echo-pki"
    folder.mkdir()
    origin = EchoOrigin("127.0.0.1", folder)
    yield origin
    origin.close()


@pytest.fixture
def egp(gp_factory, tls_echo):
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{tls_echo.ca_path}'}}\n", hold_seconds=2)
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    return gp


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})


def setup_credentials(gp, echo_port: int, tls_port: int) -> str:
    """A global credential bound to container `claude`, and a session of `claude` using it."""
    glob = gp.api("POST", "/api/credentials", json={"label": "openai", "value": GLOBAL_SECRET,
                                                    "containers": ["claude"]})
    assert glob.status_code == 200, glob.text
    assert glob.json()["containers"] == ["claude"] and glob.json()["value_preview"] == "sk-g***"
    resp = gp.api("POST", "/api/sessions", json={
        "session_id": SESSION_ID, "container_name": "claude", "mappings": {SESSION_PH: SESSION_SECRET},
        "labels": {SESSION_PH: "github"}, "global_credentials": ["openai"], "ttl_seconds": 300,
        "network_rules": [{"destination_pattern": "127.0.0.2", "port_pattern": str(echo_port)},
                          {"destination_pattern": "localhost", "port_pattern": str(tls_port)}]})
    assert resp.status_code == 200, resp.text
    return glob.json()["placeholder"]


def data_dir_bytes(gp) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in gp.data_dir.rglob("*") if p.is_file()}
    files[gp.log_path.name] = gp.log_path.read_bytes()
    return files


def assert_clean(where: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret} found in {where}"


def test_echoed_secrets_and_redacted_values_never_reach_storage_or_the_api(egp, echo, tls_echo):
    gph = setup_credentials(egp, echo.port, tls_echo.port)
    headers = ["-H", f"Authorization: Bearer {SESSION_PH}", "-H", f"X-Api-Key: {gph}",
               "-H", f"Cookie: sid={COOKIE_VALUE}; theme=dark"]
    query = f"?token={QUERY_TOKEN}&k={SESSION_PH}"
    proxy = ["-x", f"http://claude:x@127.0.0.1:{egp.ports['http']}"]
    tls = ["--cacert", str(egp.data_dir / "ca-cert.pem")]
    urls = [f"http://127.0.0.2:{echo.port}/plain{query}", f"http://127.0.0.2:{echo.port}/gzip{query}",
            f"https://localhost:{tls_echo.port}/tls{query}", f"https://localhost:{tls_echo.port}/gzip-tls{query}"]
    for url in urls:
        out = run(CURL + proxy + (tls if url.startswith("https") else []) + headers + ["--compressed", url])
        assert out.returncode == 0, out.stderr
    body = ["-H", "Content-Type: application/json", "--data", json.dumps({"q": "hello", "ref": SESSION_PH})]
    out = run(CURL + proxy + headers + body + [f"http://127.0.0.2:{echo.port}/post{query}"])
    assert out.returncode == 0, out.stderr
    # The origin did get the real values: the echoes below had secrets to leak.
    for seen in echo.seen + tls_echo.seen:
        assert seen["headers"]["Authorization"] == f"Bearer {SESSION_SECRET}"
        assert seen["headers"]["X-Api-Key"] == GLOBAL_SECRET

    items = wait_until(lambda: (lambda t: t if len(t) >= 5 else None)(
        egp.api("GET", "/api/transactions", params={"container": "claude"}).json()["items"]), 10)
    assert items and len(items) >= 5
    paths = ["/api/transactions", "/api/transactions?container=claude", "/api/transactions/export/har",
             "/api/logs", "/api/audit", "/api/credentials", "/api/sessions"]
    for item in items:
        paths += [f"/api/transactions/{item['id']}", f"/api/transactions/{item['id']}/har",
                  f"/api/transactions/{item['id']}/curl"]
    for path in paths:
        resp = egp.api("GET", path)
        assert resp.status_code == 200, (path, resp.status_code)
        assert_clean(path, resp.text)
    # The echoes were stored, scrubbed: the marker stands where the values were.
    for item in items:
        detail = egp.api("GET", f"/api/transactions/{item['id']}").json()
        text = json.dumps(detail)
        assert "[REDACTED]" in json.dumps(detail["response_headers"]), detail["response_headers"]
        assert "[REDACTED]" in text and "Echo-Authorization" in text
        assert detail["response_body"], detail

    for name, raw in data_dir_bytes(egp).items():  # db, -wal, -shm, keys, the process log: as bytes
        assert_clean(name, raw)
    egp.stop()
    for name, raw in data_dir_bytes(egp).items():
        assert_clean(name, raw)


def test_a_session_placeholder_from_another_container_is_not_substituted(egp, echo, tls_echo):
    gph = setup_credentials(egp, echo.port, tls_echo.port)
    rule = egp.api("POST", "/api/rules", json={"container_pattern": "intruder", "destination_pattern": "127.0.0.2",
                                               "port_pattern": str(echo.port)})
    assert rule.status_code in (200, 201), rule.text
    out = run(CURL + ["-x", f"http://intruder:x@127.0.0.1:{egp.ports['http']}",
                      "-H", f"Authorization: Bearer {SESSION_PH}", "-H", f"X-Api-Key: {gph}",
                      f"http://127.0.0.2:{echo.port}/steal?k={SESSION_PH}"])
    assert out.returncode == 0, out.stderr
    seen = echo.seen[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {SESSION_PH}"  # the placeholder, not the secret
    assert seen["headers"]["X-Api-Key"] == gph  # bound to container claude
    assert seen["path"] == f"/steal?k={SESSION_PH}"
    assert SESSION_SECRET.encode() not in out.stdout and GLOBAL_SECRET.encode() not in out.stdout
    lines = wait_until(lambda: [line for line in egp.logs().splitlines() if "credential_foreign_container" in line])
    assert lines and "intruder" in lines[0]
    # The owner still gets its secrets.
    out = run(CURL + ["-x", f"http://claude:x@127.0.0.1:{egp.ports['http']}",
                      "-H", f"Authorization: Bearer {SESSION_PH}", f"http://127.0.0.2:{echo.port}/mine"])
    assert out.returncode == 0 and echo.seen[-1]["headers"]["Authorization"] == f"Bearer {SESSION_SECRET}"


def test_invalid_container_binding_is_400(gp):
    resp = gp.api("POST", "/api/credentials", json={"label": "x", "value": "v" * 20, "containers": ["bad\u202ename"]})
    assert resp.status_code == 400, resp.text
    resp = gp.api("POST", "/api/credentials", json={"label": "x", "value": "v" * 20, "containers": "claude"})
    assert resp.status_code == 400, resp.text


def test_scrub_job_cleans_rows_stored_before(gp):
    created = gp.api("POST", "/api/credentials", json={"label": "openai", "value": GLOBAL_SECRET})
    assert created.status_code == 200
    con = sqlite3.connect(gp.data_dir / "greyproxy.db", timeout=10)
    try:
        with con:
            cur = con.execute(
                "INSERT INTO http_transactions (timestamp, container_name, destination_host, destination_port,"
                " method, url, request_headers, request_body, request_body_size, request_body_truncated,"
                " status_code, response_headers, response_body, response_body_size, response_body_truncated,"
                " result) VALUES (?, 'old', 'echo.example', 80, 'GET', ?, ?, NULL, 0, 0, 200, ?, ?, 10, 0, 'auto')",
                ("2030-01-01 00:00:00", f"http://echo.example/?k={GLOBAL_SECRET}",
                 json.dumps({"Cookie": [f"sid={COOKIE_VALUE}"]}),
                 json.dumps({"Echo-Authorization": [f"Bearer {GLOBAL_SECRET}"], "Echo-Cookie": [COOKIE_VALUE]}),
                 json.dumps({"echo": GLOBAL_SECRET, "cookie": COOKIE_VALUE, "pad": "x" * 20000}).encode()))
            txn_id = cur.lastrowid
    finally:
        con.close()
    before = gp.api("GET", f"/api/transactions/{txn_id}").text
    assert GLOBAL_SECRET in before and COOKIE_VALUE in before  # what an older version stored

    resp = gp.api("POST", "/api/maintenance/scrub-secrets")
    assert resp.status_code == 200, resp.text
    status = wait_until(lambda: (lambda s: s if s.get("done") else None)(
        gp.api("GET", "/api/maintenance/scrub-secrets").json()), 15)
    assert status and status["task"] == "scrub_secrets" and "error" not in status, status
    assert status["changed"]["http_transactions"] == 1
    detail = gp.api("GET", f"/api/transactions/{txn_id}").json()
    assert_clean("transaction", json.dumps(detail))
    assert detail["request_headers"] == {"Cookie": ["[REDACTED]"]}
    assert "[REDACTED]" in detail["response_body"]
    for path in ["/api/transactions/export/har", f"/api/transactions/{txn_id}/har", "/api/audit"]:
        assert_clean(path, gp.api("GET", path).text)
    # Gone from disk too: secure_delete and the WAL checkpoint (database, -wal, -shm).
    for path in gp.data_dir.glob("greyproxy.db*"):
        assert_clean(path.name, path.read_bytes())
    verify = subprocess.run([*gp.command()[:3], "audit", "verify", "--data-dir", str(gp.data_dir)],
                            capture_output=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr
