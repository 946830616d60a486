"""One HTTP/2 connection over a (TLS) socket, shared by the greenlets of its streams.

The h2 library is sans-I/O: this wraps it with one lock (state changes and the bytes they
produce go out together, in order), a reader greenlet per connection (the subclass's `_loop`),
flow control that blocks a sender until the peer opens its window (bounded by a deadline), and
receive windows reopened only as a stream's consumer takes its data, so a peer can never make
us buffer more than the windows we advertised."""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import RLock
from h2.connection import H2Connection
from h2.exceptions import H2Error

MAX_CONCURRENT_STREAMS = 100
MAX_HEADER_LIST = 64 * 1024  # the HTTP/1 engine's MAX_HEAD: one limit for a header section
STREAM_WINDOW = 256 * 1024  # unread bytes a peer may send on one stream
CONNECTION_WINDOW = 1024 * 1024  # ... and on all of them together
SEND_TIMEOUT = 120.0  # a peer that keeps its window shut this long is gone
READ_SIZE = 64 * 1024


class StreamGone(OSError):
    """The stream was reset or its connection ended."""


class H2Endpoint:
    def __init__(self, sock: socket.socket, conn: H2Connection) -> None:
        self.sock = sock
        self.conn = conn
        self.lock = RLock()
        self._window = Event()
        self.closed = False

    # -- output ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send what the h2 state machine has queued (call with the lock held)."""
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def act(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one h2 call and send its bytes, under the lock; h2 errors end the stream only."""
        with self.lock:
            if self.closed:
                raise StreamGone("the HTTP/2 connection is closed")
            try:
                result = fn(*args, **kwargs)
            except H2Error as exc:
                raise StreamGone(f"HTTP/2: {exc}") from None
            self.flush()
            return result

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """DATA frames as the peer's windows allow; waits (bounded) while they are shut."""
        view = memoryview(data)
        deadline = time.monotonic() + SEND_TIMEOUT
        while view or end:
            with self.lock:
                if self.closed:
                    raise StreamGone("the HTTP/2 connection is closed")
                try:
                    window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                    if window > 0 or not view:
                        piece, view = view[:window], view[window:]
                        self.conn.send_data(stream_id, piece.tobytes(), end_stream=end and not view)
                        self.flush()
                        if not view:
                            return
                        continue
                except H2Error as exc:
                    raise StreamGone(f"HTTP/2: {exc}") from None
                waiter = self._window
            left = deadline - time.monotonic()
            if left <= 0 or not waiter.wait(timeout=left):
                raise StreamGone("the peer kept its flow-control window shut")

    def window_opened(self) -> None:
        """Wake every sender waiting for a window (a WINDOW_UPDATE or new SETTINGS arrived)."""
        waiter, self._window = self._window, Event()
        waiter.set()

    def consumed(self, stream_id: int, length: int) -> None:
        """A stream's consumer took `length` flow-controlled bytes: open the windows again."""
        if length <= 0:
            return
        with self.lock:
            if self.closed:
                return
            try:
                self.conn.acknowledge_received_data(length, stream_id)
                self.flush()
            except (H2Error, OSError):
                pass  # the stream is gone already; the connection window is restored by h2

    def reset(self, stream_id: int, code: int = 2) -> None:
        """RST_STREAM (INTERNAL_ERROR unless told), ignoring a stream that already ended."""
        with self.lock:
            if self.closed:
                return
            try:
                self.conn.reset_stream(stream_id, code)
                self.flush()
            except (H2Error, OSError):
                pass

    def receive(self) -> list[Any] | None:
        """One read from the socket as h2 events; None on EOF. A protocol error raises after
        the GOAWAY h2 queued for it is sent."""
        data = self.sock.recv(READ_SIZE)
        if not data or self.closed:  # after our GOAWAY nothing more is read
            return None
        with self.lock:
            try:
                events = self.conn.receive_data(data)
            finally:
                try:
                    self.flush()
                except OSError:
                    pass
        return events

    def shutdown(self, error_code: int = 0) -> None:
        """GOAWAY (best effort), then nothing more is sent; waiters are woken to fail."""
        with self.lock:
            if not self.closed:
                try:
                    self.conn.close_connection(error_code)
                    self.flush()
                except (H2Error, OSError):
                    pass
                self.closed = True
        self.window_opened()


def killall(greenlets: list[gevent.Greenlet] | set[gevent.Greenlet]) -> None:
    gevent.killall(list(greenlets), block=True, timeout=5)
