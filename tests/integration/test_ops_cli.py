"""The operations CLI as a user runs it (real processes): status, rules export/import, token
show/rotate, install/uninstall with a fake systemctl, --version."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from greyproxy import __version__
from greyproxy.cli_install import user_unit
from tests.integration.netutil import EchoServer, socks_connect


def cli(*args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("GREYPROXY_")}
    return subprocess.run([sys.executable, "-m", "greyproxy", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, input=stdin, timeout=timeout)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def test_version():
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"greyproxy {__version__}"


def test_status_running_and_not(gp, tmp_path):
    done = cli("status", "--data-dir", str(gp.data_dir))
    assert done.returncode == 0, done.stderr
    assert "running" in done.stdout and "health ok" in done.stdout
    for port in gp.ports.values():
        assert f":{port}" in done.stdout
    as_json = json.loads(cli("status", "--json", "--data-dir", str(gp.data_dir)).stdout)
    assert as_json["running"] and as_json["healthy"] and as_json["ports"]["api"] == gp.ports["api"]
    assert as_json["pending"] == 0 and as_json["rules"] >= 1

    stopped = cli("status", "--data-dir", str(tmp_path / "nothing-here"))
    assert stopped.returncode == 1 and "not running" in stopped.stderr
    gp.stop()
    (gp.data_dir / "api-handshake.json").write_text(json.dumps({"port": 9, "token": "x", "pid": 1}))
    stale = cli("status", "--data-dir", str(gp.data_dir))
    assert stale.returncode == 1 and "does not answer" in stale.stderr


RULES = [
    {"container_pattern": "agent1", "destination_pattern": "127.0.0.2", "port_pattern": "{port}", "notes": "echo"},
    {"container_pattern": "agent1", "destination_pattern": "*.blocked.test", "action": "deny"},
    {"container_pattern": "ci-*", "destination_pattern": "example.com", "port_pattern": "80,443,8000-8080"},
    {"container_pattern": "agent2", "destination_pattern": "temp.example", "expires_in_seconds": 3600},
]


def global_rules(gp) -> list[dict]:
    return [r for r in gp.api("GET", "/api/rules?limit=1000").json()["items"] if r["source"] == "global"]


def comparable(rules: list[dict]) -> set[tuple]:
    return {(r["container_pattern"], r["destination_pattern"], r["port_pattern"], r["action"], r["notes"],
             r["expires_at"] is not None) for r in rules}


def decisions(gp, echo: EchoServer) -> tuple[int, int]:
    allowed, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port)
    sock.close()
    denied, sock = socks_connect(gp.ports["socks5"], "x.blocked.test", 443)
    sock.close()
    return allowed, denied


@pytest.mark.no_ca  # the decisions compared are SOCKS5 reply codes of a proxy without a CA
def test_rules_export_wipe_import_gives_the_same_decisions(gp, echo, tmp_path):
    for rule in RULES:
        body = {k: (v.format(port=echo.port) if isinstance(v, str) else v) for k, v in rule.items()}
        assert gp.api("POST", "/api/rules", json=body).status_code == 201
    before = global_rules(gp)
    assert decisions(gp, echo) == (0, 2)

    out = tmp_path / "rules.yml"
    done = cli("rules", "export", "-o", str(out), "--data-dir", str(gp.data_dir))
    assert done.returncode == 0, done.stderr
    exported = yaml.safe_load(out.read_text())
    assert len(exported) == 4 and {e["container"] for e in exported} == {"agent1", "ci-*", "agent2"}
    assert all(set(e) <= {"container", "destination", "ports", "action", "notes", "expires_at"} for e in exported)
    # Stdout export is the same document.
    assert yaml.safe_load(cli("rules", "export", "--data-dir", str(gp.data_dir)).stdout) == exported

    for rule in before:  # wipe
        assert gp.api("DELETE", f"/api/rules/{rule['id']}").status_code == 200
    assert global_rules(gp) == []

    done = cli("rules", "import", str(out), "--data-dir", str(gp.data_dir))
    assert done.returncode == 0, done.stderr
    assert "imported 4 rule(s), 0 already present" in done.stdout
    after = global_rules(gp)
    assert comparable(after) == comparable(before)
    old_expiry = next(r["expires_at"] for r in before if r["expires_at"])
    new_expiry = next(r["expires_at"] for r in after if r["expires_at"])
    assert abs(_ts(new_expiry) - _ts(old_expiry)) <= 5
    assert decisions(gp, echo) == (0, 2)

    again = cli("rules", "import", str(out), "--data-dir", str(gp.data_dir))
    assert "imported 0 rule(s), 4 already present" in again.stdout
    assert len(global_rules(gp)) == 4


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_rules_import_refuses_bad_files_and_needs_a_running_instance(gp, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("- {container: a, destination: 'x[y'}\n")
    done = cli("rules", "import", str(bad), "--data-dir", str(gp.data_dir))
    assert done.returncode == 1 and "rule 1" in done.stderr
    assert global_rules(gp) == []
    good = tmp_path / "good.yml"
    good.write_text("- {container: a, destination: b.test}\n")
    offline = cli("rules", "import", str(good), "--data-dir", str(tmp_path / "no-instance"))
    assert offline.returncode == 1 and "not running" in offline.stderr
    piped = cli("rules", "import", "-", "--data-dir", str(gp.data_dir), stdin=good.read_text())
    assert piped.returncode == 0 and "imported 1" in piped.stdout


def test_token_show_and_rotate_reach_the_running_instance(gp):
    old = gp.token
    shown = cli("token", "show", "--data-dir", str(gp.data_dir))
    assert shown.returncode == 0 and shown.stdout.strip() == old
    rotated = cli("token", "rotate", "--data-dir", str(gp.data_dir))
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert new and new != old and "now accepts only the new token" in rotated.stderr
    token_file = gp.data_dir / "api-token"
    assert token_file.read_text().strip() == new
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads((gp.data_dir / "api-handshake.json").read_text())["token"] == new
    assert gp.api("GET", "/api/rules").status_code == 401  # gp still sends the old token
    gp.token = new
    assert gp.api("GET", "/api/rules").status_code == 200
    assert cli("token", "show", "--data-dir", str(gp.data_dir)).stdout.strip() == new
    assert cli("status", "--data-dir", str(gp.data_dir)).returncode == 0


def test_the_login_url_goes_to_a_terminal_never_into_the_log(gp, tmp_path):
    log = gp.logs()
    assert "/dashboard  (log in with the URL `greyproxy token show --url` prints)" in log
    assert gp.token not in log  # stdout here is a file, as it is under systemd (the journal)
    shown = cli("token", "show", "--url", "--data-dir", str(gp.data_dir))
    assert shown.returncode == 0 and shown.stdout.strip() == f"{gp.api_url}/dashboard?token={gp.token}"
    login = gp.session.get(shown.stdout.strip(), allow_redirects=False)
    assert login.status_code == 302 and "greyproxy_token=" in login.headers["Set-Cookie"]
    (tmp_path / "api-token").write_text("t\n")  # a token, but no greyproxy running with it
    stopped = cli("token", "show", "--url", "--data-dir", str(tmp_path))
    assert stopped.returncode == 1 and "not running" in stopped.stderr

    # On a terminal the URL to click is printed whole.
    main, child = pty.openpty()
    cmd = gp.command()
    cmd[cmd.index("--data-dir") + 1] = str(tmp_path / "tty")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.DEVNULL)
    os.close(child)
    out = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (b"Dashboard" in out and out.endswith(b"\n")):
            if select.select([main], [], [], 1)[0]:
                try:
                    out += os.read(main, 4096)
                except OSError:  # EIO: the child is gone and the terminal closed
                    break
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(main)
    token = (tmp_path / "tty" / "api-token").read_text().strip()
    assert f"/dashboard?token={token}" in out.decode()


# -- install / uninstall ------------------------------------------------------------------------
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$@" >> "{log}"
"""


