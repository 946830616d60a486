"""A raw origin that records every byte it receives, for attack tests that must assert what the
origin got (not only what the client saw). It answers each request it can delimit with a small
200, so honest traffic through the proxy completes."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path

from tests.ports import free_port

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)


class RecordingOrigin:
    def __init__(self, host: str = "127.0.0.1", tls_cert: Path | None = None) -> None:
        self.host = host
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, free_port(host)))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.ctx: ssl.SSLContext | None = None
        if tls_cert is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(tls_cert)
        self.received: list[bytes] = []  # one entry per connection, appended to as bytes arrive
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def everything(self) -> bytes:
        with self.lock:
            return b"".join(self.received)

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            index = len(self.received)
            self.received.append(b"")
        conn.settimeout(10)
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.received[index] += data
                buf += data
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, rest = buf[: end + 4], buf[end + 4 :]
                    if _CHUNKED.search(head):
                        stop = rest.find(b"0\r\n\r\n")
                        if stop < 0:
                            break
                        rest = rest[stop + 5 :]
                    else:
                        m = _LENGTH.search(head)
                        n = int(m.group(1)) if m else 0
                        if len(rest) < n:
                            break
                        rest = rest[n:]
                    buf = rest
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
