"""WebSocket through interception: every frame stored in order, both directions,
permessage-deflate inflated; frames forwarded unchanged."""

from __future__ import annotations

import ssl
import threading

import pytest
from websockets.sync.client import connect
from websockets.sync.server import serve

from tests.integration.netutil import http_connect, wait_until
from tests.integration.tlsutil import make_origin_pki
from tests.ports import free_port

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca


@pytest.fixture
def wss_origin(tmp_path):
    ca_path, leaf = make_origin_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf)

    def echo(ws):
        for message in ws:
            ws.send(f"echo:{message}")

    server = serve(echo, "127.0.0.1", free_port("127.0.0.1"), ssl=ctx, compression="deflate")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.port = server.socket.getsockname()[1]
    server.ca_path = ca_path
    yield server
    server.shutdown()


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_websocket_frames_are_captured_in_order(gp_factory, wss_origin, compression):
    gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{wss_origin.ca_path}'}}\n")
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    status, _, raw = http_connect(gp.ports["http"], "localhost", wss_origin.port, user="wsclient")
    assert status == 200
    tls = ssl.create_default_context(cafile=str(gp.data_dir / "ca-cert.pem")).wrap_socket(
        raw, server_hostname="localhost")
    messages = ["first", "second " * 50, "third"]
    with connect(f"ws://localhost:{wss_origin.port}/chat", sock=tls, compression=compression) as ws:
        for text in messages:
            ws.send(text)
            assert ws.recv(timeout=10) == f"echo:{text}"

    def frames():
        items = gp.api("GET", "/api/transactions", params={"container": "wsclient", "limit": 100}).json()["items"]
        frames = [i for i in items if i["method"] in ("WS_REQ", "WS_RESP")]
        return frames if len(frames) >= 6 else None

    found = wait_until(frames, 5)
    assert found, "frames were not recorded"
    found.sort(key=lambda i: i["id"])
    bodies = [(f["method"], gp.api("GET", f"/api/transactions/{f['id']}").json()["request_body"]) for f in found]
    text_frames = [b for b in bodies if not b[1].startswith("\x03")]  # drop the close frames' payloads
    expected = []
    for text in messages:
        expected += [("WS_REQ", text), ("WS_RESP", f"echo:{text}")]
    assert text_frames[:6] == expected
    assert found[0]["url"] == f"wss://localhost:{wss_origin.port}/chat"
    upgrade = [i for i in gp.api("GET", "/api/transactions", params={"container": "wsclient"}).json()["items"]
               if i["method"] == "GET"]
    assert upgrade and upgrade[0]["status_code"] == 101
