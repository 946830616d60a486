"""An HTTP/2-only TLS origin for interception tests (h2 library, one thread per connection).

It offers only `h2` in ALPN, so a proxy that cannot speak HTTP/2 upstream fails the handshake.
It records what it received (method, path, authority, headers, body) and answers:
  /echo  → the request's Authorization in an `echo-authorization` header and in the body;
  /big   → 2 MiB (sent as the proxy's flow-control windows allow);
  other  → `hello over h2` (POST: the body back)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset

from tests.integration.tlsutil import make_origin_pki
from tests.ports import free_port


class H2Origin:
    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        self.ca_path, leaf = make_origin_pki(folder)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(leaf)
        self.ctx.set_alpn_protocols(["h2"])
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, free_port(host)))
        self.listener.listen(16)
        self.host, self.port = host, self.listener.getsockname()[1]
        self.seen: list[dict[str, Any]] = []
        self.connections = 0
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(20)
        try:
            sock = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self.connections += 1
        conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        requests: dict[int, dict[str, Any]] = {}
        self._pending: dict[int, bytes] = {}
        try:
            for _ in range(10_000):  # bounded: a test connection carries a handful of frames
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        headers = dict(event.headers)
                        requests[event.stream_id] = {
                            "method": headers.get(":method"), "path": headers.get(":path"),
                            "authority": headers.get(":authority"), "headers": headers, "body": b""}
                        if headers.get("expect", "").lower() == "100-continue" and not event.stream_ended:
                            conn.send_headers(event.stream_id, [(":status", "100")])  # as real servers do
                    elif isinstance(event, DataReceived):
                        requests[event.stream_id]["body"] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        self._answer(conn, event.stream_id, requests.pop(event.stream_id))
                    elif isinstance(event, StreamReset):
                        requests.pop(event.stream_id, None)
                    elif isinstance(event, ConnectionTerminated):
                        return
                self._pump(conn)
                sock.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def _answer(self, conn: H2Connection, stream_id: int, request: dict[str, Any]) -> None:
        self.seen.append(request)
        extra: list[tuple[str, str]] = []
        if request["path"].startswith("/echo"):
            auth = request["headers"].get("authorization", "")
            extra = [("echo-authorization", auth)]
            body = json.dumps({"authorization": auth}).encode()
        elif request["method"] == "POST":
            body = request["body"]
        else:
            body = b"hello over h2\n"
        if request["path"].startswith("/big"):
            body = bytes(range(256)) * 8192  # 2 MiB
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/plain"),
                                      ("content-length", str(len(body))), *extra])
        self._pending[stream_id] = body

    def _pump(self, conn: H2Connection) -> None:
        """Send what the peer's windows allow of every pending body."""
        for stream_id in list(self._pending):
            body = self._pending[stream_id]
            while True:
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if window <= 0 and body:
                    break
                piece, body = body[:window], body[window:]
                conn.send_data(stream_id, piece, end_stream=not body)
                if not body:
                    del self._pending[stream_id]
                    break
            if body:
                self._pending[stream_id] = body
