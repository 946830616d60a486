"""Real secrets never flow back to the agent (docs/decisions.md#interception-and-secrets): an origin that echoes what it received gets
the real value (substitution works), and the client receives the placeholder instead, in
headers and bodies, plain or gzip'd, with a length, chunked with the value split across chunks,
as an event stream, over the plain proxy and through interception."""

from __future__ import annotations

import gzip
import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.tlsutil import make_origin_pki
from tests.ports import free_port

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

SESSION_ID = "gw-echo0123456789ab"
PLACEHOLDER = "greyproxy:credential:v1:gw-echo0123456789ab:" + "b" * 32
SECRET = "echo-REAL-secret-value-31337"
CURL = ["curl", "-sS", "--noproxy", "", "--max-time", "15", "-D", "-"]


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        auth = self.headers.get("Authorization", "")
        self.server.seen.append(auth)  # type: ignore[attr-defined]
        echo = json.dumps({"path": self.path, "authorization": auth}).encode()
        self.send_response(200)
        self.send_header("Echo-Authorization", auth)
        if self.path.startswith("/gzip"):
            body = gzip.compress(echo)  # sent compressed whatever the request asked for
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith(("/chunked", "/sse")):
            self.send_header("Content-Type", "text/event-stream" if self.path.startswith("/sse") else "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            text = (f"data: {auth}\n\n" if self.path.startswith("/sse") else auth).encode()
            for i in range(0, len(text), 5):  # the secret split across many chunks
                piece = text[i : i + 5]
                self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(echo)))
            self.end_headers()
            self.wfile.write(echo)


class EchoOrigin:
    def __init__(self, host: str, tls_leaf=None) -> None:  # noqa: ANN001
        self.server = ThreadingHTTPServer((host, free_port(host)), EchoHandler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        if tls_leaf is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_leaf)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[str]:
        return self.server.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def setup(gp_factory, tmp_path):
    ca, leaf = make_origin_pki(tmp_path)
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{ca}'}}\n")
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    plain, tls = EchoOrigin("127.0.0.2"), EchoOrigin("127.0.0.1", leaf)
    resp = gp.api("POST", "/api/sessions", json={
        "session_id": SESSION_ID, "container_name": "echoer", "mappings": {PLACEHOLDER: SECRET},
        "network_rules": [{"destination_pattern": "127.0.0.2", "port_pattern": str(plain.port)},
                          {"destination_pattern": "localhost", "port_pattern": str(tls.port)}],
        "ttl_seconds": 300})
    assert resp.status_code == 200, resp.text
    yield gp, plain, tls
    plain.close()
    tls.close()


def fetch(gp, url: str, http: str = "--http1.1") -> str:
    cmd = CURL + [http, "-x", f"http://echoer:x@127.0.0.1:{gp.ports['http']}", "-H", f"Authorization: Bearer {PLACEHOLDER}",
                  "--cacert", str(gp.data_dir / "ca-cert.pem"), "--compressed", url]
    out = subprocess.run(cmd, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


@pytest.mark.parametrize("path", ["/plain", "/gzip", "/chunked", "/sse"])
@pytest.mark.parametrize(("scheme", "http"), [("http", "--http1.1"), ("https", "--http1.1"), ("https", "--http2")])
def test_echoed_secret_comes_back_as_the_placeholder(setup, scheme, path, http):
    gp, plain, tls = setup
    url = (f"http://127.0.0.2:{plain.port}{path}" if scheme == "http" else f"https://localhost:{tls.port}{path}")
    answer = fetch(gp, url, http)
    origin = plain if scheme == "http" else tls
    assert origin.seen[-1] == f"Bearer {SECRET}"  # substitution happened upstream
    assert SECRET not in answer, answer
    name = "Echo-Authorization" if http == "--http1.1" else "echo-authorization"  # HTTP/2 names are lower case
    assert f"{name}: Bearer {PLACEHOLDER}" in answer
    assert PLACEHOLDER in answer.split("\r\n\r\n", 1)[1]  # the body names the placeholder instead


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_websocket_echo_of_the_handshake_secret_comes_back_as_the_placeholder(setup, tmp_path, compression):
    from websockets.sync.client import connect
    from websockets.sync.server import serve

    from tests.integration.netutil import http_connect

    gp, _plain, tls = setup
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "origin-leaf.pem")  # signed by the CA the proxy trusts (fixture)
    received: list[str] = []

    def echo(ws):  # noqa: ANN001
        received.append(ws.request.headers.get("Authorization", ""))
        for message in ws:
            ws.send(f"{message} {received[-1]}")

    server = serve(echo, "127.0.0.1", free_port("127.0.0.1"), ssl=ctx, compression="deflate")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]
    try:
        gp.api("POST", "/api/rules", json={"container_pattern": "echoer", "destination_pattern": "localhost",
                                           "port_pattern": str(port)})
        status, _, raw = http_connect(gp.ports["http"], "localhost", port, user="echoer")
        assert status == 200
        sock = ssl.create_default_context(cafile=str(gp.data_dir / "ca-cert.pem")).wrap_socket(
            raw, server_hostname="localhost")
        with connect(f"ws://localhost:{port}/chat", sock=sock, compression=compression,
                     additional_headers={"Authorization": f"Bearer {PLACEHOLDER}"}) as ws:
            ws.send("hello")
            answer = ws.recv(timeout=10)
        assert received and received[-1] == f"Bearer {SECRET}"
        assert SECRET not in answer and answer == f"hello Bearer {PLACEHOLDER}"
    finally:
        server.shutdown()
