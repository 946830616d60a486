"""Identity challenge (docs/decisions.md#identity): an HTTP-proxy client that sends no credentials is answered 407 with
`Proxy-Authenticate: Basic realm="greyproxy"`, so git, curl --proxy-anyauth, browsers and Java
send the NAME of `http://NAME:x@proxy` and get NAME's rules, on the same connection.
`identity: {anonymous: fallback}` keeps the old `unknown-<ip>` identity; Docker-named sources
and SOCKS5 clients offering no authentication are not challenged."""

from __future__ import annotations

import base64
import functools
import signal
import socket
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netutil import EchoServer, socks_connect
from tests.integration.test_docker import CONTAINER_IP, FakeEngine, docker_config
from tests.ports import free_port

CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


class _Quiet(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real git server

    def log_message(self, *args: Any) -> None:
        pass


class DumbGitServer:
    """A bare repository served as git's "dumb HTTP" (static files after update-server-info)."""

    def __init__(self, root: Path, host: str = "127.0.0.3") -> None:
        src, www = root / "src", root / "www"
        www.mkdir(parents=True)
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.test", "-c", "init.defaultBranch=main"]
        env = {**CLEAN_ENV, "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
        subprocess.run([*git, "init", "-q", str(src)], check=True, env=env)
        (src / "README").write_text("cloned through greyproxy\n")
        subprocess.run([*git, "-C", str(src), "add", "README"], check=True, env=env)
        subprocess.run([*git, "-C", str(src), "commit", "-q", "-m", "first"], check=True, env=env)
        subprocess.run([*git, "clone", "-q", "--bare", str(src), str(www / "repo.git")], check=True, env=env)
        subprocess.run([*git, "-C", str(www / "repo.git"), "update-server-info"], check=True, env=env)
        handler = functools.partial(_Quiet, directory=str(www))
        self.server = ThreadingHTTPServer((host, free_port(host)), handler)
        self.server.daemon_threads = True
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/repo.git"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def git_origin(tmp_path):
    server = DumbGitServer(tmp_path / "git-origin")
    yield server
    server.close()


def allow(gp, container: str, host: str, port: int) -> None:
    rule = {"container_pattern": container, "destination_pattern": host, "port_pattern": str(port)}
    resp = gp.api("POST", "/api/rules", json=rule)
    assert resp.status_code == 201, resp.text


def log_rows(gp, host: str, expected: int = 1) -> list[dict]:
    def rows() -> list[dict]:
        items = gp.api("GET", "/api/logs?limit=200").json()["items"]
        found = [r for r in items if r["destination_host"] == host]
        return found if len(found) >= expected else []
    return gp.wait_for(rows, timeout=5) or []


def run_curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--noproxy", "", "--max-time", str(int(timeout)), *args],
                          capture_output=True, text=True, env=CLEAN_ENV, timeout=timeout + 5)


def proxy_auth(name: str, password: str = "x") -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One response with a Content-Length body: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return lines[0], headers, body[:length]


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- real clients -------------------------------------------------------------------------------
def test_git_clone_names_its_container_after_the_challenge(gp_factory, git_origin, tmp_path):
    gp = gp_factory(config_yaml="log: {level: debug}\n")
    allow(gp, "gitagent", git_origin.host, git_origin.port)  # nobody else may reach it
    env = {**CLEAN_ENV, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    started = time.monotonic()
    done = subprocess.run(
        ["git", "-c", f"http.proxy=http://gitagent:x@127.0.0.1:{gp.ports['http']}", "clone", "-q",
         git_origin.url, str(tmp_path / "clone")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "clone" / "README").read_text() == "cloned through greyproxy\n"
    assert elapsed < gp.hold_seconds, f"took {elapsed:.1f} s: something was held"  # no hold, no 30 s wait
    rows = log_rows(gp, git_origin.host)
    assert rows and {(r["container_name"], r["result"]) for r in rows} == {("gitagent", "allowed")}
    assert not gp.api("GET", "/api/pending").json()["items"]
    assert "answered 407" in gp.logs()  # git sent its credentials only after the challenge


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain-get", "connect"])
def test_curl_proxy_anyauth_retries_on_the_same_connection(gp_factory, origin, tunnel):
    gp = gp_factory(config_yaml="log: {level: debug}\n")
    allow(gp, "curlagent", origin.host, origin.port)
    proxy = f"http://curlagent:x@127.0.0.1:{gp.ports['http']}"
    args = ["--proxy-anyauth", "-x", proxy, "-w", "\n%{http_code} %{num_connects}", f"http://{origin.host}:{origin.port}/x"]
    done = run_curl(*(["-p"] if tunnel else []), *args)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    assert body == origin.body.decode().rstrip("\n") or body == origin.body.decode()
    assert status == "200 1", status  # one connection: the 407 kept it open for the retry
    rows = log_rows(gp, origin.host)
    assert {(r["container_name"], r["result"]) for r in rows} == {("curlagent", "allowed")}
    assert gp.logs().count("answered 407") == 1  # anyauth: first without credentials, then Basic


def test_no_credentials_get_407_saying_how_to_name_the_container(gp, origin):
    allow(gp, "*", origin.host, origin.port)  # even an allow-everyone rule is not reached anonymously
    port = gp.ports["http"]
    done = run_curl("-i", "-x", f"http://127.0.0.1:{port}", f"http://{origin.host}:{origin.port}/")
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\n\n")  # text mode: CRLF read as \n
    assert head.startswith("HTTP/1.1 407 Proxy Authentication Required"), head
    assert 'Proxy-Authenticate: Basic realm="greyproxy"' in head.split("\n")
    assert f"http://NAME:x@127.0.0.1:{port}" in body
    assert "container's name" in body and "proxy token" in body and "password" in body
    assert not origin.requests and not log_rows(gp, origin.host)  # nothing went out, no decision was made

    tunnel = run_curl("-p", "-x", f"http://127.0.0.1:{port}", f"http://{origin.host}:{origin.port}/")
    assert tunnel.returncode != 0 and "407" in tunnel.stderr, tunnel.stderr
    assert not origin.requests


def test_connect_retry_with_credentials_on_the_same_connection(gp, origin):
    allow(gp, "rawagent", origin.host, origin.port)
    target = f"{origin.host}:{origin.port}"
    with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10) as sock:
        for auth in (None, "Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
            extra = f"Proxy-Authorization: {auth}\r\n" if auth else ""
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
            status, headers, body = read_response(sock)
            assert status.startswith("HTTP/1.1 407"), (auth, status)
            assert headers["proxy-authenticate"] == 'Basic realm="greyproxy"'
            assert headers["connection"] == "keep-alive" and b"NAME" in body
        # Not ASCII at all (latin-1 bytes on the wire) is "no credentials" too, not a crash.
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
                     + b"Proxy-Authorization: Basic \xe9t\xe9\r\n\r\n")
        assert read_response(sock)[0].startswith("HTTP/1.1 407")
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {proxy_auth('rawagent')}"
                     "\r\n\r\n".encode())
        status, _, _ = read_response(sock)
        assert status.startswith("HTTP/1.1 200"), status
        sock.sendall(f"GET /in-tunnel HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status, _, body = read_response(sock)
        assert status.startswith("HTTP/1.1 200") and body == origin.body
    assert [r["path"] for r in origin.requests] == ["/in-tunnel"]
    rows = log_rows(gp, origin.host)
    assert {r["container_name"] for r in rows} == {"rawagent"}
    assert "Traceback" not in gp.logs()


def test_plain_requests_keep_alive_without_a_body_and_close_with_one(gp, origin):
    allow(gp, "rawagent", origin.host, origin.port)
    url = f"http://{origin.host}:{origin.port}"
    with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10) as sock:
        sock.sendall(f"GET {url}/a HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\n\r\n".encode())
        status, headers, _ = read_response(sock)
        assert status.startswith("HTTP/1.1 407") and headers["connection"] == "keep-alive"
        sock.sendall(f"GET {url}/b HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\n"
                     f"Proxy-Authorization: {proxy_auth('rawagent')}\r\n\r\n".encode())
        status, _, body = read_response(sock)
        assert status.startswith("HTTP/1.1 200") and body == origin.body
    with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10) as sock:
        # A body we would have to read before the retry: the 407 closes the connection instead.
        sock.sendall(f"POST {url}/c HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\nContent-Length: 5\r\n\r\n"
                     "hello".encode())
        status, headers, _ = read_response(sock)
        assert status.startswith("HTTP/1.1 407") and headers["connection"] == "close"
        assert closed(sock)
    assert [r["path"] for r in origin.requests] == ["/b"]


