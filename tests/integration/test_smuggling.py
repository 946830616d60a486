"""Request smuggling and Host games, tried on every path a request can take (the plain proxy,
plain HTTP inside CONNECT, HTTP inside intercepted TLS). Each attack asserts what the ORIGIN
received: no second request, no other Host, nothing the proxy did not parse and check."""

from __future__ import annotations

import base64
import socket
import ssl

import pytest

from tests.integration.rawutil import RecordingOrigin
from tests.integration.tlsutil import make_origin_pki

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

AUTH = base64.b64encode(b"agent1:x").decode()
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: b.test\r\n\r\n"
PATHS = ("plain", "tunnel", "tls")


def _framed(head_lines: list[bytes], body: bytes) -> tuple[list[bytes], bytes]:
    return head_lines, body


# Each case: header lines (after the request line and Host) and the body; every one of them
# makes some HTTP/1 implementation read a second request where the proxy would see one.
ATTACKS: dict[str, tuple[list[bytes], bytes]] = {
    "bare_lf_in_field": ([b"Content-Length: 41", b"X: y\nTransfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED[:35]),
    "cl_and_te": ([b"Content-Length: 46", b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED),
    "te_and_cl": ([b"Transfer-Encoding: chunked", b"Content-Length: 4"], b"0\r\n\r\n" + SMUGGLED),
    "chunk_0x": ([b"Transfer-Encoding: chunked"], b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_plus": ([b"Transfer-Encoding: chunked"], b"+5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_underscore": ([b"Transfer-Encoding: chunked"], b"5_0\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_negative": ([b"Transfer-Encoding: chunked"], b"-1\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "space_in_name": ([b"Content-Length: 0", b"Transfer-Encoding : chunked"], b"0\r\n\r\n" + SMUGGLED),
    "nul_in_name": ([b"Content-Length: 0", b"Transfer\x00Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED),
    "superscript_length": (["Content-Length: \u00b2".encode()], b"ok" + SMUGGLED),
    "obs_fold_te": ([b"Transfer-Encoding: identity", b" chunked", b"Content-Length: 4"], b"0\r\n\r\n" + SMUGGLED),
    "two_lengths": ([b"Content-Length: 0", b"Content-Length: 46"], b"0\r\n\r\n" + SMUGGLED),
    "length_list": ([b"Content-Length: 0, 46"], b"0\r\n\r\n" + SMUGGLED),
    "bare_cr": ([b"Content-Length: 0", b"X: a\rTransfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED),
    "te_not_chunked_last": ([b"Transfer-Encoding: chunked, identity"], b"0\r\n\r\n" + SMUGGLED),
    "te_gzip_chunked": ([b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n" + SMUGGLED),
}


@pytest.fixture
def setup(gp_factory, tmp_path):
    """A greyproxy that intercepts (trusting the origins' CA), a plain and a TLS recording origin
    on 127.0.0.1 reached as `localhost`, and agent1 allowed to reach localhost."""
    ca, leaf = make_origin_pki(tmp_path)
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{ca}'}}\n")
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    for dest in ("localhost", "c.test", "b.test"):
        action = "allow" if dest == "localhost" else "deny"
        resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": dest,
                                                  "action": action})
        assert resp.status_code == 201, resp.text
    plain, tls = RecordingOrigin(), RecordingOrigin(tls_cert=leaf)
    yield gp, plain, tls
    plain.close()
    tls.close()


def open_path(gp, path: str, origin: RecordingOrigin) -> socket.socket:
    """A client socket on which an HTTP request goes to `origin` along `path`."""
    sock = socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10)
    if path == "plain":
        return sock
    sock.sendall(f"CONNECT localhost:{origin.port} HTTP/1.1\r\nHost: localhost:{origin.port}\r\n"
                 f"Proxy-Authorization: Basic {AUTH}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    if path == "tls":
        ctx = ssl.create_default_context(cafile=str(gp.data_dir / "ca-cert.pem"))
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return sock


def request_line(path: str, origin: RecordingOrigin, target: str = "/", method: str = "POST") -> bytes:
    if path == "plain":
        return (f"{method} http://localhost:{origin.port}{target} HTTP/1.1\r\n"
                f"Proxy-Authorization: Basic {AUTH}\r\n").encode()
    return f"{method} {target} HTTP/1.1\r\n".encode()


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (TimeoutError, ssl.SSLError, ConnectionResetError):
        pass
    sock.close()
    return answer


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_smuggling_attempt_never_reaches_the_origin(setup, path, attack):
    gp, plain, tls = setup
    origin = tls if path == "tls" else plain
    lines, body = ATTACKS[attack]
    data = (request_line(path, origin) + f"Host: localhost:{origin.port}\r\n".encode()
            + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body)
    answer = exchange(open_path(gp, path, origin), data)
    assert answer.split(b" ", 2)[1] in (b"400", b"501"), answer[:300]
    assert b"smuggled" not in origin.everything
    assert b"b.test" not in origin.everything
    # Refused cleanly: the proxy serves the next client as before.
    honest = exchange(open_path(gp, path, origin), request_line(path, origin, method="GET")
                      + f"Host: localhost:{origin.port}\r\nConnection: close\r\n\r\n".encode())
    assert honest.startswith(b"HTTP/1.1 200") and honest.endswith(b"ok"), honest[:300]
    assert "Traceback" not in gp.logs()


def test_chunked_body_is_reframed_for_the_origin(setup):
    """Chunk extensions and trailers are dropped; the origin gets clean chunks, same payload."""
    gp, plain, _tls = setup
    data = (request_line("plain", plain) + f"Host: localhost:{plain.port}\r\nConnection: close\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    answer = exchange(open_path(gp, "plain", plain), data)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    got = plain.everything
    assert got.endswith(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), got
    assert b"name=value" not in got and b"X-Trailer" not in got


def test_plain_proxy_host_header_must_name_the_target(setup):
    gp, plain, _tls = setup
    data = (request_line("plain", plain, method="GET") + b"Host: c.test\r\nConnection: close\r\n\r\n")
    answer = exchange(open_path(gp, "plain", plain), data)
    assert answer.startswith(b"HTTP/1.1 403") and b"X-Greyproxy-Reason: host_mismatch" in answer, answer
    assert plain.everything == b""
    rows = gp.wait_for(lambda: [r for r in gp.api("GET", "/api/logs").json()["items"]
                                if r.get("reason") == "host_mismatch"])
    assert rows


@pytest.mark.parametrize("path", PATHS)
def test_requests_inside_tunnels_are_parsed_and_checked(setup, path):
    gp, plain, tls = setup
    origin = tls if path == "tls" else plain
    host = f"localhost:{origin.port}".encode()
    refused = {
        "unknown_method_other_host": request_line(path, origin, method="PROPFIND") + b"Host: b.test\r\n\r\n",
        "absolute_target_other_host": (b"GET http://b.test/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
                                       if path != "plain" else None),
        "duplicate_host": request_line(path, origin, method="GET") + b"Host: " + host + b"\r\nHost: b.test\r\n\r\n",
        "leading_crlf_other_host": b"\r\n" + request_line(path, origin, method="GET") + b"Host: b.test\r\n\r\n",
        "missing_host_http11": b"GET / HTTP/1.1\r\n\r\n" if path != "plain" else None,
    }
    for name, data in refused.items():
        if data is None:
            continue
        answer = exchange(open_path(gp, path, origin), data)
        assert answer.split(b" ", 2)[1] in (b"400", b"403"), (name, answer[:300])
        assert b"b.test" not in origin.everything, name
    # Honest forms the sniffer used to pipe unseen are now parsed, forwarded and recorded.
    ok = {
        "/propfind": request_line(path, origin, "/propfind", "PROPFIND") + b"Host: " + host + b"\r\n",
        "/leading": b"\r\n" + request_line(path, origin, "/leading", "GET") + b"Host: " + host + b"\r\n",
    }
    for target, data in ok.items():
        answer = exchange(open_path(gp, path, origin), data + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), (target, answer[:300])
    if path != "plain":  # HTTP/1.0 without Host: the origin is told the admitted name
        answer = exchange(open_path(gp, path, origin), b"GET /old HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b"GET /old HTTP/1.0\r\nHost: " + host + b"\r\n" in origin.everything
    urls = gp.wait_for(lambda: {t["url"].split(str(origin.port))[-1]
                                for t in gp.api("GET", "/api/transactions").json()["items"]} >= {"/propfind", "/leading"})
    assert urls


def test_a_request_line_dribbled_after_sniffing_is_cut_not_piped(setup):
    """A client that sends a request line one byte at a time (so the sniffer cannot tell in
    time) never gets the request to the origin; a short non-HTTP token protocol still works."""
    import time

    gp, plain, _tls = setup
    sock = open_path(gp, "tunnel", plain)
    line = b"GET /dribbled HTTP/1.1\r\nHost: b.test\r\n\r\n"
    try:
        for i in range(len(line)):
            sock.sendall(line[i : i + 1])
            time.sleep(0.03)
    except OSError:
        pass  # cut by the proxy: expected
    sock.close()
    time.sleep(0.2)
    # The line is cut before it is complete: the origin never has a request to act on.
    assert b"HTTP/1.1" not in plain.everything and b"\n" not in plain.everything
    assert b"b.test" not in plain.everything
    rows = gp.wait_for(lambda: [r for r in gp.api("GET", "/api/logs").json()["items"]
                                if r.get("reason") == "unparsed_http"])
    assert rows


def test_opaque_tunnels_follow_the_policy(gp_factory):
    """mitm.opaque: allow pipes a non-HTTP, non-TLS stream (logged non_tls); deny refuses it."""
    from tests.integration.netutil import EchoServer, http_connect

    echo = EchoServer()
    try:
        for policy, works in (("allow", True), ("deny", False)):
            gp = gp_factory(config_yaml=f"mitm: {{opaque: {policy}}}\n", name=f"data-{policy}")
            gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": echo.host})
            status, _, sock = http_connect(gp.ports["http"], echo.host, echo.port)
            assert status == 200
            sock.settimeout(5)
            try:
                sock.sendall(b"\x00\x01binary protocol\n")
                got = sock.recv(100)
            except OSError:
                got = b""
            sock.close()
            assert (got == b"\x00\x01binary protocol\n") is works, (policy, got)
            if not works:
                assert gp.wait_for(lambda g=gp: [r for r in g.api("GET", "/api/logs").json()["items"]
                                                  if r.get("reason") == "opaque_refused"])
    finally:
        echo.close()
