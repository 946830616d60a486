"""Middleware transports: a spawned program speaking NDJSON on stdio, or a WebSocket server.

Both give the same small interface: `send(text)` one message, `receive()` the next message
(None at the end), `close()`. All I/O goes through gevent objects (gevent.subprocess,
gevent.socket, gevent.ssl), so a connection is cooperative whether or not the process is
monkey-patched. The WebSocket client drives wsproto (the engine under flask-sock's
simple_websocket) directly: simple_websocket.Client reads in a thread with a stdlib socket,
which would block the hub of an unpatched process.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import gevent
import gevent.socket
import gevent.ssl
from gevent import subprocess
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from greyproxy.middleware.config import MiddlewareConfig

log = logging.getLogger("greyproxy.middleware")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a middleware's line/message above this breaks the connection
STDERR_LINE_CHARS = 500
KILL_GRACE_SECONDS = 1.0


class TransportError(OSError):
    """The connection cannot be opened or is no longer usable."""


class Connection(Protocol):
    def send(self, text: str) -> None: ...
    def receive(self) -> str | None: ...
    def close(self) -> None: ...


def open_connection(config: MiddlewareConfig, name: Callable[[], str], timeout: float) -> Connection:
    """Spawns or connects; `name` gives the current display name for the stderr log prefix."""
    if config.command is not None:
        return StdioConnection(config.command, name)
    assert config.url is not None
    return WebSocketConnection(config.url, config.auth_header, timeout)


class StdioConnection:
    """A child process in its own process group; NDJSON on stdin/stdout, stderr logged."""

    def __init__(self, argv: tuple[str, ...], name: Callable[[], str]) -> None:
        env = dict(os.environ, GREYPROXY_TRANSPORT="stdio")
        try:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise TransportError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        self._name = name
        self._closed = False
        self._stderr = gevent.spawn(self._log_stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> str | None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline(MAX_MESSAGE_BYTES + 1)
        if not line:
            return None
        if len(line) > MAX_MESSAGE_BYTES:
            raise TransportError(f"a line longer than {MAX_MESSAGE_BYTES} bytes")
        return line.rstrip(b"\r\n").decode("utf-8", errors="replace")

    def _log_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        try:
            for raw in iter(lambda: stream.readline(64 * 1024), b""):
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log.info("[middleware %s] %s", self._name(), text[:STDERR_LINE_CHARS])
        except (OSError, ValueError):  # the pipe was closed under us by close()
            pass

    def close(self) -> None:
        """Kills the whole process group (SIGTERM, then SIGKILL for whatever is left)."""
        if self._closed:
            return
        self._closed = True
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)  # also the children that outlived the leader
        try:
            self.proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("middleware %s (pid %d) did not exit after SIGKILL", self._name(), self.proc.pid)
        for stream in (self.proc.stdin, self.proc.stdout):
            _quiet_close(stream)
        self._stderr.join(timeout=KILL_GRACE_SECONDS)
        self._stderr.kill(block=False)
        _quiet_close(self.proc.stderr)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _quiet_close(stream: object) -> None:
    try:
        stream.close()  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        pass


def _client_tls() -> gevent.ssl.SSLContext:
    """The default client context (system CAs, hostname check) built from gevent's SSLContext:
    gevent.ssl.create_default_context is the stdlib one, whose sockets would block the hub."""
    context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    return context


class WebSocketConnection:
    """A WebSocket client: one JSON object per text message."""

    def __init__(self, url: str, auth_header: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        self._messages: deque[str] = deque()
        self._partial: list[str | bytes] = []
        self._partial_len = 0
        self._accepted = False
        self._closed = False
        self._ws = WSConnection(ConnectionType.CLIENT)
        try:
            sock = gevent.socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        try:
            if secure:
                sock = _client_tls().wrap_socket(sock, server_hostname=host)
            self._sock = sock
            self._upgrade(host, port, secure, parts, auth_header)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise

    def _upgrade(self, host: str, port: int, secure: bool, parts, auth_header: str | None) -> None:
        default_port = 443 if secure else 80
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra: list[tuple[bytes, bytes]] = []
        if auth_header:
            name, _, value = auth_header.partition(":")
            extra.append((name.strip().encode("latin-1"), value.strip().encode("latin-1")))
        self._sock.sendall(self._ws.send(Request(host=host_header, target=target, extra_headers=extra)))
        while not self._accepted:
            if not self._read_some():
                raise TransportError("the server closed the connection during the upgrade")

    def send(self, text: str) -> None:
        if self._closed:
            raise TransportError("connection closed")
        self._sock.sendall(self._ws.send(TextMessage(data=text)))

    def receive(self) -> str | None:
        while not self._messages:
            if self._closed or not self._read_some():
                return None
        return self._messages.popleft()

    def _read_some(self) -> bool:
        """Reads from the socket and handles the events; False once the connection has ended."""
        try:
            data = self._sock.recv(65536)
        except TimeoutError:  # only during the upgrade, which has a deadline
            raise TransportError("timed out waiting for the server") from None
        except OSError:
            data = b""
        if not data:
            self._closed = True
            return False
        self._ws.receive_data(data)
        self._handle_events()
        return not self._closed or bool(self._messages)

    def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                self._accepted = True
            elif isinstance(event, RejectConnection):
                raise TransportError(f"the WebSocket upgrade was refused with HTTP {event.status_code}")
            elif isinstance(event, (TextMessage, BytesMessage)):
                self._collect(event)
            elif isinstance(event, Ping):
                self._sock.sendall(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._sock.sendall(self._ws.send(event.response()))
                self._closed = True

    def _collect(self, event: TextMessage | BytesMessage) -> None:
        self._partial.append(event.data)
        self._partial_len += len(event.data)
        if self._partial_len > MAX_MESSAGE_BYTES:
            raise TransportError(f"a message longer than {MAX_MESSAGE_BYTES} bytes")
        if not event.message_finished:
            return
        parts, self._partial, self._partial_len = self._partial, [], 0
        if isinstance(event, TextMessage):
            self._messages.append("".join(p for p in parts if isinstance(p, str)))
        else:
            self._messages.append(b"".join(p for p in parts if isinstance(p, bytes)).decode("utf-8", "replace"))

    def close(self) -> None:
        if self._ws.state is ConnectionState.OPEN:
            try:
                self._sock.sendall(self._ws.send(CloseConnection(code=1000)))
            except (OSError, ValueError):
                pass
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
