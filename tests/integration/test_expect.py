"""`Expect: 100-continue` uploads do not wait for the client's expect timeout: the origin's
100 Continue reaches the client before the body, on the plain proxy and through interception."""

from __future__ import annotations

import subprocess
import time

import pytest


@pytest.mark.parametrize("path", ["plain", "intercepted"])
def test_expect_upload_is_not_stalled(intercepting_gp, origin, tls_origin, tmp_path, path):
    gp = intercepting_gp()
    for dest in ("127.0.0.2", "localhost"):
        assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": dest}
                      ).status_code == 201
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"u" * 200_000)
    url = (f"http://127.0.0.2:{origin.port}/up" if path == "plain" else f"https://localhost:{tls_origin.port}/up")
    cmd = ["curl", "-sS", "--noproxy", "", "--max-time", "30", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
           "--cacert", str(gp.data_dir / "ca-cert.pem"), "-X", "POST", "--data-binary", f"@{upload}",
           "-H", "Expect: 100-continue", "--expect100-timeout", "10", "-o", "/dev/null", "-w", "%{http_code}", url]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, timeout=40, env={"PATH": "/usr/bin:/bin"})
    elapsed = time.monotonic() - started
    assert out.stdout == b"200", out.stderr
    assert elapsed < 5, f"upload waited {elapsed:.1f} s: the 100 Continue did not come through in time"
    received = origin.requests[-1]["body"] if path == "plain" else tls_origin.seen[-1]["body"]
    assert received == upload.read_bytes()
