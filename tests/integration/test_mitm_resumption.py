"""TLS session resumption on both sides of interception, and what it must not change: the
origin is resumed only under the name it was verified for, a resumed client is still held to
the SNI/Host checks, and an origin the proxy cannot verify is told to the client (502)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netutil import http_connect
from tests.integration.tlsutil import make_origin_pki
from tests.ports import free_port
from tests.workers import workers  # noqa: F401 - every test here runs with 1 and 2 workers (the fixture)

pytestmark = pytest.mark.no_ca


class ResumingOrigin:
    """An HTTPS origin with one server context (so its tickets resume, as a real server's do)
    that records, per connection, whether the TLS session was resumed and the request line."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_path, leaf = make_origin_pki(folder)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(leaf)
        self.port = free_port("127.0.0.1")
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.5)
        self.seen: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.seen.append({"resumed": tls.session_reused, "line": data.split(b"\r\n", 1)[0]})
                if data:
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        except (OSError, ssl.SSLError) as exc:
            self.seen.append({"error": str(exc)})

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def origin(tmp_path):
    o = ResumingOrigin(tmp_path / "origin")
    yield o
    o.close()


def through(gp: Any, port: int, sni: str = "localhost", session: ssl.SSLSession | None = None,
            host: str = "localhost", user: str = "resume") -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One HTTPS request in a new CONNECT tunnel: (answer, the client's session, resumed?)."""
    status, _, raw = http_connect(gp.ports["http"], host, port, user=user)
    assert status == 200
    ctx = gp.client_ctx  # one context: a session resumes only in the context that made it
    with ctx.wrap_socket(raw, server_hostname=sni, session=session) as tls:
        tls.sendall(f"GET /r HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer, tls.session, tls.session_reused


def test_origin_sessions_are_resumed_across_client_connections(gp_factory, origin, workers):  # noqa: F811
    gp2 = _gp_trusting(gp_factory, origin)
    count = 4 * workers
    for _ in range(count):
        answer, _, _ = through(gp2, origin.port)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n")
    assert [s.get("line") for s in origin.seen] == [b"GET /r HTTP/1.1"] * count
    resumed = [s["resumed"] for s in origin.seen]
    # One full handshake, then resumptions. A worker keeps its own origin sessions (an ssl
    # session cannot cross processes), so with N workers each may make its first one in full.
    assert resumed[0] is False and resumed.count(False) <= workers, resumed


def test_client_resumes_and_is_still_held_to_the_server_name(gp_factory, origin, workers):  # noqa: F811
    gp = _gp_trusting(gp_factory, origin)
    answer, session, resumed = through(gp, origin.port)
    assert answer.startswith(b"HTTP/1.1 200") and not resumed
    for _ in range(4 * workers):  # the proxy's tickets are honoured, whichever worker takes the connection
        answer, _, resumed = through(gp, origin.port, session=session)
        assert answer.startswith(b"HTTP/1.1 200") and resumed
    requests = lambda: [s for s in origin.seen if "line" in s]  # noqa: E731 - what reached the origin as HTTP
    before = len(requests())
    # A resumed session names another server: refused like a full handshake would be, and the
    # origin gets nothing.
    answer, _, _ = through(gp, origin.port, sni="elsewhere.example", session=session)
    assert answer.startswith(b"HTTP/1.1 403") and b"X-Greyproxy-Reason: sni_mismatch" in answer
    time.sleep(0.3)  # the origin's thread records what it got; give a stray request time to show
    assert len(requests()) == before  # the tunnel was dialled (a TCP connect, then EOF), no request sent


def test_origin_it_cannot_verify_is_a_502_and_gets_no_request(gp_factory, origin, tmp_path):
    untrusted = ResumingOrigin(tmp_path / "untrusted")  # its CA is not the one greyproxy trusts
    try:
        gp = _gp_trusting(gp_factory, origin)
        for _ in range(2):  # the failure is not remembered as a session either
            answer, _, _ = through(gp, untrusted.port)
            assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
            assert b"X-Greyproxy-Reason: upstream_tls_error" in answer
        assert all("line" not in s for s in untrusted.seen), untrusted.seen
    finally:
        untrusted.close()


def _gp_trusting(gp_factory: Any, origin: ResumingOrigin) -> Any:
    """An intercepting greyproxy that trusts `origin`'s CA (and no other test CA), with its own CA."""
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{origin.ca_path}', generate_ca: false}}\n")
    resp = gp.api("POST", "/api/cert/generate")
    assert resp.status_code == 200, resp.text
    gp.ca_path = gp.data_dir / "ca-cert.pem"
    # the chain is verified against greyproxy's CA; the name is not checked here, so that a
    # test can send a server name other than the one it CONNECTs to
    gp.client_ctx = ssl.create_default_context(cafile=str(gp.ca_path))
    gp.client_ctx.check_hostname = False
    return gp
