"""HTTP/2 inside interception: a client that speaks only h2 gets its pages; every stream is
checked (its :authority must be the admitted name), recorded, credential-substituted and
scrubbed like an HTTP/1 request; an h2-only origin serves HTTP/1.1 and HTTP/2 clients."""

from __future__ import annotations

import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

from tests.integration.h2util import H2Origin
from tests.integration.mwutil import middleware_yaml, seen_messages
from tests.integration.netutil import http_connect, wait_until
from tests.integration.tlsutil import TLSOrigin

CURL = ["curl", "-sS", "--noproxy", "", "--max-time", "20"]
SESSION_ID = "gw-h2echo0123456789"
PLACEHOLDER = "greyproxy:credential:v1:gw-h2echo0123456789:" + "c" * 32
SECRET = "h2-REAL-secret-value-4242"


@pytest.fixture
def h2_origin(tmp_path):
    (tmp_path / "h2").mkdir()
    origin = H2Origin(tmp_path / "h2")
    yield origin
    origin.close()


@pytest.fixture
def mgp(intercepting_gp):
    return intercepting_gp()


def allow(gp, container: str, host: str, port: int) -> None:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": container, "destination_pattern": host,
                                               "port_pattern": str(port)})
    assert resp.status_code in (200, 201), resp.text


def transactions(gp, count: int = 1, **params) -> list[dict]:
    def found():
        items = gp.api("GET", "/api/transactions", params=params).json()["items"]
        return items if len(items) >= count else None

    items = wait_until(found, 5)
    assert items, "no transaction was recorded"
    return items


def h2_client(gp, container: str, ca) -> httpx.Client:  # noqa: ANN001
    return httpx.Client(http1=False, http2=True, proxy=f"http://{container}:x@127.0.0.1:{gp.ports['http']}",
                        verify=ssl.create_default_context(cafile=str(ca)), trust_env=False, timeout=20)


def test_httpx_http2_only_gets_the_page_and_a_transaction_is_stored(mgp, tls_origin):
    allow(mgp, "h2agent", "localhost", tls_origin.port)
    with h2_client(mgp, "h2agent", mgp.ca_path) as client:
        first = client.get(f"https://localhost:{tls_origin.port}/hello?x=1")
        second = client.post(f"https://localhost:{tls_origin.port}/echo", content=b'{"a": 1}',
                             headers={"content-type": "application/json"})
    assert first.http_version == "HTTP/2" and first.status_code == 200
    assert first.text == "hello over tls\n"
    assert second.status_code == 200 and second.content == b'{"a": 1}'
    assert [s["method"] for s in tls_origin.seen] == ["GET", "POST"]  # the HTTP/1.1 origin got both
    items = transactions(mgp, 2, container="h2agent")
    by_method = {i["method"]: i for i in items}
    assert by_method["GET"]["url"] == f"https://localhost:{tls_origin.port}/hello?x=1"
    assert by_method["GET"]["status_code"] == 200
    assert by_method["POST"]["url"] == f"https://localhost:{tls_origin.port}/echo"
    detail = mgp.api("GET", f"/api/transactions/{by_method['POST']['id']}").json()
    assert '"a": 1' in detail["request_body"] and detail["status_code"] == 200