# -- who is not challenged ------------------------------------------------------------------------
def test_fallback_keeps_the_unknown_identity(gp_factory, origin):
    gp = gp_factory(config_yaml="identity: {anonymous: fallback}\n")
    allow(gp, "unknown-127.0.0.1", origin.host, origin.port)
    done = run_curl("-w", "\n%{http_code}", "-x", f"http://127.0.0.1:{gp.ports['http']}",
                    f"http://{origin.host}:{origin.port}/")
    assert done.returncode == 0 and done.stdout.endswith("\n200"), (done.stdout, done.stderr)
    rows = log_rows(gp, origin.host)
    assert {(r["container_name"], r["result"]) for r in rows} == {("unknown-127.0.0.1", "allowed")}


def test_socks5_without_authentication_keeps_the_fallback_identity(gp):
    echo = EchoServer()
    try:
        allow(gp, "unknown-127.0.0.1", echo.host, echo.port)
        code, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port, user=None)
        sock.close()
        assert code == 0
        assert {r["container_name"] for r in log_rows(gp, echo.host)} == {"unknown-127.0.0.1"}
    finally:
        echo.close()


def test_a_source_docker_names_is_not_challenged(tmp_path, gp_factory, origin):
    engine = FakeEngine(tmp_path / "docker.sock")
    try:
        gp = gp_factory(config_yaml=docker_config(engine.server_address))
        allow(gp, "my-app-1", origin.host, origin.port)
        with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10,
                                      source_address=(CONTAINER_IP, 0)) as sock:
            sock.sendall(f"GET http://{origin.host}:{origin.port}/ HTTP/1.1\r\nHost: {origin.host}\r\n\r\n".encode())
            status, _, body = read_response(sock)
        assert status.startswith("HTTP/1.1 200") and body == origin.body
        assert {r["container_name"] for r in log_rows(gp, origin.host)} == {"my-app-1"}
        # Any other source still is.
        with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10,
                                      source_address=("127.0.0.8", 0)) as sock:
            sock.sendall(f"GET http://{origin.host}:{origin.port}/ HTTP/1.1\r\nHost: {origin.host}\r\n\r\n".encode())
            assert read_response(sock)[0].startswith("HTTP/1.1 407")
    finally:
        engine.close()


def test_sighup_switches_between_challenge_and_fallback(gp_factory, origin):
    gp = gp_factory(config_yaml="identity: {anonymous: challenge}\n")
    allow(gp, "unknown-127.0.0.1", origin.host, origin.port)
    url = f"http://{origin.host}:{origin.port}/"
    proxy = f"http://127.0.0.1:{gp.ports['http']}"
    assert run_curl("-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, url).stdout == "407"
    gp.config_path.write_text("identity: {anonymous: fallback}\n")
    gp.proc.send_signal(signal.SIGHUP)
    assert gp.wait_for(lambda: "identity.anonymous" in gp.logs(), timeout=10), gp.logs()
    assert run_curl("-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, url).stdout == "200"
