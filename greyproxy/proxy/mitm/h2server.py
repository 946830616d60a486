"""HTTP/2 towards the client of an intercepted connection (the client chose `h2` in ALPN).

Every stream is one exchange through the pipeline, exactly like one HTTP/1 request: its head
checked against the admitted destination and the rules as they are now, middlewares,
credential substitution, the response scrubbed of the secrets it carried, recorded. The stream
is handed to the pipeline as a socket (`StreamSocket`, see h2wire.py), so no step is copied.

Bounds: the client preface and SETTINGS within PREFACE_TIMEOUT; at most MAX_CONCURRENT_STREAMS
streams open, and as many exchanges running (a reset stream's exchange is stopped, and a new
stream beyond the bound is refused, so resets cannot pile up work); header lists up to
MAX_HEADER_LIST; receive windows reopened only as the pipeline reads (h2conn.py)."""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

import gevent
from gevent.queue import Empty, Queue
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings

from greyproxy.proxy.exchange import bad_request
from greyproxy.proxy.httpwire import BufferedSocket, Head, WireError
from greyproxy.proxy.mitm.h2conn import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST,
    STREAM_WINDOW,
    H2Endpoint,
    StreamGone,
    killall,
)
from greyproxy.proxy.mitm.h2wire import Http1Reader, request_head, response_fields

if TYPE_CHECKING:
    from greyproxy.proxy.exchange import Destination, ExchangePipeline
    from greyproxy.proxy.gate import Admission, Gatekeeper
    from greyproxy.proxy.mitm.h2upstream import Upstreams

log = logging.getLogger("greyproxy.mitm")

PREFACE_TIMEOUT = 10.0  # the client's connection preface and SETTINGS must arrive by then
IDLE_TIMEOUT = 120.0  # no stream open and nothing received for this long: GOAWAY


def _fields(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


class StreamSocket:
    """One client stream as the pipeline's client socket: `recv` gives the request body
    (HTTP/1.1-framed: as is under a Content-Length, else as chunks), `sendall` takes the
    HTTP/1.1 response the pipeline writes and sends it as HEADERS and DATA frames."""

    def __init__(self, endpoint: H2Endpoint, stream_id: int, method: str, chunked: bool) -> None:
        self.endpoint = endpoint
        self.stream_id = stream_id
        self.inbox: Queue[Any] = Queue()  # (data, flow-controlled length) | None (end) | Exception
        self.chunked = chunked
        self.leftover = b""
        self.body_done = False
        self.timeout: float | None = None
        self.reader = Http1Reader(is_request=False, method=method)
        self.head_sent = False
        self.ended = False
        self.client_done = False  # the client ended its side (END_STREAM)

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def recv(self, size: int) -> bytes:
        while not self.leftover:
            if self.body_done:
                return b""
            try:
                item = self.inbox.get(timeout=self.timeout)
            except Empty:
                raise TimeoutError("the client sent no more of the request body") from None
            if isinstance(item, Exception):
                raise item
            if item is None:
                self.body_done = True
                self.leftover = b"0\r\n\r\n" if self.chunked else b""
                continue
            data, flow = item
            self.endpoint.consumed(self.stream_id, flow)
            if data:
                self.leftover = b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data
        piece, self.leftover = self.leftover[:size], self.leftover[size:]
        return piece

    def sendall(self, data: bytes) -> None:
        ep, sid = self.endpoint, self.stream_id
        events = self.reader.feed(data)
        for i, (kind, value) in enumerate(events):
            if kind == "interim":
                assert isinstance(value, Head)
                ep.act(ep.conn.send_headers, sid, _fields(response_fields(value)))
            elif kind == "head":
                assert isinstance(value, Head)
                bodyless = events[i + 1:i + 2] == [("end", None)]  # END_STREAM on the HEADERS frame
                ep.act(ep.conn.send_headers, sid, _fields(response_fields(value)), end_stream=bodyless)
                self.head_sent = True
                self.ended = bodyless
            elif kind == "end" and self.ended:
                continue
            elif kind == "data":
                assert isinstance(value, bytes)
                if value:
                    ep.send_data(sid, value)
            elif kind == "end":
                ep.send_data(sid, b"", end=True)
                self.ended = True

    def finish(self) -> None:
        """The exchange is over: end the stream (a body that ran until the exchange ended),
        or reset it if its response is incomplete. A request body nobody will read (a refusal
        answered before it) is stopped with NO_ERROR, so the client sends no more of it."""
        if not self.ended and self.head_sent and self.reader.until_close:
            try:
                self.endpoint.send_data(self.stream_id, b"", end=True)
                self.ended = True
            except OSError:
                pass
        if not self.ended:
            self.endpoint.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)
            self.ended = True
        elif not self.client_done:
            self.endpoint.reset(self.stream_id, ErrorCodes.NO_ERROR)


