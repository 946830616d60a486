"""`greyproxy cert install -f` / `cert uninstall -f` against a real Debian trust store.

The test never touches this machine's trust store: it runs in a private mount namespace where
/etc/ssl/certs and /usr/local/share/ca-certificates are throw-away copies, so the real
update-ca-certificates rewrites only those. curl inside the namespace uses the system bundle
(no --cacert): it must reject the intercepted connection before `install`, accept it after,
and reject it again after `uninstall`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _can_make_mount_namespace() -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    if any(shutil.which(tool) is None for tool in ("unshare", "mount", "update-ca-certificates", "curl")):
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0


pytestmark = pytest.mark.skipif(
    not _can_make_mount_namespace(),
    reason="needs root on Linux, unshare, update-ca-certificates and curl (a private mount namespace)",
)

CURL_SSL_CACERT = 60  # curl: peer certificate cannot be authenticated with known CA certificates


def test_install_makes_the_system_trust_interception_and_uninstall_undoes_it(intercepting_gp, tls_origin, tmp_path):
    gp = intercepting_gp()
    url = f"https://localhost:{tls_origin.port}/hello"
    curl = shlex.join(["curl", "-sS", "--noproxy", "", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                       "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", url])
    greyproxy = shlex.join([sys.executable, "-m", "greyproxy", "cert"])
    data = shlex.quote(str(gp.data_dir))
    certs, local = tmp_path / "etc-ssl-certs", tmp_path / "local-ca"
    local.mkdir()
    script = f"""
        set -u
        cp -a /etc/ssl/certs {certs} && mount --bind {certs} /etc/ssl/certs || exit 90
        mount --bind {local} /usr/local/share/ca-certificates || exit 91
        echo "before=$({curl})"
        {greyproxy} install -f --data-dir {data} >/dev/null || echo "install failed: $?"
        echo "installed=$(ls /usr/local/share/ca-certificates)"
        echo "after=$({curl})"
        {greyproxy} uninstall -f --data-dir {data} >/dev/null || echo "uninstall failed: $?"
        echo "removed=$(ls /usr/local/share/ca-certificates)"
        echo "again=$({curl})"
    """
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("SSL_CERT")}
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=120, env=env)
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert done.returncode == 0 and "failed" not in done.stdout, done.stdout + done.stderr
    assert lines["before"] == "000" and "SSL certificate problem" in done.stderr, done.stderr
    assert lines["installed"] == "greyproxy-ca.crt"
    assert lines["after"] == "200", done.stdout + done.stderr
    assert lines["removed"] == ""
    assert lines["again"] == "000"
    assert done.stderr.count("SSL certificate problem") == 2, done.stderr
    assert not Path("/usr/local/share/ca-certificates/greyproxy-ca.crt").exists()  # the host never changed
