"""The origin side of an intercepted connection, whichever protocol the origin chose in ALPN.

The pipeline runs one exchange at a time over a BufferedSocket it is lent (`lease`) and gives
back (`release`, saying whether it can carry another):

- `Single`: the one HTTP/1.1 connection of an HTTP/1 client (exchanges are sequential);
- `H1Pool`: HTTP/1.1 origin, HTTP/2 client: streams run concurrently, so more connections to
  the same destination are opened as needed (dialled under the same guard as the first, up to
  MAX_H1_CONNECTIONS; beyond that a stream waits for one, bounded);
- `H2Upstream`: an HTTP/2 origin: each exchange is a stream of one shared connection, lent to
  the pipeline as a socket that takes HTTP/1.1 and gives HTTP/1.1 back (h2wire.py)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.event import Event
from gevent.queue import Empty, Queue
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from greyproxy.proxy.httpwire import BufferedSocket, Head, WireError
from greyproxy.proxy.mitm.h2conn import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST,
    SEND_TIMEOUT,
    STREAM_WINDOW,
    H2Endpoint,
    StreamGone,
)
from greyproxy.proxy.mitm.h2wire import Http1Reader, response_head, upstream_fields

log = logging.getLogger("greyproxy.mitm")

MAX_H1_CONNECTIONS = 6  # per intercepted HTTP/2 client connection, like a browser per origin
WAIT_TIMEOUT = 60.0  # a stream waits this long for an HTTP/1.1 connection or an h2 stream slot


class Upstreams(Protocol):
    def lease(self) -> BufferedSocket: ...
    def release(self, upstream: BufferedSocket, keep: bool) -> None: ...
    def close(self) -> None: ...


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class Single:
    """The HTTP/1 client's own upstream connection; the caller closes it."""

    def __init__(self, upstream: BufferedSocket) -> None:
        self.upstream = upstream

    def lease(self) -> BufferedSocket:
        return self.upstream

    def release(self, upstream: BufferedSocket, keep: bool) -> None:
        pass

    def close(self) -> None:
        pass


class H1Pool:
    def __init__(self, first: BufferedSocket, dial: Callable[[], BufferedSocket]) -> None:
        self.idle = [first]
        self.open = 1
        self.dial = dial
        self.freed = Event()
        self.all: set[BufferedSocket] = {first}
        self.closed = False

    def lease(self) -> BufferedSocket:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not self.closed:
            if self.idle:
                return self.idle.pop()
            if self.open < MAX_H1_CONNECTIONS:
                self.open += 1
                try:
                    upstream = self.dial()
                except (OSError, ssl.SSLError, gevent.Timeout) as exc:
                    self.open -= 1
                    raise WireError(f"cannot open another connection to the origin: {exc}", 502) from None
                except BaseException:  # the stream was reset while we dialled
                    self.open -= 1
                    raise
                self.all.add(upstream)
                return upstream
            self.freed.clear()
            if not self.freed.wait(timeout=max(0.0, deadline - time.monotonic())):
                raise WireError("no connection to the origin came free in time", 503)
        raise WireError("the connection is closing", 502)

    def release(self, upstream: BufferedSocket, keep: bool) -> None:
        if keep and not self.closed:
            self.idle.append(upstream)
        else:
            self.open -= 1
            self.all.discard(upstream)
            _close(upstream.sock)
        self.freed.set()

    def close(self) -> None:
        self.closed = True
        for upstream in self.all:
            _close(upstream.sock)
        self.freed.set()