def test_concurrent_streams_over_one_connection(mgp, tls_origin):
    allow(mgp, "h2many", "localhost", tls_origin.port)
    # All 16 streams are open before any answer is read. (httpx used from several threads
    # cannot do this: it may send a higher stream id before a lower one, which HTTP/2 forbids
    # and greyproxy refuses.)
    paths = [f"/n{i}" for i in range(16)]
    answers = _raw_h2(mgp, "h2many", tls_origin.port, mgp.ca_path, f"localhost:{tls_origin.port}", paths)
    assert [answers[1 + 2 * i] for i in range(16)] == [(200, b"hello over tls\n")] * 16
    assert sorted(s["path"] for s in tls_origin.seen) == sorted(paths)
    assert len(transactions(mgp, 16, container="h2many")) == 16


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_curl_http2_through_interception(mgp, tls_origin, via):
    allow(mgp, "curlh2", "localhost", tls_origin.port)
    proxy = (["-x", f"http://curlh2:x@127.0.0.1:{mgp.ports['http']}"] if via == "http"
             else ["--socks5-hostname", f"curlh2:x@127.0.0.1:{mgp.ports['socks5']}"])
    out = subprocess.run(CURL + ["--http2", "-w", "\n%{http_version}", "--cacert", str(mgp.ca_path), *proxy,
                                 f"https://localhost:{tls_origin.port}/curl"],
                         capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello over tls\n\n2"
    assert transactions(mgp, container="curlh2")[0]["url"] == f"https://localhost:{tls_origin.port}/curl"


def _raw_h2(gp, container: str, port: int, ca, authority: str,  # noqa: ANN001
            paths: list[str], sni: str = "localhost") -> dict[int, tuple[int | None, bytes]]:
    """GETs over one HTTP/2 connection (CONNECT to localhost:port, SNI `sni`) naming
    `authority`, every stream opened before any answer is read, on ids 1, 3, 5, … in order:
    {stream id: (status, body)}."""
    code, _, raw = http_connect(gp.ports["http"], "localhost", port, user=container)
    assert code == 200
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(raw, server_hostname=sni)
    assert sock.selected_alpn_protocol() == "h2"
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    answers: dict[int, tuple[int | None, bytes]] = {}
    for i, path in enumerate(paths):
        conn.send_headers(1 + 2 * i, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                                      (":path", path)], end_stream=True)
        answers[1 + 2 * i] = (None, b"")
    sock.sendall(conn.data_to_send())
    waiting = set(answers)
    sock.settimeout(10)
    for _ in range(100 * len(paths)):  # bounded
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                answers[event.stream_id] = (int(dict(event.headers)[":status"]), b"")
            elif isinstance(event, DataReceived):
                status, body = answers[event.stream_id]
                answers[event.stream_id] = (status, body + event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded | StreamReset):
                waiting.discard(event.stream_id)
        sock.sendall(conn.data_to_send())
        if not waiting:
            break
    sock.close()
    return answers


def test_stream_naming_another_authority_never_reaches_the_origin(mgp, tls_origin):
    allow(mgp, "fronter", "localhost", tls_origin.port)
    status, body = _raw_h2(mgp, "fronter", tls_origin.port, mgp.ca_path, "evil.example", ["/fronted"])[1]
    assert status == 403 and b"evil.example" in body
    status2, _ = _raw_h2(mgp, "fronter", tls_origin.port, mgp.ca_path, f"localhost:{tls_origin.port + 1}",
                         ["/fronted"])[1]
    assert status2 == 403
    assert tls_origin.seen == []  # the origin saw nothing
    # the same check lets the admitted name through
    status3, body3 = _raw_h2(mgp, "fronter", tls_origin.port, mgp.ca_path, f"localhost:{tls_origin.port}",
                             ["/fronted"])[1]
    assert status3 == 200 and body3 == b"hello over tls\n"
    assert [s["path"] for s in tls_origin.seen] == ["/fronted"]

    def refused():
        logs = mgp.api("GET", "/api/logs", params={"container": "fronter"}).json()["items"]
        return [r for r in logs if r.get("reason") == "sni_mismatch"]

    assert wait_until(refused, 5)


def test_h2_client_with_another_tls_name_is_answered_403_and_nothing_goes_upstream(mgp, tls_origin):
    allow(mgp, "snih2", "localhost", tls_origin.port)
    status, body = _raw_h2(mgp, "snih2", tls_origin.port, mgp.ca_path, "evil.example", ["/fronted"],
                           sni="evil.example")[1]
    assert status == 403 and b"sni_mismatch" in body
    assert tls_origin.seen == []


@pytest.fixture
def h2gp(gp_factory, h2_origin):
    config = f"mitm: {{extra_ca_bundle: '{h2_origin.ca_path}', generate_ca: false}}\n"
    gp = gp_factory(config_yaml=config, name="h2data")
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    gp.ca_path = gp.data_dir / "ca-cert.pem"
    return gp


