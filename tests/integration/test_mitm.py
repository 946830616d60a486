"""TLS interception: byte-identical responses, stored transactions with secrets redacted,
skip reasons, SNI/Host checks, CA reload without restart."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from tests.integration.netutil import http_connect, socks_connect, wait_until

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

CURL = ["curl", "-sS", "--noproxy", "", "--max-time", "20"]


@pytest.fixture
def mgp(intercepting_gp):
    return intercepting_gp()


def transactions(gp, **params) -> list[dict]:
    return gp.api("GET", "/api/transactions", params=params).json()["items"]


def wait_transactions(gp, count: int = 1, **params) -> list[dict]:
    items = wait_until(lambda: (lambda t: t if len(t) >= count else None)(transactions(gp, **params)), 5)
    assert items, "no transaction was recorded"
    return items


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_intercepted_https_is_byte_identical_and_recorded_redacted(mgp, tls_origin, via):
    url = f"https://localhost:{tls_origin.port}/gzip?token=abc123&page=2"
    secret_headers = ["-H", "Authorization: Bearer sup3rsecret", "-H", "Cookie: sid=cookiesecret"]
    direct = run(CURL + ["--cacert", str(tls_origin.ca_path), *secret_headers, url])
    assert direct.returncode == 0, direct.stderr
    proxy = (["-x", f"http://agent1:x@127.0.0.1:{mgp.ports['http']}"] if via == "http"
             else ["--socks5-hostname", f"agent1:x@127.0.0.1:{mgp.ports['socks5']}"])
    through = run(CURL + ["--cacert", str(mgp.ca_path), *proxy, *secret_headers, url])
    assert through.returncode == 0, through.stderr
    assert through.stdout == direct.stdout  # the gzip bytes, untouched

    item = wait_transactions(mgp, container="agent1")[0]
    assert item["method"] == "GET" and item["status_code"] == 200
    assert item["url"] == f"https://localhost:{tls_origin.port}/gzip?token=[REDACTED]&page=2"
    detail = mgp.api("GET", f"/api/transactions/{item['id']}").json()
    assert detail["request_headers"]["Authorization"] == ["[REDACTED]"]
    assert detail["request_headers"]["Cookie"] == ["[REDACTED]"]
    assert detail["response_headers"]["Set-Cookie"] == ["[REDACTED]"]
    assert '"compressed": true' in detail["response_body"]  # stored decompressed
    everything = mgp.api("GET", f"/api/transactions/{item['id']}").text
    assert "sup3rsecret" not in everything and "cookiesecret" not in everything and "abc123" not in everything
    # the origin got the real request
    assert tls_origin.seen[-1]["headers"]["Authorization"] == "Bearer sup3rsecret"


def test_python_requests_post_through_both_listeners(mgp, tls_origin):
    requests = pytest.importorskip("requests")
    for proxy in (f"http://agent2:x@127.0.0.1:{mgp.ports['http']}",
                  f"socks5h://agent2:x@127.0.0.1:{mgp.ports['socks5']}"):
        session = requests.Session()
        session.trust_env = False
        resp = session.post(f"https://localhost:{tls_origin.port}/echo", json={"hello": "world"},
                            proxies={"https": proxy}, verify=str(mgp.ca_path), timeout=20)
        assert resp.status_code == 200 and resp.json() == {"hello": "world"}
    items = wait_transactions(mgp, 2, container="agent2")
    detail = mgp.api("GET", f"/api/transactions/{items[0]['id']}").json()
    assert detail["method"] == "POST" and '"hello": "world"' in detail["request_body"]
    assert detail["request_body_size"] == len(b'{"hello": "world"}')


def test_binary_body_recorded_with_size_but_not_stored(mgp, tls_origin):
    url = f"https://localhost:{tls_origin.port}/binary"
    out = run(CURL + ["--cacert", str(mgp.ca_path), "-x", f"http://agent3:x@127.0.0.1:{mgp.ports['http']}", url])
    assert out.stdout == bytes(range(256)) * 16
    item = wait_transactions(mgp, container="agent3")[0]
    detail = mgp.api("GET", f"/api/transactions/{item['id']}").json()
    assert detail["response_body"] is None and detail["response_body_size"] == 4096


def skip_reason_of_last_log(gp, container: str) -> str | None:
    def latest():
        items = gp.api("GET", "/api/logs", params={"container": container}).json()["items"]
        return items[0] if items and items[0].get("mitm_skip_reason") else None

    row = wait_until(latest, 5)
    return row["mitm_skip_reason"] if row else None


def test_mitm_disabled_tunnels_blind_and_records_reason(mgp, tls_origin):
    assert mgp.api("PUT", "/api/settings", json={"mitm": {"enabled": False}}).status_code == 200
    url = f"https://localhost:{tls_origin.port}/"
    proxy = ["-x", f"http://blind:x@127.0.0.1:{mgp.ports['http']}"]
    # the client sees the origin's own certificate: trusting the origin CA works, ours does not
    assert run(CURL + ["--cacert", str(tls_origin.ca_path), *proxy, url]).stdout == b"hello over tls\n"
    assert run(CURL + ["--cacert", str(mgp.ca_path), *proxy, url]).returncode != 0
    assert skip_reason_of_last_log(mgp, "blind") == "mitm_disabled"
    assert transactions(mgp, container="blind") == []


def test_bypass_host_is_tunnelled_untouched(gp_factory, tls_origin):
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}', bypass: [localhost]}}\n")
    gp.api("POST", "/api/cert/generate")
    url = f"https://localhost:{tls_origin.port}/"
    out = run(CURL + ["--cacert", str(tls_origin.ca_path), "-x", f"http://byp:x@127.0.0.1:{gp.ports['http']}", url])
    assert out.stdout == b"hello over tls\n"
    assert skip_reason_of_last_log(gp, "byp") == "mitm_bypass"


def test_no_ca_means_blind_tunnel(gp_factory, tls_origin):
    gp = gp_factory()
    url = f"https://localhost:{tls_origin.port}/"
    out = run(CURL + ["--cacert", str(tls_origin.ca_path), "-x", f"http://noca:x@127.0.0.1:{gp.ports['http']}", url])
    assert out.stdout == b"hello over tls\n"
    assert skip_reason_of_last_log(gp, "noca") == "no_cert"


def test_client_rejecting_our_ca_fails_and_is_recorded(mgp, tls_origin):
    url = f"https://localhost:{tls_origin.port}/"
    out = run(CURL + ["--cacert", str(tls_origin.ca_path), "-x", f"http://pinned:x@127.0.0.1:{mgp.ports['http']}", url])
    assert out.returncode != 0
    assert skip_reason_of_last_log(mgp, "pinned") == "mitm_error"


def test_plain_http_inside_a_tunnel_is_parsed_and_recorded(mgp, origin):
    mgp.api("POST", "/api/rules", json={"container_pattern": "plain", "destination_pattern": origin.host})
    status, _, sock = http_connect(mgp.ports["http"], origin.host, origin.port, user="plain")
    assert status == 200
    sock.sendall(f"GET /inside?api_key=k1 HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.endswith(origin.body)
    item = wait_transactions(mgp, container="plain")[0]
    assert item["url"] == f"http://{origin.host}:{origin.port}/inside?api_key=[REDACTED]"


def test_non_http_non_tls_is_piped_with_reason(mgp):
    from tests.integration.netutil import EchoServer

    echo = EchoServer()
    try:
        mgp.api("POST", "/api/rules", json={"container_pattern": "raw", "destination_pattern": echo.host})
        rep, sock = socks_connect(mgp.ports["socks5"], echo.host, echo.port, user="raw")
        sock.sendall(b"\x00\x01binary protocol")
        assert sock.recv(100) == b"\x00\x01binary protocol"
        sock.close()
        assert skip_reason_of_last_log(mgp, "raw") == "non_tls"
    finally:
        echo.close()


def tls_through_connect(gp, host: str, port: int, sni: str, ca: str, user: str = "fronting") -> ssl.SSLSocket:
    status, _, sock = http_connect(gp.ports["http"], host, port, user=user)
    assert status == 200
    ctx = ssl.create_default_context(cafile=ca)
    return ctx.wrap_socket(sock, server_hostname=sni)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ssl.SSLError, OSError):
        pass
    return data


def test_sni_other_than_allowed_name_is_blocked(mgp, tls_origin):
    tls = tls_through_connect(mgp, "localhost", tls_origin.port, "evil.example", str(mgp.ca_path))
    tls.sendall(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    data = read_all(tls).decode()
    assert data.startswith("HTTP/1.1 403") and "X-Greyproxy-Reason: sni_mismatch" in data
    assert tls_origin.seen == []


def test_host_header_other_than_sni_is_blocked(mgp, tls_origin):
    tls = tls_through_connect(mgp, "localhost", tls_origin.port, "localhost", str(mgp.ca_path))
    tls.sendall(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
    data = read_all(tls).decode()
    assert data.startswith("HTTP/1.1 403") and "X-Greyproxy-Reason: sni_mismatch" in data
    assert tls_origin.seen == []


def test_regenerated_ca_is_used_without_restart(mgp, tls_origin):
    old_ca = mgp.ca_path.read_bytes()
    (mgp.data_dir.parent / "old-ca.pem").write_bytes(old_ca)
    assert mgp.api("POST", "/api/cert/generate", params={"force": "true"}).status_code == 200
    assert mgp.ca_path.read_bytes() != old_ca
    url = f"https://localhost:{tls_origin.port}/"
    proxy = ["-x", f"http://rot:x@127.0.0.1:{mgp.ports['http']}"]
    ok = run(CURL + ["--cacert", str(mgp.ca_path), *proxy, url])
    assert ok.stdout == b"hello over tls\n", ok.stderr
    stale = run(CURL + ["--cacert", str(mgp.data_dir.parent / "old-ca.pem"), *proxy, url])
    assert stale.returncode != 0


def test_plain_proxy_requests_are_recorded(gp, origin):
    gp.api("POST", "/api/rules", json={"container_pattern": "plainproxy", "destination_pattern": origin.host})
    out = run(CURL + ["-x", f"http://plainproxy:x@127.0.0.1:{gp.ports['http']}",
                      f"http://{origin.host}:{origin.port}/a?password=hunter2"])
    assert out.stdout == origin.body
    item = wait_transactions(gp, container="plainproxy")[0]
    assert item["url"] == f"http://{origin.host}:{origin.port}/a?password=[REDACTED]"
    detail = gp.api("GET", f"/api/transactions/{item['id']}").json()
    assert detail["response_body"] == origin.body.decode()


def test_http10_request_inside_a_tunnel_ends_the_connection(mgp, origin):
    mgp.api("POST", "/api/rules", json={"container_pattern": "old", "destination_pattern": origin.host})
    status, _, sock = http_connect(mgp.ports["http"], origin.host, origin.port, user="old")
    assert status == 200
    sock.settimeout(5)
    sock.sendall(f"GET /legacy HTTP/1.0\r\nHost: {origin.host}\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):  # must end: HTTP/1.0 without keep-alive closes after one answer
        data += chunk
    sock.close()
    assert data.endswith(origin.body)
