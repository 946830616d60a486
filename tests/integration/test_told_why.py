"""A refused agent is told why on every path, with real curl (docs/clients.md): inside TLS with
the generated CA trusted (HTTP CONNECT and SOCKS5 `socks5h://`), in clear for plain HTTP over
SOCKS5; a retry after an unanswered hold fails fast, and an approval lets the next one through;
a fresh `serve` intercepts with the CA it generated."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import Origin
from tests.integration.tlsutil import TLSOrigin

CURL_ENV = {"PATH": "/usr/bin:/bin"}  # no proxy variables from the environment


def curl(gp, proxy: str, url: str, *extra: str, timeout: float = 30) -> tuple[int, dict[str, str], str, float]:
    """(status, headers (lower-case), body, seconds) of one real curl through greyproxy."""
    port = gp.ports["http"] if proxy == "http" else gp.ports["socks5"]
    scheme = "http" if proxy == "http" else "socks5h"
    cmd = ["curl", "-sS", "-i", "--noproxy", "", "--max-time", str(timeout), "-x",
           f"{scheme}://agent1:x@127.0.0.1:{port}", "--cacert", str(gp.data_dir / "ca-cert.pem"), *extra, url]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, timeout=timeout + 10, env=CURL_ENV)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    text = out.stdout.decode("utf-8", "replace").replace("\r\n", "\n")
    if text.startswith("HTTP/1.1 200 Connection established"):  # CONNECT's own answer, then the tunnel's
        text = text.split("\n\n", 1)[1]
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body, elapsed


def assert_told(status: int, headers: dict[str, str], body: str, host: str, port: int, reason: str) -> None:
    assert status == 403
    assert headers["x-greyproxy-reason"] == reason
    assert "Container: agent1" in body
    assert f"Destination: {host}:{port}" in body
    assert f"Reason: {reason}" in body


def deny(gp, destination: str) -> None:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": destination,
                                               "action": "deny"})
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("proxy", ["http", "socks5"])
def test_denied_https_is_answered_inside_tls(gp_factory, proxy):
    origin = Origin()  # 127.0.0.2: would record any request that got through
    try:
        gp = gp_factory()
        assert (gp.data_dir / "ca-cert.pem").exists()
        deny(gp, "127.0.0.2")
        status, headers, body, _ = curl(gp, proxy, f"https://127.0.0.2:{origin.port}/secret")
        assert_told(status, headers, body, "127.0.0.2", origin.port, "denied_by_rule")
        # The same words as the plain proxy's answer (one wording, not two).
        plain = curl(gp, "http", f"http://127.0.0.2:{origin.port}/secret")
        assert plain[0] == 403 and plain[2] == body
        assert origin.requests == []
    finally:
        origin.close()


@pytest.mark.parametrize("proxy", ["http", "socks5"])
def test_denied_https_by_name_gets_a_leaf_for_that_name(gp_factory, proxy):
    gp = gp_factory()
    deny(gp, "blocked.example")  # never resolved: a refusal dials nothing
    status, headers, body, _ = curl(gp, proxy, "https://blocked.example/")
    assert_told(status, headers, body, "blocked.example", 443, "denied_by_rule")
    def blocked_row() -> bool:
        rows = gp.api("GET", "/api/logs", params={"container": "agent1"}).json()["items"]
        return any(r["destination_host"] == "blocked.example" and r["result"] == "blocked" for r in rows)

    assert gp.wait_for(blocked_row)


def test_plain_http_over_socks5_gets_the_same_text(gp_factory):
    gp = gp_factory()
    deny(gp, "blocked.example")
    status, headers, body, _ = curl(gp, "socks5", "http://blocked.example:8080/")
    assert_told(status, headers, body, "blocked.example", 8080, "denied_by_rule")


@pytest.mark.no_ca
def test_without_a_ca_plain_http_on_port_80_is_told_and_https_keeps_the_socks_reply(gp_factory):
    gp = gp_factory()
    assert not (gp.data_dir / "ca-cert.pem").exists()
    deny(gp, "blocked.example")
    status, headers, body, _ = curl(gp, "socks5", "http://blocked.example/")
    assert_told(status, headers, body, "blocked.example", 80, "denied_by_rule")
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "--max-time", "10", "-x",
                          f"socks5h://agent1:x@127.0.0.1:{gp.ports['socks5']}", "https://blocked.example/"],
                         capture_output=True, timeout=20, env=CURL_ENV)
    assert out.returncode == 97, out.stderr  # connection not allowed by ruleset: nothing to tell it in
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "--max-time", "10", "-x",
                          f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "https://blocked.example/"],
                         capture_output=True, timeout=20, env=CURL_ENV)
    assert out.returncode == 56 and b"403" in out.stderr, out.stderr  # the CONNECT's own 403


def test_bypassed_host_keeps_the_tunnel_refusal(gp_factory):
    gp = gp_factory(config_yaml="mitm: {bypass: ['blocked.example']}\n")
    deny(gp, "blocked.example")
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "--max-time", "10", "-x",
                          f"socks5h://agent1:x@127.0.0.1:{gp.ports['socks5']}", "https://blocked.example/"],
                         capture_output=True, timeout=20, env=CURL_ENV)
    assert out.returncode == 97, out.stderr


def pending_row(gp, host: str) -> dict | None:
    for row in gp.api("GET", "/api/pending").json()["items"]:
        if row["destination_host"] == host:
            return row
    return None


@pytest.fixture
def held_origin(tmp_path):
    """An HTTPS origin on 127.0.0.2, which no rule covers (127.0.0.1 and localhost are builtin)."""
    origin = TLSOrigin(tmp_path, host="127.0.0.2")
    yield origin
    origin.close()


def test_retry_after_unanswered_hold_fails_fast_until_approved(gp_factory, held_origin):
    # The origin's CA is trusted for the upstream leg, greyproxy's by curl.
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{held_origin.ca_path}'}}\n", hold_seconds=1)
    host, port = "127.0.0.2", held_origin.port
    url = f"https://{host}:{port}/"
    status, headers, body, elapsed = curl(gp, "http", url)
    assert_told(status, headers, body, host, port, "pending_timeout")
    assert elapsed >= 1.0
    for proxy in ("socks5", "http"):
        status, headers, body, elapsed = curl(gp, proxy, url)
        assert_told(status, headers, body, host, port, "pending_unanswered")
        assert elapsed < 1.0, f"a retry over {proxy} waited {elapsed:.2f} s"
    assert held_origin.seen == []
    row = gp.wait_for(lambda: (r := pending_row(gp, host)) and r["attempt_count"] >= 3 and r)
    assert row and row["attempt_count"] == 3, row  # every attempt is counted
    resp = gp.api("POST", f"/api/pending/{row['id']}/allow", json={"scope": "exact", "duration": "1h"})
    assert resp.status_code == 200, resp.text
    status, _, body, elapsed = curl(gp, "socks5", url)
    assert (status, body) == (200, "hello over tls\n")
    assert len(held_origin.seen) == 1


def test_a_client_that_gave_up_waiting_makes_retries_fail_fast(gp_factory):
    gp = gp_factory(hold_seconds=30)
    out = subprocess.run(["curl", "-sS", "--noproxy", "", "--max-time", "6", "-x",
                          f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "https://gave-up.example/"],
                         capture_output=True, timeout=20, env=CURL_ENV)
    assert out.returncode == 28, out.stderr  # its own timeout, while held
    gp.wait_for(lambda: gp.api("GET", "/api/pending").json()["items"][0]["waiter_count"] == 0)
    status, headers, body, elapsed = curl(gp, "socks5", "https://gave-up.example/")
    assert_told(status, headers, body, "gave-up.example", 443, "pending_unanswered")
    assert elapsed < 1.0


def test_dismissed_key_is_held_again(gp_factory):
    gp = gp_factory(hold_seconds=1)
    assert curl(gp, "http", "https://held.example/")[1]["x-greyproxy-reason"] == "pending_timeout"
    assert curl(gp, "http", "https://held.example/")[1]["x-greyproxy-reason"] == "pending_unanswered"
    row = gp.wait_for(lambda: pending_row(gp, "held.example"))
    assert gp.api("DELETE", f"/api/pending/{row['id']}").status_code in (200, 204)
    status, headers, _, elapsed = curl(gp, "http", "https://held.example/")
    assert headers["x-greyproxy-reason"] == "pending_timeout" and elapsed >= 1.0


def test_unanswered_seconds_zero_holds_every_attempt(gp_factory):
    gp = gp_factory(config_yaml="unanswered_seconds: 0\n", hold_seconds=1)
    for _ in range(2):
        status, headers, _, elapsed = curl(gp, "socks5", "https://held.example/")
        assert headers["x-greyproxy-reason"] == "pending_timeout" and elapsed >= 1.0


def test_fresh_serve_intercepts_with_its_generated_ca(gp_factory, tls_origin):
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}'}}\n")
    key = gp.data_dir / "ca-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "trust it: greyproxy cert install" in gp.wait_for(lambda: "CA " in gp.logs() and gp.logs())
    assert str(gp.data_dir / "ca-cert.pem") in gp.logs()
    assert gp.api("GET", "/api/cert/status").json()["generated"] is True
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "localhost"}
                  ).status_code == 201
    # curl trusts only greyproxy's CA: the page arrives only through interception.
    status, _, body, _ = curl(gp, "http", f"https://localhost:{tls_origin.port}/fresh")
    assert (status, body) == (200, "hello over tls\n")
    assert tls_origin.seen[-1]["path"] == "/fresh"
    found = gp.wait_for(lambda: gp.api("GET", "/api/transactions").json().get("items"))
    assert found and any("/fresh" in t["url"] for t in found)
    # A restart keeps the same CA (generated once).
    before = (gp.data_dir / "ca-cert.pem").read_bytes()
    gp.restart()
    assert (gp.data_dir / "ca-cert.pem").read_bytes() == before
    assert "(in use;" in gp.logs()
    # The API's generate still works: a conflict without force, a new CA with it, used at once.
    conflict = gp.api("POST", "/api/cert/generate")
    assert conflict.status_code == 409 and "force" in conflict.json()["error"]
    assert gp.api("POST", "/api/cert/generate", params={"force": "true"}).status_code == 200
    assert (gp.data_dir / "ca-cert.pem").read_bytes() != before
    status, _, body, _ = curl(gp, "http", f"https://localhost:{tls_origin.port}/again")
    assert (status, body) == (200, "hello over tls\n")