@pytest.mark.parametrize("client_protocol", ["h2", "http/1.1"])
def test_h2_only_origin_substituted_and_scrubbed(h2gp, h2_origin, client_protocol):
    resp = h2gp.api("POST", "/api/sessions", json={
        "session_id": SESSION_ID, "container_name": "h2echo", "mappings": {PLACEHOLDER: SECRET},
        "network_rules": [{"destination_pattern": "localhost", "port_pattern": str(h2_origin.port)}],
        "ttl_seconds": 300})
    assert resp.status_code == 200, resp.text
    proxy = f"http://h2echo:x@127.0.0.1:{h2gp.ports['http']}"
    verify = ssl.create_default_context(cafile=str(h2gp.ca_path))
    h2 = client_protocol == "h2"
    with httpx.Client(http1=not h2, http2=h2, proxy=proxy, verify=verify, trust_env=False, timeout=20) as client:
        page = client.get(f"https://localhost:{h2_origin.port}/page")
        echo = client.get(f"https://localhost:{h2_origin.port}/echo",
                          headers={"authorization": f"Bearer {PLACEHOLDER}"})
    assert page.http_version == ("HTTP/2" if h2 else "HTTP/1.1")
    assert page.status_code == 200 and page.text == "hello over h2\n"
    assert h2_origin.seen[-1]["headers"]["authorization"] == f"Bearer {SECRET}"  # substituted upstream
    assert echo.status_code == 200
    assert SECRET not in echo.text and SECRET not in str(echo.headers)
    assert echo.headers["echo-authorization"] == f"Bearer {PLACEHOLDER}"
    assert echo.json() == {"authorization": f"Bearer {PLACEHOLDER}"}
    items = transactions(h2gp, 2, container="h2echo")
    assert {i["url"] for i in items} == {f"https://localhost:{h2_origin.port}/page",
                                         f"https://localhost:{h2_origin.port}/echo"}
    assert all(i["status_code"] == 200 for i in items)