def install_env(tmp_path: Path, with_systemctl: bool = True) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if with_systemctl:
        fake = bindir / "systemctl"
        fake.write_text(FAKE_SYSTEMCTL.format(log=tmp_path / "systemctl.log"))
        fake.chmod(0o755)
    # A PATH with nothing but the fake: no real systemctl, sudo or update-ca-certificates is reachable.
    return {"HOME": str(home), "PATH": str(bindir), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""}


def test_install_asks_and_changes_nothing_without_consent(tmp_path):
    env = install_env(tmp_path)
    done = cli("install", env=env, stdin="n\n")
    assert done.returncode == 1 and "Nothing changed." in done.stdout
    assert "greyproxy install will:" in done.stdout and "trust" in done.stdout
    assert not (tmp_path / "home" / ".local").exists()
    assert not (tmp_path / "systemctl.log").exists()


def test_install_then_uninstall(tmp_path):
    env = install_env(tmp_path)
    home = tmp_path / "home"
    done = cli("install", "-f", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in ("write", ".local/bin/greyproxy", "systemd user unit", "generate the interception CA",
                 "trust the CA", "systemctl --user enable --now"):
        assert step in out, f"the plan does not mention {step!r}:\n{out}"

    launcher = home / ".local" / "bin" / "greyproxy"
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    version = subprocess.run([str(launcher), "--version"], capture_output=True, text=True, timeout=30, env=env)
    assert version.stdout.strip() == f"greyproxy {__version__}"
    unit = home / ".config" / "systemd" / "user" / "greyproxy.service"
    assert unit.read_text() == user_unit("%h/.local/bin/greyproxy serve")
    data = home / ".local" / "share" / "greyproxy"
    assert (data / "ca-cert.pem").exists() and stat.S_IMODE((data / "ca-key.pem").stat().st_mode) == 0o600
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls == ["--user daemon-reload", "--user enable --now greyproxy.service"]

    # Installing again keeps the CA and rewrites the launcher.
    ca = (data / "ca-cert.pem").read_bytes()
    assert cli("install", "-f", env=env).returncode == 0
    assert (data / "ca-cert.pem").read_bytes() == ca

    done = cli("uninstall", "-f", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not unit.exists() and not launcher.exists()
    assert (data / "ca-cert.pem").exists(), "the data directory is kept"
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls[-2:] == ["--user disable --now greyproxy.service", "--user daemon-reload"]


def test_install_without_systemctl_prints_the_commands(tmp_path):
    env = install_env(tmp_path, with_systemctl=False)
    done = cli("install", "-f", "--no-trust", env=env)
    assert done.returncode == 0, done.stderr
    assert "systemctl --user daemon-reload && systemctl --user enable --now greyproxy.service" in done.stdout
    assert "--no-trust" in done.stdout
    assert (tmp_path / "home" / ".config" / "systemd" / "user" / "greyproxy.service").exists()


def test_service_verbs_wrap_systemctl(tmp_path):
    env = install_env(tmp_path)
    config = tmp_path / "my.yml"
    config.write_text("hold_seconds: 10\n")
    done = cli("service", "install", "-C", str(config), env=env)
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "home" / ".config" / "systemd" / "user" / "greyproxy.service").read_text()
    assert f" serve -C {config.resolve()}\n" in unit
    for verb in ("start", "stop", "restart"):
        assert cli("service", verb, env=env).returncode == 0
    status = cli("service", "status", env=env)  # the fake prints nothing: state unknown
    assert status.returncode == 3 and status.stdout.strip() == "unknown"
    assert cli("service", "uninstall", env=env).returncode == 0
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls == ["--user daemon-reload", "--user enable greyproxy.service", "--user start greyproxy.service",
                     "--user stop greyproxy.service", "--user restart greyproxy.service",
                     "--user is-active greyproxy.service", "--user disable --now greyproxy.service",
                     "--user daemon-reload"]
