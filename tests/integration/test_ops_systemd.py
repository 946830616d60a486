"""Running under systemd, without systemd running: the unit files pass `systemd-analyze verify`,
READY=1 reaches $NOTIFY_SOCKET once the ports accept connections, and SIGTERM drains."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Greyproxy
from tests.integration.netutil import EchoServer, recv_exact, socks_connect

REPO = Path(__file__).resolve().parents[2]
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "RestrictAddressFamilies=", "CapabilityBoundingSet=\n", "StateDirectory=greyproxy",
             "DynamicUser=yes", "Type=notify", "Restart=on-failure", "Environment=GREYPROXY_DATA_HOME=%S/greyproxy")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing; .ci/run installs the Debian package 'systemd'")
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return path


def verify(tmp_path: Path, text: str, user: bool) -> subprocess.CompletedProcess:
    unit = tmp_path / "greyproxy.service"
    unit.write_text(text)
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    # --user needs a runtime directory even though no user manager is contacted.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_RUNTIME_DIR": str(runtime_dir),
           "HOME": str(tmp_path), "SYSTEMD_LOG_LEVEL": "notice"}
    command = [systemd_analyze(), *(["--user"] if user else []), "verify", "--man=no", "--generators=no", str(unit)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def runnable(text: str) -> str:
    """The unit with ExecStart pointing at this environment's greyproxy (verify checks that it exists)."""
    exe = Path(sys.executable).parent / "greyproxy"
    command = f"{exe} serve" if exe.exists() else f"{sys.executable} -m greyproxy serve"
    new, count = re.subn(r"^ExecStart=\S+ serve", f"ExecStart={command}", text, flags=re.M)
    assert count == 1, "the unit must have one ExecStart=... serve line"
    return new


@pytest.mark.parametrize("name, user", [("greyproxy.service", False), ("greyproxy-user.service", True)])
def test_units_pass_systemd_analyze_verify(tmp_path, name, user):
    text = (REPO / "systemd" / name).read_text()
    done = verify(tmp_path, runnable(text), user)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and output == "", output
    # The check is real: the same verify complains about a broken copy of the unit.
    broken = runnable(text).replace("[Service]\n", "[Service]\nRestart=sometimes\nNoSuchOption=1\n", 1)
    complaint = verify(tmp_path, broken, user)
    assert "NoSuchOption" in complaint.stdout + complaint.stderr


def test_system_unit_is_hardened():
    text = (REPO / "systemd" / "greyproxy.service").read_text()
    for option in HARDENING:
        assert option in text, f"{option!r} missing from systemd/greyproxy.service"
    assert re.search(r"^ExecStart=/usr/bin/greyproxy serve$", text, re.M)
    user = (REPO / "systemd" / "greyproxy-user.service").read_text()
    assert "ExecStart=%h/.local/bin/greyproxy serve" in user and "Type=notify" in user
    assert "Restart=on-failure" in user and "WantedBy=default.target" in user


def _states(sock: socket.socket, timeout: float) -> dict[str, str]:
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


def test_ready_reaches_notify_socket_once_ports_accept(tmp_path, monkeypatch):
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
        proxy = Greyproxy(tmp_path / "data")
        proxy.start()
        try:
            states = _states(listener, 20)
            assert states.get("READY") == "1", states
            assert states.get("MAINPID") == str(proxy.proc.pid)
            # Everything READY promises: every TCP listener takes a connection right now.
            for name in ("http", "socks5", "api"):
                socket.create_connection(("127.0.0.1", proxy.ports[name]), timeout=2).close()
            assert proxy.api("GET", "/api/health").json()["status"] == "ok"
            assert f"api :{proxy.ports['api']}" in states.get("STATUS", "")

            proxy.proc.send_signal(signal.SIGHUP)  # a reload is bracketed by RELOADING / READY
            assert _states(listener, 10).get("RELOADING") == "1"
            assert _states(listener, 10).get("READY") == "1"

            proxy.proc.send_signal(signal.SIGTERM)
            assert _states(listener, 10).get("STOPPING") == "1"
            assert proxy.proc.wait(timeout=10) == 0
        finally:
            proxy.stop()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _allow_echo(proxy: Greyproxy, echo: EchoServer) -> None:
    rule = {"container_pattern": "agent1", "destination_pattern": echo.host, "port_pattern": str(echo.port)}
    assert proxy.api("POST", "/api/rules", json=rule).status_code == 201


def test_sigterm_drains_open_tunnels_then_exits(gp_factory, echo):
    proxy = gp_factory(config_yaml="drain_seconds: 20\n")
    _allow_echo(proxy, echo)
    code, tunnel = socks_connect(proxy.ports["socks5"], echo.host, echo.port)
    assert code == 0
    tunnel.sendall(b"before")
    assert recv_exact(tunnel, 6) == b"before"
    proxy.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proxy.proc.poll() is None, "the process must wait for the open tunnel"
    with pytest.raises(OSError):  # no new connections while draining
        socks_connect(proxy.ports["socks5"], echo.host, echo.port, timeout=2)
    tunnel.sendall(b"during")  # the open tunnel still carries data
    assert recv_exact(tunnel, 6) == b"during"
    started = time.monotonic()
    tunnel.close()
    assert proxy.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5, "once the last tunnel closed, the exit must be prompt"
    assert "draining 1 connection(s)" in proxy.logs()


def test_drain_is_bounded_and_held_connections_are_answered(gp_factory, echo, origin):
    proxy = gp_factory(config_yaml="drain_seconds: 1\n", hold_seconds=60)
    _allow_echo(proxy, echo)
    code, tunnel = socks_connect(proxy.ports["socks5"], echo.host, echo.port)
    assert code == 0
    held = socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=10)
    held.sendall(f"GET http://{origin.host}:{origin.port}/ HTTP/1.1\r\nHost: {origin.host}\r\n"
                 "Proxy-Authorization: Basic YWdlbnQxOng=\r\n\r\n".encode())
    assert proxy.wait_for(lambda: proxy.api("GET", "/api/pending/count").json()["count"] == 1)
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    answer = held.recv(4096)
    assert b" 403 " in answer.split(b"\r\n", 1)[0] and b"shutting_down" in answer
    assert proxy.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    tunnel.settimeout(5)
    assert tunnel.recv(10) == b""  # closed at the end of the drain
    assert "closing 1 connection(s) still open after the drain" in proxy.logs()