def test_curl_http11_to_h2_only_origin(h2gp, h2_origin):
    allow(h2gp, "curl11", "localhost", h2_origin.port)
    out = subprocess.run(CURL + ["--http1.1", "--cacert", str(h2gp.ca_path),
                                 "-x", f"http://curl11:x@127.0.0.1:{h2gp.ports['http']}",
                                 "-d", "posted body", f"https://localhost:{h2_origin.port}/post"],
                         capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"posted body"
    assert h2_origin.seen[-1]["method"] == "POST" and h2_origin.seen[-1]["body"] == b"posted body"
    assert h2_origin.seen[-1]["authority"] == f"localhost:{h2_origin.port}"


def _h2_tls(gp, container: str, port: int, ca) -> ssl.SSLSocket:  # noqa: ANN001
    code, _, raw = http_connect(gp.ports["http"], "localhost", port, user=container)
    assert code == 200
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def _drain(sock: ssl.SSLSocket, timeout: float) -> float:
    """Read until the proxy closes; how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        for _ in range(10_000):  # bounded
            if not sock.recv(65536):
                break
    except (OSError, ssl.SSLError):
        pass
    sock.close()
    return time.monotonic() - started


def _reasons(gp, container: str) -> list[str]:
    return [r.get("reason") for r in gp.api("GET", "/api/logs", params={"container": container}).json()["items"]]


def test_not_http2_after_choosing_h2_is_refused_with_a_reason(mgp, tls_origin):
    """A client that chose h2 and then speaks HTTP/1 is refused and logged (malformed_request),
    never served or left silent; the proxy keeps serving."""
    allow(mgp, "h2garbage", "localhost", tls_origin.port)
    sock = _h2_tls(mgp, "h2garbage", tls_origin.port, mgp.ca_path)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert _drain(sock, 10) < 5
    assert tls_origin.seen == []
    assert wait_until(lambda: "malformed_request" in _reasons(mgp, "h2garbage"), 5)
    with h2_client(mgp, "h2garbage", mgp.ca_path) as client:
        assert client.get(f"https://localhost:{tls_origin.port}/after").status_code == 200


def test_silent_h2_client_is_let_go_after_the_preface_deadline(mgp, tls_origin):
    allow(mgp, "h2silent", "localhost", tls_origin.port)
    sock = _h2_tls(mgp, "h2silent", tls_origin.port, mgp.ca_path)
    waited = _drain(sock, 30)
    assert 5 < waited < 20  # PREFACE_TIMEOUT is 10 s


def test_oversized_header_list_ends_the_connection(mgp, tls_origin):
    allow(mgp, "h2big", "localhost", tls_origin.port)
    sock = _h2_tls(mgp, "h2big", tls_origin.port, mgp.ca_path)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    big = [(f"x-big-{i}", "v" * 1000) for i in range(100)]  # ~100 KiB, over the 64 KiB list size
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{tls_origin.port}"),
                          (":path", "/big"), *big], end_stream=True)
    sock.sendall(conn.data_to_send())
    assert _drain(sock, 10) < 5
    assert tls_origin.seen == []
    assert wait_until(lambda: "malformed_request" in _reasons(mgp, "h2big"), 5)


def test_rapid_reset_does_not_pile_up_work(mgp, tls_origin):
    """Streams opened and reset at once, hundreds of them: each exchange is stopped with its
    stream, and the connection still serves a normal request afterwards."""
    allow(mgp, "h2reset", "localhost", tls_origin.port)
    sock = _h2_tls(mgp, "h2reset", tls_origin.port, mgp.ca_path)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    authority = f"localhost:{tls_origin.port}"
    for n in range(300):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                                (":path", f"/r{n}")], end_stream=True)
        conn.reset_stream(sid)
        if n % 50 == 49:
            sock.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                            (":path", "/last")], end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.settimeout(15)
    body, status = b"", None
    for _ in range(10_000):  # bounded
        data = sock.recv(65536)
        assert data, "the proxy closed the connection"
        done = False
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived) and event.stream_id == sid:
                status = dict(event.headers)[":status"]
            elif isinstance(event, DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id == sid:
                    body += event.data
            elif isinstance(event, StreamEnded) and event.stream_id == sid:
                done = True
            elif isinstance(event, StreamReset) and event.stream_id == sid:
                raise AssertionError(f"the last stream was reset ({event.error_code})")
        sock.sendall(conn.data_to_send())
        if done:
            break
    sock.close()
    assert status == "200" and body == b"hello over tls\n"
    assert len(tls_origin.seen) <= 301


def test_large_bodies_both_ways_through_flow_control(mgp, tls_origin):
    """3 MiB up and back over HTTP/2 to an HTTP/1.1 origin: many times the windows."""
    allow(mgp, "h2large", "localhost", tls_origin.port)
    payload = bytes(range(256)) * (3 * 4096)
    with h2_client(mgp, "h2large", mgp.ca_path) as client:
        resp = client.post(f"https://localhost:{tls_origin.port}/echo", content=payload,
                           headers={"content-type": "application/octet-stream"})
    assert resp.http_version == "HTTP/2" and resp.status_code == 200
    assert resp.content == payload
    assert tls_origin.seen[-1]["body"] == payload


@pytest.mark.parametrize("client_protocol", ["h2", "http/1.1"])
def test_h2_origin_large_bodies(h2gp, h2_origin, client_protocol):
    allow(h2gp, "h2olarge", "localhost", h2_origin.port)
    h2 = client_protocol == "h2"
    payload = bytes(range(256)) * 8192
    with httpx.Client(http1=not h2, http2=h2, proxy=f"http://h2olarge:x@127.0.0.1:{h2gp.ports['http']}",
                      verify=ssl.create_default_context(cafile=str(h2gp.ca_path)), trust_env=False,
                      timeout=30) as client:
        down = client.get(f"https://localhost:{h2_origin.port}/big")
        up = client.post(f"https://localhost:{h2_origin.port}/upload", content=payload)
    assert down.status_code == 200 and down.content == payload
    assert up.status_code == 200 and up.content == payload
    assert h2_origin.seen[-1]["body"] == payload


def test_each_stream_is_decided_by_the_rules_as_they_are_now(mgp, tls_origin):
    """A deny rule added while an HTTP/2 connection is open refuses its next stream (the same
    re-decision as for each HTTP/1 request inside a tunnel); the origin sees only the first."""
    allow(mgp, "h2redecide", "localhost", tls_origin.port)
    with h2_client(mgp, "h2redecide", mgp.ca_path) as client:
        assert client.get(f"https://localhost:{tls_origin.port}/first").status_code == 200
        resp = mgp.api("POST", "/api/rules", json={"container_pattern": "h2redecide", "destination_pattern": "localhost",
                                                   "port_pattern": str(tls_origin.port), "action": "deny"})
        assert resp.status_code in (200, 201), resp.text
        second = client.get(f"https://localhost:{tls_origin.port}/second")
    assert second.status_code == 403 and second.headers["x-greyproxy-reason"] == "denied_by_rule"
    assert "h2redecide" in second.text  # the same text an HTTP/1 client is told
    assert [s["path"] for s in tls_origin.seen] == ["/first"]


@pytest.mark.parametrize("http", ["--http2", "--http1.1"])
@pytest.mark.parametrize("origin_kind", ["h1", "h2"])
def test_expect_100_continue_does_not_wait_for_the_client_timeout(gp_factory, tmp_path, origin_kind, http):
    """The origin's 100 Continue reaches the client as it comes (an informational HEADERS frame
    for an HTTP/2 client, a 100 head for an HTTP/1.1 one), whichever protocol each side speaks."""
    folder = tmp_path / "origin"
    folder.mkdir()
    origin = TLSOrigin(folder) if origin_kind == "h1" else H2Origin(folder)
    try:
        gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{origin.ca_path}', generate_ca: false}}\n")
        assert gp.api("POST", "/api/cert/generate").status_code == 200
        allow(gp, "expecter", "localhost", origin.port)
        upload = tmp_path / "up.bin"
        upload.write_bytes(b"u" * 300_000)
        started = time.monotonic()
        out = subprocess.run(CURL + [http, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect: 100-continue",
                                     "--expect100-timeout", "10", "--cacert", str(gp.data_dir / "ca-cert.pem"),
                                     "-x", f"http://expecter:x@127.0.0.1:{gp.ports['http']}",
                                     "--data-binary", f"@{upload}", f"https://localhost:{origin.port}/up"],
                             capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        elapsed = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"200"
        assert elapsed < 5, f"waited {elapsed:.1f} s: the 100 Continue was held back"
        assert origin.seen[-1]["body"] == b"u" * 300_000
    finally:
        origin.close()


def test_middlewares_see_h2_streams_like_http1_requests(gp_factory, tls_origin, tmp_path):
    """A middleware sees an HTTP/2 stream as it sees an HTTP/1 request (placeholders, never the
    secret), its deny answers that stream, and substitution happens after it."""
    seen = tmp_path / "seen.jsonl"
    gp = gp_factory(config_yaml=middleware_yaml(seen)
                    + f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}', generate_ca: false}}\n")
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    gp.ca_path = gp.data_dir / "ca-cert.pem"
    allow(gp, "h2mw", "localhost", tls_origin.port)
    cred = gp.api("POST", "/api/credentials", json={"label": "h2key", "value": "real-h2-secret"}).json()
    url = f"https://localhost:{tls_origin.port}"
    with h2_client(gp, "h2mw", gp.ca_path) as client:
        ok = client.post(f"{url}/mw/pass", content=b"{}", headers={"x-api-key": cred["placeholder"]})
        denied = client.get(f"{url}/mw/deny")
    assert ok.http_version == "HTTP/2" and ok.status_code == 200
    assert tls_origin.seen[-1]["headers"]["X-Api-Key"] == "real-h2-secret"
    request_msg = [m for m in seen_messages(seen) if m["type"] == "http-request"][-2]
    assert request_msg["tls"] is True and request_msg["headers"]["X-Api-Key"] == [cred["placeholder"]]
    assert "real-h2-secret" not in seen.read_text()
    assert denied.status_code == 451 and denied.text == "denied by the test middleware\n"
    assert denied.headers["x-greyproxy-reason"] == "middleware_denied"
    assert [s["path"] for s in tls_origin.seen] == ["/mw/pass"]


def test_headless_chromium_speaks_http2_through_interception(mgp, tls_origin):
    """A real browser through the HTTP proxy: it negotiates h2 with the interception leaf, gets
    the page, and the exchange is stored."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: install Debian's chromium (.ci/run does)")
        pytest.skip("no /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    allow(mgp, "h2chrome", "localhost", tls_origin.port)
    url = f"https://localhost:{tls_origin.port}/browser"
    seen: dict = {}

    def browse() -> None:
        # Its own thread: this browser needs its own proxy settings, and a second Playwright
        # cannot start in a thread where the session-wide one (tests/browser.py) runs its loop.
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=str(chromium), headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--proxy-bypass-list=<-loopback>"],
                    proxy={"server": f"http://127.0.0.1:{mgp.ports['http']}", "username": "h2chrome", "password": "x"})
                try:
                    # The page is trusted through our CA only; the browser has its own store, so this
                    # context skips verification (what is tested is the protocol, not the trust store).
                    context = browser.new_context(ignore_https_errors=True)
                    page = context.new_page()
                    response = page.goto(url, timeout=15_000)
                    seen["status"] = response.status if response is not None else None
                    seen["text"] = page.evaluate("document.body.innerText").strip()
                    seen["protocol"] = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
                finally:
                    browser.close()
        except Exception as exc:  # reported by the assertion below
            seen["error"] = repr(exc)

    thread = threading.Thread(target=browse)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and "error" not in seen, seen
    assert (seen["status"], seen["text"], seen["protocol"]) == (200, "hello over tls", "h2"), seen
    items = transactions(mgp, container="h2chrome")
    assert any(i["url"] == url and i["status_code"] == 200 for i in items)


