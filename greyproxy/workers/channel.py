"""One end of the link between the control plane and a worker process (docs/workers.md).

Messages are JSON objects framed by a 4-byte big-endian length, over a Unix socket pair made
before the fork. `send` never blocks (a bus hook calls it): messages wait in a bounded outbox
that a sender greenlet writes out in order. A receiver greenlet hands each message, in the
order sent, to `on_message`; when the other end closes, `on_closed` runs once.

It offers what the fleet sync needs of a link (`send`, `node`), so a worker follows the
control plane's changes with the same code a fleet node uses to follow another node's.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.queue import Full, Queue

log = logging.getLogger("greyproxy.workers")

Message = dict[str, Any]
HEADER = struct.Struct(">I")
MAX_MESSAGE = 16 * 1024 * 1024  # a bigger frame means a broken peer: the link is closed
OUTBOX_MAX = 100_000
CALL_SECONDS = 5.0


class Channel:
    def __init__(self, sock: socket.socket, node: str, on_message: Callable[[Message], None],
                 on_closed: Callable[[], None] = lambda: None) -> None:
        self.sock = sock
        self.node = node  # stamped on what this end sends ("n"), as fleet messages are
        self.on_message = on_message
        self.on_closed = on_closed
        self.closed = False
        self.sent = self.received = self.dropped = 0
        self._outbox: Queue = Queue(OUTBOX_MAX)
        self._calls: dict[int, AsyncResult] = {}
        self._call_ids = itertools.count(1)
        self._greenlets: list[gevent.Greenlet] = []

    # -- outbound ------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Queue `message` (never blocks); the sender's own node id goes along unless set."""
        if self.closed:
            return
        payload = json.dumps({"n": self.node, **message} if "n" not in message else message,
                             separators=(",", ":"), default=str).encode()
        try:
            self._outbox.put_nowait(HEADER.pack(len(payload)) + payload)
        except Full:
            self.dropped += 1

    def call(self, message: Message, timeout: float = CALL_SECONDS) -> Any:
        """Send `message` and wait for the other end's `reply` (None when it does not come)."""
        call_id = next(self._call_ids)
        result: AsyncResult = AsyncResult()
        self._calls[call_id] = result
        try:
            self.send({**message, "call": call_id})
            return result.get(timeout=timeout)
        except gevent.Timeout:
            return None
        finally:
            self._calls.pop(call_id, None)

    def reply(self, request: Message, value: Any) -> None:
        self.send({"t": "reply", "call": request.get("call"), "v": value})

    def _send_loop(self) -> None:
        try:
            while True:
                frame = self._outbox.get()
                self.sock.sendall(frame)
                self.sent += 1
        except OSError:
            self._closed()

    # -- inbound -------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = self.sock.recv(262144)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= HEADER.size:
                    (size,) = HEADER.unpack_from(buffer)
                    if size > MAX_MESSAGE:
                        raise OSError(f"a frame of {size} bytes")
                    if len(buffer) < HEADER.size + size:
                        break
                    payload = bytes(buffer[HEADER.size:HEADER.size + size])
                    del buffer[:HEADER.size + size]
                    self._deliver(payload)
        except OSError as exc:
            log.debug("workers: link closed: %s", exc)
        self._closed()

    def _deliver(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        self.received += 1
        if message.get("t") == "reply":
            waiting = self._calls.get(message.get("call"))  # type: ignore[arg-type]
            if waiting is not None:
                waiting.set(message.get("v"))
            return
        try:
            self.on_message(message)
        except Exception:  # one bad message must not stop the link
            log.exception("workers: handling a %s message failed", message.get("t"))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._receive_loop), gevent.spawn(self._send_loop)]

    def flush(self, timeout: float = 1.0) -> None:
        with gevent.Timeout(timeout, False):
            while not self._outbox.empty() and not self.closed:
                gevent.sleep(0.01)

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        for waiting in self._calls.values():
            waiting.set(None)
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_closed()

    def close(self) -> None:
        current = gevent.getcurrent()
        for g in self._greenlets:
            if g is not current:
                g.kill(block=False)
        self._closed()

    def status(self) -> dict[str, Any]:
        return {"connected": not self.closed, "sent": self.sent, "received": self.received,
                "dropped": self.dropped, "queued": self._outbox.qsize()}
