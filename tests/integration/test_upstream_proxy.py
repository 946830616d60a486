"""Chaining through a corporate upstream proxy (docs/upstream-proxy.md), with real upstreams on
loopback: Debian's tinyproxy (HTTP CONNECT, Basic auth) and microsocks (SOCKS5, user/password).
Each test asserts what the origin received and what the upstream logged."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Origin
from tests.integration.netutil import curl, socks_connect, wait_until
from tests.ports import free_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/sbin/tinyproxy"
MICROSOCKS = shutil.which("microsocks") or "/usr/bin/microsocks"


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"upstream exited: {log.read_text() if log.exists() else ''}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"upstream on {port} never listened")


class Tinyproxy:
    def __init__(self, tmp: Path, user: str = "corp", password: str = "s3cret") -> None:
        self.port = free_port("127.0.0.1")
        self.log = tmp / "tinyproxy.log"
        conf = tmp / "tinyproxy.conf"
        conf.write_text(f'Port {self.port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{self.log}"\nLogLevel Info\n'
                        f"MaxClients 50\nBasicAuth {user} {password}\n")
        self.url = f"http://{user}:{password}@127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc, self.log)

    def connects(self) -> list[str]:
        """The CONNECT requests tinyproxy received (its log lines)."""
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if "Request (file descriptor" in line]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Microsocks:
    def __init__(self, tmp: Path, user: str = "corp", password: str = "s3cret") -> None:
        self.port = free_port("127.0.0.1")
        self.log = tmp / "microsocks.log"
        self.url = f"socks5://{user}:{password}@127.0.0.1:{self.port}"
        self.out = open(self.log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([MICROSOCKS, "-i", "127.0.0.1", "-p", str(self.port), "-u", user, "-P", password],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc, self.log)

    def connects(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "connected to" in line]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.out.close()


@pytest.fixture
def tinyproxy(tmp_path):
    if not Path(TINYPROXY).exists():
        pytest.fail("tinyproxy is not installed (.ci/run installs it)")
    proxy = Tinyproxy(tmp_path)
    yield proxy
    proxy.close()


@pytest.fixture
def microsocks(tmp_path):
    if not Path(MICROSOCKS).exists():
        pytest.fail("microsocks is not installed (.ci/run installs it)")
    proxy = Microsocks(tmp_path)
    yield proxy
    proxy.close()


@pytest.fixture
def origin3():
    server = Origin(host="127.0.0.3", body=b"hello from the bypassed origin\n")
    yield server
    server.close()


def upstream_yaml(url: str, bypass: list[str] | None = None, fail_open: bool = False) -> str:
    return (f"upstream:\n  proxy_url: '{url}'\n  bypass_hosts: {bypass or []}\n"
            f"  fail_open: {'true' if fail_open else 'false'}\n")


def allow(gp, host: str, port: int, action: str = "allow") -> None:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": host,
                                              "port_pattern": str(port), "action": action})
    assert resp.status_code == 201, resp.text


def fetch(gp, url: str, via: str = "http") -> tuple[int, bytes, bytes]:
    if via == "http":
        client = curl("-i", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", url)
    elif via == "connect":
        client = curl("-i", "-p", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", url)
    else:
        client = curl("-i", "--socks5-hostname", f"agent1:x@127.0.0.1:{gp.ports['socks5']}", url)
    out, err = client.communicate(timeout=30)
    return client.returncode, out, err


@pytest.mark.parametrize("via", ["http", "connect", "socks5"])
def test_allowed_traffic_reaches_the_origin_through_tinyproxy(gp_factory, tinyproxy, origin, via):
    gp = gp_factory(config_yaml=upstream_yaml(tinyproxy.url))
    allow(gp, origin.host, origin.port)
    code, out, err = fetch(gp, f"http://{origin.host}:{origin.port}/through", via)
    assert code == 0, err
    assert out.endswith(origin.body), out
    assert [r["path"] for r in origin.requests] == ["/through"]
    assert any(f"CONNECT {origin.host}:{origin.port} " in line for line in tinyproxy.connects()), tinyproxy.connects()
    # the log row is about the real destination, not the upstream
    gp.api("GET", "/api/logs")
    rows = wait_until(lambda: [r for r in gp.api("GET", "/api/logs").json()["items"] if r["result"] == "allowed"
                               and r["destination_port"] == origin.port])
    assert rows and rows[0]["destination_host"] == origin.host and rows[0]["dialed_ip"] == origin.host
    health = gp.api("GET", "/api/health", token=False).json()
    assert health["upstream"]["state"] == "up"
    assert health["upstream"]["proxy_url"] == f"http://corp:***@127.0.0.1:{tinyproxy.port}"
    assert "s3cret" not in str(health)


def test_denied_and_unmatched_traffic_never_reach_the_upstream(gp_factory, tinyproxy, origin):
    gp = gp_factory(config_yaml=upstream_yaml(tinyproxy.url), hold_seconds=1)
    allow(gp, origin.host, origin.port, action="deny")
    code, out, _ = fetch(gp, f"http://{origin.host}:{origin.port}/denied")
    assert code == 0 and out.startswith(b"HTTP/1.1 403"), out
    code, out, _ = fetch(gp, f"http://{origin.host}:{origin.port + 1}/held-then-refused", "socks5")
    assert origin.requests == []
    assert tinyproxy.connects() == []
    # our own listeners stay out of reach even though the upstream could reach them
    code, out, _ = fetch(gp, f"http://127.0.0.1:{gp.ports['api']}/api/health")
    assert out.startswith(b"HTTP/1.1 403") and b"control_plane" in out, out
    assert tinyproxy.connects() == []


def test_bypass_hosts_go_direct(gp_factory, tinyproxy, origin, origin3):
    gp = gp_factory(config_yaml=upstream_yaml(tinyproxy.url, bypass=["127.0.0.3"]))
    allow(gp, origin.host, origin.port)
    allow(gp, origin3.host, origin3.port)
    code, out, err = fetch(gp, f"http://{origin3.host}:{origin3.port}/direct")
    assert code == 0 and out.endswith(origin3.body), err
    assert tinyproxy.connects() == []
    code, out, err = fetch(gp, f"http://{origin.host}:{origin.port}/chained")
    assert code == 0 and out.endswith(origin.body), err
    assert len(tinyproxy.connects()) == 1


def test_upstream_down_refuses_when_not_fail_open(gp_factory, origin):
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    gp = gp_factory(config_yaml=upstream_yaml(dead))
    allow(gp, origin.host, origin.port)
    code, out, _ = fetch(gp, f"http://{origin.host}:{origin.port}/x")
    assert out.startswith(b"HTTP/1.1 503"), out
    assert b"X-Greyproxy-Reason: upstream_proxy_down" in out
    code, out, _ = fetch(gp, f"http://{origin.host}:{origin.port}/x", "socks5")
    assert code != 0
    assert origin.requests == []  # never went direct
    health = gp.api("GET", "/api/health", token=False).json()
    assert health["status"] == "degraded" and health["upstream"]["state"] == "down", health
    assert any("upstream proxy" in r for r in health["reasons"])


def test_upstream_down_goes_direct_when_fail_open(gp_factory, origin):
    dead = f"socks5://127.0.0.1:{free_port('127.0.0.1')}"
    gp = gp_factory(config_yaml=upstream_yaml(dead, fail_open=True))
    allow(gp, origin.host, origin.port)
    code, out, err = fetch(gp, f"http://{origin.host}:{origin.port}/fallback")
    assert code == 0 and out.endswith(origin.body), err
    assert [r["path"] for r in origin.requests] == ["/fallback"]
    health = gp.api("GET", "/api/health", token=False).json()
    assert health["status"] == "ok" and health["upstream"]["state"] == "down"


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_allowed_traffic_reaches_the_origin_through_microsocks(gp_factory, microsocks, origin, via):
    gp = gp_factory(config_yaml=upstream_yaml(microsocks.url))
    allow(gp, origin.host, origin.port)
    code, out, err = fetch(gp, f"http://{origin.host}:{origin.port}/socks", via)
    assert code == 0 and out.endswith(origin.body), err
    assert [r["path"] for r in origin.requests] == ["/socks"]
    assert any(f"connected to {origin.host}:{origin.port}" in line for line in microsocks.connects())
    # a raw tunnel through both: bytes arrive byte-identical both ways
    reply, sock = socks_connect(gp.ports["socks5"], origin.host, origin.port)
    assert reply == 0
    sock.sendall(f"GET /raw HTTP/1.0\r\nHost: {origin.host}:{origin.port}\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data.endswith(origin.body)


def test_denied_traffic_never_reaches_microsocks(gp_factory, microsocks, origin):
    gp = gp_factory(config_yaml=upstream_yaml(microsocks.url))
    allow(gp, origin.host, origin.port, action="deny")
    code, out, _ = fetch(gp, f"http://{origin.host}:{origin.port}/denied", "socks5")
    assert code != 0 or out.startswith(b"HTTP/1.1 403"), out  # refused (in the tunnel, when it can say why)
    assert microsocks.connects() == [] and origin.requests == []


def test_wrong_upstream_credentials_are_a_refusal_not_a_bypass(gp_factory, tinyproxy, origin):
    gp = gp_factory(config_yaml=upstream_yaml(f"http://corp:wrong@127.0.0.1:{tinyproxy.port}", fail_open=True))
    allow(gp, origin.host, origin.port)
    code, out, _ = fetch(gp, f"http://{origin.host}:{origin.port}/x")
    assert out.startswith(b"HTTP/1.1 503"), out
    assert origin.requests == []  # an upstream that answers is up: fail_open does not go around it


def test_bad_upstream_config_stops_the_start(gp_factory):
    with pytest.raises(Exception):  # noqa: B017 - the fixture raises when serve exits
        gp_factory(config_yaml="upstream: {proxy_url: 'ftp://proxy:21'}\n")


def test_a_reload_applies_a_new_upstream_live(gp_factory, tinyproxy, origin):
    import signal

    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    gp = gp_factory(config_yaml=upstream_yaml(dead))
    allow(gp, origin.host, origin.port)
    _, out, _ = fetch(gp, f"http://{origin.host}:{origin.port}/before")
    assert out.startswith(b"HTTP/1.1 503"), out
    gp.config_path.write_text(upstream_yaml(tinyproxy.url))
    gp.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "upstream.proxy_url" in gp.logs(), 10), gp.logs()
    code, out, err = fetch(gp, f"http://{origin.host}:{origin.port}/after")
    assert code == 0 and out.endswith(origin.body), err
    assert [r["path"] for r in origin.requests] == ["/after"] and len(tinyproxy.connects()) == 1


def test_intercepted_https_goes_through_the_upstream(gp_factory, tinyproxy, tls_origin):
    config = (f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}', generate_ca: false}}\n"
              + upstream_yaml(tinyproxy.url))
    gp = gp_factory(config_yaml=config)
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    allow(gp, "localhost", tls_origin.port)
    client = curl("--cacert", str(gp.data_dir / "ca-cert.pem"), "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                  f"https://localhost:{tls_origin.port}/secure")
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert out == b"hello over tls\n"
    assert [s["path"] for s in tls_origin.seen] == ["/secure"]
    # resolve: local — the upstream was asked for the guarded IP, not the name
    assert any(f"CONNECT 127.0.0.1:{tls_origin.port} " in line for line in tinyproxy.connects()), tinyproxy.connects()
    items = wait_until(lambda: gp.api("GET", "/api/transactions").json()["items"])
    assert items and items[0]["url"] == f"https://localhost:{tls_origin.port}/secure"


def test_resolve_upstream_sends_the_name(gp_factory, tinyproxy, origin):
    gp = gp_factory(config_yaml=upstream_yaml(tinyproxy.url) + "  resolve: upstream\n")
    allow(gp, "localhost", origin.port)
    allow(gp, origin.host, origin.port)
    # the name goes to the upstream as written (tinyproxy resolves it); the origin listens on
    # 127.0.0.2, so use its IP for the fetch and check the name on a CONNECT of its own
    code, out, err = fetch(gp, f"http://{origin.host}:{origin.port}/ip")
    assert code == 0 and out.endswith(origin.body), err
    code, out, _ = fetch(gp, f"http://localhost:{origin.port}/name")  # 127.0.0.1: nothing listens there
    assert any(f"CONNECT localhost:{origin.port} " in line for line in tinyproxy.connects()), tinyproxy.connects()
    rows = wait_until(lambda: [r for r in gp.api("GET", "/api/logs").json()["items"]
                               if r["destination_host"] == "localhost"])
    assert rows and rows[0]["dialed_ip"] is None  # the upstream resolved it: no dialled IP is claimed


class CountingUpstream:
    """A TCP listener that only counts who connects (and closes them)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port("127.0.0.1")))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_the_guard_runs_before_the_upstream_is_asked():
    """In-process: the real dial with the real guard; the upstream is a counting listener."""
    from greyproxy.config import ListenAddress
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.tunnel import DialError, dial
    from greyproxy.proxy.upstream_proxy import UpstreamProxy
    from greyproxy.upstream_config import parse_upstream

    counting = CountingUpstream()
    try:
        via = UpstreamProxy(parse_upstream({"proxy_url": f"http://127.0.0.1:{counting.port}"}))
        guard = ControlPlaneGuard([ListenAddress("127.0.0.1", 43999)], deny_private=True)
        for host, port, reason in (("10.1.2.3", 443, "private_range"), ("169.254.169.254", 80, "private_range"),
                                   ("127.0.0.1", 43999, "control_plane"), ("[::ffff:127.0.0.1]", 43999, "control_plane"),
                                   ("0x7f000001", 43999, "control_plane")):
            with pytest.raises(DialError) as exc:
                dial(host.strip("[]"), port, guard, timeout=2, upstream=via)
            assert exc.value.reason == reason, (host, exc.value.reason)
        assert counting.accepted == 0
        # a rule naming the private address opens it, and only then is the upstream asked
        with pytest.raises(DialError):
            dial("10.1.2.3", 443, guard, timeout=2, upstream=via, rule_pattern="10.1.2.3")
        assert counting.accepted == 1
    finally:
        counting.sock.close()