def test_after_a_refused_stream_the_connection_takes_no_new_streams(mgp, tls_origin):
    """As an HTTP/1 connection ends after a refusal, an HTTP/2 one refuses new streams and says
    GOAWAY: a client cannot try name after name on one connection."""
    allow(mgp, "h2drain", "localhost", tls_origin.port)
    sock = _h2_tls(mgp, "h2drain", tls_origin.port, mgp.ca_path)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "evil.example"),
                          (":path", "/one")], end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.settimeout(10)
    statuses: dict[int, str] = {}
    goaway = False
    for _ in range(1000):  # bounded
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                statuses[event.stream_id] = dict(event.headers)[":status"]
            elif isinstance(event, ConnectionTerminated):
                goaway = True
        if 1 in statuses and not goaway:
            try:  # a second name on the same connection
                conn.send_headers(3, [(":method", "GET"), (":scheme", "https"),
                                      (":authority", f"localhost:{tls_origin.port}"), (":path", "/two")],
                                  end_stream=True)
            except Exception:  # noqa: BLE001 - h2 may already refuse to open it after GOAWAY
                pass
        try:
            sock.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            break
        if goaway:
            break
    sock.close()
    assert statuses.get(1) == "403"
    assert goaway
    assert 3 not in statuses or statuses[3] != "200"
    assert tls_origin.seen == []