class H2Server:
    """Serves one intercepted client connection in HTTP/2. `refusal`: every stream gets this
    HTTP/1-style answer instead of an exchange (the connection itself was refused)."""

    def __init__(self, gate: Gatekeeper, pipeline: ExchangePipeline, admission: Admission, dest: Destination,
                 sock: ssl.SSLSocket, upstreams: Upstreams | None, refusal: bytes | None = None) -> None:
        self.gate = gate
        self.pipeline = pipeline
        self.admission = admission
        self.dest = dest
        self.upstreams = upstreams
        self.refusal = refusal
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        self.endpoint = H2Endpoint(sock, conn)
        self.streams: dict[int, StreamSocket] = {}
        self.workers: dict[int, gevent.Greenlet] = {}
        # After a refused stream the connection takes no new ones (as an HTTP/1 connection
        # closes after a refusal): streams in flight finish, then GOAWAY. So every refusal
        # costs the client a new CONNECT and handshake, whatever the protocol.
        self.draining = False

    # -- the connection -------------------------------------------------------------------
    def serve(self) -> None:
        ep = self.endpoint
        try:
            with ep.lock:
                ep.conn.initiate_connection()
                ep.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
                ep.flush()
            ep.sock.settimeout(PREFACE_TIMEOUT)
            with gevent.Timeout(PREFACE_TIMEOUT, TimeoutError("no HTTP/2 preface and SETTINGS in time")):
                settled = False
                while not settled:
                    events = ep.receive()
                    if events is None:
                        return
                    settled = any(isinstance(e, RemoteSettingsChanged) for e in events)
                    self._handle(events)
            ep.sock.settimeout(IDLE_TIMEOUT)
            while not ep.closed:
                try:
                    events = ep.receive()
                except TimeoutError:
                    if self.workers:
                        continue  # exchanges still running: they have their own timeouts
                    break
                if events is None or not self._handle(events):
                    break
        except H2Error as exc:
            # h2 refused the client's frames (malformed headers, flow-control or stream abuse)
            # and sent GOAWAY: the connection is refused like a malformed HTTP/1 request.
            log.info("HTTP/2 from %s to %s refused: %s", self.admission.container, self.admission.host, exc)
            self.gate.refused(self.admission, "malformed_request")
        except (OSError, ssl.SSLError, gevent.Timeout) as exc:
            log.debug("HTTP/2 connection to %s ended: %s", self.admission.host, exc)
        finally:
            ep.shutdown()
            for stream in self.streams.values():
                stream.inbox.put(StreamGone("the connection ended"))
            killall(set(self.workers.values()))
            if self.upstreams is not None:
                self.upstreams.close()

    def _handle(self, events: list[Any]) -> bool:
        """Dispatch h2 events; False when the connection is over."""
        for event in events:
            if isinstance(event, RequestReceived):
                self._start(event)
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream.inbox.put((event.data, event.flow_controlled_length))
                else:  # padding only, or a stream we refused or finished: dropped, windows restored
                    # (an empty frame is never queued: a flood of them cannot grow the inbox)
                    self.endpoint.consumed(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.client_done = True
                    stream.inbox.put(None)
            elif isinstance(event, StreamReset):
                self._stop(event.stream_id)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self.endpoint.window_opened()
            elif isinstance(event, ConnectionTerminated):
                return False
        return True

    def _start(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self.draining or len(self.workers) >= MAX_CONCURRENT_STREAMS:
            # h2 counts open streams; exchanges of streams the client reset may still be
            # finishing: a new stream waits for neither, it is refused (the client may retry).
            self.endpoint.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        try:
            head: Head | WireError = request_head(event.headers, event.stream_ended is not None)
        except WireError as exc:
            head = exc
        method = head.start[0] if isinstance(head, Head) else ""
        chunked = isinstance(head, Head) and head.get("transfer-encoding") is not None
        stream = StreamSocket(self.endpoint, sid, method, chunked)
        self.streams[sid] = stream
        self.workers[sid] = gevent.spawn(self._exchange, stream, head)

    def _stop(self, sid: int) -> None:
        """The client reset a stream: its exchange stops (a worker killed before it ran never
        reaches its own clean-up, so the bookkeeping is done here)."""
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.ended = True  # nothing more may be sent on it
            stream.inbox.put(StreamGone("the client reset the stream"))
        worker = self.workers.pop(sid, None)
        if worker is not None:
            worker.kill(block=False)

    # -- one stream -----------------------------------------------------------------------
    def _exchange(self, stream: StreamSocket, head: Head | WireError) -> None:
        pipeline = self.pipeline
        upstream: BufferedSocket | None = None
        keep = False
        try:
            if self.refusal is not None:
                stream.sendall(self.refusal)
                self.endpoint.shutdown()  # GOAWAY: the connection serves nothing else
                return
            if isinstance(head, WireError):
                self.draining = True
                pipeline.refuse(stream, self.admission, "malformed_request", str(head))  # type: ignore[arg-type]
                return
            problem = pipeline.check(head, self.dest)
            if problem is not None:
                self.draining = True
                pipeline.refuse(stream, self.admission, *problem)  # type: ignore[arg-type]
                return
            assert self.upstreams is not None
            upstream = self.upstreams.lease()
            keep = pipeline.run(BufferedSocket(stream), upstream, head, self.dest)  # type: ignore[arg-type]
        except WireError as exc:
            log.debug("HTTP/2 stream to %s ended: %s", self.admission.host, exc)
            if not stream.head_sent and not stream.ended:
                try:
                    stream.sendall(bad_request(exc))
                except (OSError, WireError):
                    pass
        except (OSError, ssl.SSLError, gevent.Timeout) as exc:
            log.debug("HTTP/2 stream to %s ended: %s", self.admission.host, exc)
        finally:
            if upstream is not None and self.upstreams is not None:
                self.upstreams.release(upstream, keep)
            stream.finish()
            self.streams.pop(stream.stream_id, None)
            self.workers.pop(stream.stream_id, None)
            if self.draining and not self.workers:
                self.endpoint.shutdown()  # GOAWAY; the reader stops at its next read