class UpstreamStream:
    """One exchange with an HTTP/2 origin, as the socket the pipeline writes its HTTP/1.1
    request to and reads the HTTP/1.1 response from."""

    def __init__(self, owner: H2Upstream) -> None:
        self.owner = owner
        self.stream_id: int | None = None
        self.writer = Http1Reader(is_request=True)
        self.inbox: Queue[Any] = Queue()  # ("head"/"interim", headers) | (data, flow) | None | Exception
        self.method = ""
        self.chunked = False
        self.leftover = b""
        self.done = False
        self.sent_all = False
        self.timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    # -- the request, from the pipeline ---------------------------------------------------
    def sendall(self, data: bytes) -> None:
        ep = self.owner.endpoint
        events = self.writer.feed(data)
        for i, (kind, value) in enumerate(events):
            if kind == "head":
                assert isinstance(value, Head)
                self.method = value.start[0]
                bodyless = events[i + 1:i + 2] == [("end", None)]  # END_STREAM on the HEADERS frame
                self.stream_id = self.owner.open_stream(self, upstream_fields(value), end=bodyless)
                self.sent_all = bodyless
            elif kind == "end" and self.sent_all:
                continue
            elif kind == "data":
                assert isinstance(value, bytes) and self.stream_id is not None
                if value:
                    ep.send_data(self.stream_id, value)
            elif kind == "end":
                assert self.stream_id is not None
                ep.send_data(self.stream_id, b"", end=True)
                self.sent_all = True

    # -- the response, to the pipeline -----------------------------------------------------
    def recv(self, size: int) -> bytes:
        while not self.leftover:
            if self.done:
                return b""
            try:
                item = self.inbox.get(timeout=self.timeout)
            except Empty:
                raise TimeoutError("the origin did not answer in time") from None
            if isinstance(item, Exception):
                raise WireError(f"the origin ended the stream: {item}", 502)
            if item is None:
                self.done = True
                self.leftover = b"0\r\n\r\n" if self.chunked else b""
            elif item[0] in ("head", "interim"):
                head, chunked = response_head(item[1], self.method)
                if item[0] == "head":
                    self.chunked = chunked
                self.leftover = head
            else:
                data, flow = item
                if self.stream_id is not None:
                    self.owner.endpoint.consumed(self.stream_id, flow)
                if data:
                    self.leftover = b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data
        piece, self.leftover = self.leftover[:size], self.leftover[size:]
        return piece

    def finish(self) -> None:
        """The exchange is over: a stream not finished both ways is cancelled."""
        if self.stream_id is None:
            return
        self.owner.streams.pop(self.stream_id, None)
        if not (self.done and self.sent_all):
            self.owner.endpoint.reset(self.stream_id, ErrorCodes.CANCEL)


class H2Upstream:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        self.endpoint = H2Endpoint(sock, conn)
        self.streams: dict[int, UpstreamStream] = {}
        self.slots = Event()
        with self.endpoint.lock:
            conn.initiate_connection()
            conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
            self.endpoint.flush()
        sock.settimeout(SEND_TIMEOUT)  # bounds a send to an origin that stopped reading
        self.reader = gevent.spawn(self._read)

    def lease(self) -> BufferedSocket:
        return BufferedSocket(UpstreamStream(self))  # type: ignore[arg-type]

    def release(self, upstream: BufferedSocket, keep: bool) -> None:
        stream = upstream.sock
        assert isinstance(stream, UpstreamStream)
        stream.finish()

    def close(self) -> None:
        self.endpoint.shutdown()
        self.reader.kill(block=False)
        _close(self.endpoint.sock)

    def open_stream(self, stream: UpstreamStream, fields: list[tuple[str, str]], end: bool = False) -> int:
        """A new stream carrying this request head, once the origin's concurrency allows."""
        ep = self.endpoint
        deadline = time.monotonic() + WAIT_TIMEOUT
        encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields]
        while True:
            with ep.lock:
                if ep.closed:
                    raise WireError("the HTTP/2 connection to the origin is closed", 502)
                if ep.conn.open_outbound_streams < ep.conn.remote_settings.max_concurrent_streams:
                    sid = ep.conn.get_next_available_stream_id()
                    self.streams[sid] = stream
                    try:
                        ep.conn.send_headers(sid, encoded, end_stream=end)
                        ep.flush()
                    except H2Error as exc:
                        self.streams.pop(sid, None)
                        raise WireError(f"cannot send the request over HTTP/2: {exc}", 502) from None
                    return sid
                self.slots.clear()
                waiter = self.slots
            if not waiter.wait(timeout=max(0.0, deadline - time.monotonic())):
                raise WireError("the origin's HTTP/2 streams stayed busy", 503)

    def _read(self) -> None:
        ep = self.endpoint
        try:
            while not ep.closed:
                try:
                    events = ep.receive()
                except TimeoutError:
                    continue  # a quiet origin is fine: each exchange has its own deadline
                if events is None:
                    break
                for event in events:
                    if not self._dispatch(event):
                        return
        except (H2Error, OSError, ssl.SSLError) as exc:
            log.debug("HTTP/2 connection to the origin ended: %s", exc)
        finally:
            ep.shutdown()
            for stream in list(self.streams.values()):
                stream.inbox.put(StreamGone("the origin's connection ended"))
            self.slots.set()

    def _dispatch(self, event: Any) -> bool:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, ResponseReceived) and stream is not None:
            stream.inbox.put(("head", event.headers))
        elif isinstance(event, InformationalResponseReceived) and stream is not None:
            stream.inbox.put(("interim", event.headers))
        elif isinstance(event, DataReceived):
            if stream is not None and event.data:
                stream.inbox.put((event.data, event.flow_controlled_length))
            else:
                self.endpoint.consumed(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, StreamEnded):
            if stream is not None:
                stream.inbox.put(None)
            self.slots.set()
        elif isinstance(event, StreamReset):
            if stream is not None:
                stream.inbox.put(StreamGone(f"reset by the origin (code {event.error_code})"))
            self.slots.set()
        elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
            self.endpoint.window_opened()
            self.slots.set()
        elif isinstance(event, ConnectionTerminated):
            return False
        return True