def test_more_streams_than_advertised_end_the_connection(mgp, tls_origin):
    """The proxy advertises 100 concurrent streams; a client that opens more is cut off (GOAWAY
    with an error code) and the refusal is logged."""
    allow(mgp, "h2many2", "localhost", tls_origin.port)
    sock = _h2_tls(mgp, "h2many2", tls_origin.port, mgp.ca_path)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    sock.settimeout(10)
    for _ in range(20):  # bounded: until the proxy's SETTINGS are in
        if any(isinstance(e, RemoteSettingsChanged) for e in conn.receive_data(sock.recv(65536))):
            break
    conn.remote_settings.max_concurrent_streams = 1000  # act as if the proxy allowed more
    conn.remote_settings.acknowledge()  # (a settings change applies once acknowledged)
    authority = f"localhost:{tls_origin.port}"
    for n in range(101):  # request bodies never sent: every stream stays open
        conn.send_headers(conn.get_next_available_stream_id(),
                          [(":method", "POST"), (":scheme", "https"), (":authority", authority),
                           (":path", f"/open{n}"), ("content-length", "10")])
    sock.sendall(conn.data_to_send())
    terminated = None
    for _ in range(1000):  # bounded
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ConnectionTerminated):
                terminated = event
        if terminated is not None:
            break
    sock.close()
    assert terminated is not None and terminated.error_code != 0
    assert wait_until(lambda: "malformed_request" in _reasons(mgp, "h2many2"), 5)
