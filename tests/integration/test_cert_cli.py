"""The interception CA through REST and the CLI: generate, status, download,
reload of a running proxy without a restart, file modes, and the install consent prompt."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from greyproxy.trust import is_installed
from tests.integration.netutil import wait_until

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run([sys.executable, "-m", "greyproxy", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def downloaded(gp) -> bytes:
    resp = gp.api("GET", "/api/cert/download")
    assert resp.status_code == 200, resp.text
    return resp.content


def test_cert_api_lifecycle(gp):
    status = gp.api("GET", "/api/cert/status").json()
    assert status["generated"] is False and "subject" not in status
    assert status["certPath"] == str(gp.data_dir / "ca-cert.pem")
    assert status["keyPath"] == str(gp.data_dir / "ca-key.pem")
    assert status["installCommands"]["linux"] == "greyproxy cert install"
    assert isinstance(status["installed"], bool)
    assert gp.api("GET", "/api/cert/download").status_code == 404
    assert gp.api("POST", "/api/cert/reload").json()["message"] == "cert unchanged, no reload needed"

    resp = gp.api("POST", "/api/cert/generate")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"] and body["certStatus"]["generated"] is True
    assert "CN=Greyproxy CA" in body["certStatus"]["subject"] and body["certStatus"]["expiresAt"].endswith("Z")
    assert mode(gp.data_dir / "ca-key.pem") == 0o600
    assert mode(gp.data_dir / "ca-cert.pem") == 0o644
    assert mode(gp.data_dir) == 0o700

    download = gp.api("GET", "/api/cert/download")
    assert download.headers["Content-Disposition"] == 'attachment; filename="greyproxy-ca.pem"'
    assert download.content == (gp.data_dir / "ca-cert.pem").read_bytes()
    assert download.content.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE" not in download.content

    conflict = gp.api("POST", "/api/cert/generate")
    assert conflict.status_code == 409 and "force" in conflict.json()["error"]
    assert gp.api("POST", "/api/cert/generate", params={"force": "maybe"}).status_code == 400
    first = download.content
    assert gp.api("POST", "/api/cert/generate", params={"force": "true"}).status_code == 200
    assert downloaded(gp) != first and downloaded(gp) == (gp.data_dir / "ca-cert.pem").read_bytes()
    # generate already loaded it: nothing left for reload to do
    assert gp.api("POST", "/api/cert/reload").json()["message"] == "cert unchanged, no reload needed"
    assert gp.api("POST", "/api/cert/reload", token=False).status_code == 401


def test_cli_generate_writes_private_key_0600(tmp_path):
    data = tmp_path / "fresh"
    done = cli("cert", "generate", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert "Greyproxy CA" in done.stdout and "0600" in done.stdout
    assert mode(data / "ca-key.pem") == 0o600 and mode(data / "ca-cert.pem") == 0o644 and mode(data) == 0o700
    key = (data / "ca-key.pem").read_bytes()
    again = cli("cert", "generate", "--data-dir", str(data))
    assert again.returncode == 1 and "-f" in again.stderr
    assert (data / "ca-key.pem").read_bytes() == key  # untouched
    forced = cli("cert", "generate", "-f", "--data-dir", str(data))
    assert forced.returncode == 0 and (data / "ca-key.pem").read_bytes() != key
    assert mode(data / "ca-key.pem") == 0o600


def test_cli_reload_of_a_running_proxy_after_regenerating(gp):
    data = str(gp.data_dir)
    assert cli("cert", "generate", "--data-dir", data).returncode == 0
    done = cli("cert", "reload", "--data-dir", data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "MITM cert reloaded"
    assert downloaded(gp) == (gp.data_dir / "ca-cert.pem").read_bytes()
    old = downloaded(gp)

    regenerated = cli("cert", "generate", "-f", "--data-dir", data)
    assert regenerated.returncode == 0 and "running greyproxy" in regenerated.stdout
    done = cli("cert", "reload", "--data-dir", data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "MITM cert reloaded"
    new = (gp.data_dir / "ca-cert.pem").read_bytes()
    assert new != old and downloaded(gp) == new  # the new CA is in use, no restart
    status = gp.api("GET", "/api/cert/status").json()
    assert status["generated"] is True and "Greyproxy CA" in status["subject"]
    assert cli("cert", "reload", "--data-dir", data).stdout.splitlines()[0] == "cert unchanged, no reload needed"


def test_sighup_reloads_the_ca(gp):
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    old = downloaded(gp)
    assert cli("cert", "generate", "-f", "--data-dir", str(gp.data_dir)).returncode == 0
    gp.proc.send_signal(signal.SIGHUP)
    new = (gp.data_dir / "ca-cert.pem").read_bytes()
    assert wait_until(lambda: downloaded(gp) == new, 5)
    assert new != old and gp.proc.poll() is None  # reloaded, still running


def test_cli_reload_without_a_running_proxy(tmp_path):
    done = cli("cert", "reload", "--data-dir", str(tmp_path))
    assert done.returncode == 1 and "not running" in done.stderr
    (tmp_path / "api-handshake.json").write_text('{"port": 1, "token": "t"}')  # stale: nobody listens
    done = cli("cert", "reload", "--data-dir", str(tmp_path))
    assert done.returncode == 1 and "cannot reach greyproxy" in done.stderr


@pytest.mark.skipif(is_installed(), reason="a greyproxy CA is already in this machine's trust store")
def test_cli_install_prints_the_plan_and_needs_consent(tmp_path):
    data = tmp_path / "d"
    done = cli("cert", "install", "--data-dir", str(data), stdin="n\n")
    assert done.returncode == 1
    if "no supported trust store tool" in done.stderr:
        return  # nothing to install into on this machine; the refusal is the behaviour
    out = done.stdout
    assert "Proceed? [y/N]" in out and "Nothing changed." in out
    assert "greyproxy-ca.crt" in out and ("update-ca-certificates" in out or "update-ca-trust" in out)
    assert "keep" in out and "private" in out  # the consent text names the risk
    assert (data / "ca-cert.pem").exists()  # a missing CA is generated first
    assert not is_installed()
    # no terminal and no answer: no consent either
    assert cli("cert", "install", "--data-dir", str(data)).returncode == 1
    assert not is_installed()


@pytest.mark.skipif(is_installed(), reason="a greyproxy CA is already in this machine's trust store")
def test_cli_uninstall_when_not_installed(tmp_path):
    done = cli("cert", "uninstall", "--data-dir", str(tmp_path))
    assert done.returncode == 0 and "not in the system trust store" in done.stdout
