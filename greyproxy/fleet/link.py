"""Change notifications between fleet nodes over PostgreSQL LISTEN/NOTIFY (docs/fleet.md).

Outbound: a bus hook turns each change this node makes into a small message (its kind and the
ids to fetch, never the row: NOTIFY payloads stop at 8000 bytes, and a row may hold more) and a
sender greenlet sends it with `pg_notify` on the store's connection, after the change has
committed, so a node that receives it always finds the row.

Inbound: a connection of its own, in psycopg2's asynchronous mode, waited on cooperatively
(`wait_read` on its socket, then `poll()`): the hub never blocks on it. Messages from this node
are skipped; the others go to `on_message`. When the connection is lost (a database restart, a
failover, a network cut) the node keeps deciding from the index it has, reports `degraded` in
/api/health, reconnects with a growing backoff (0.2 s up to 5 s), and once listening again
calls `on_resync`: everything is read afresh, as whatever was sent meanwhile is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import psycopg2
import psycopg2.extensions
from gevent.queue import Full, Queue
from gevent.socket import wait_read, wait_write

from greyproxy.store.postgres import connect_params

log = logging.getLogger("greyproxy.fleet")

CHANNEL = "greyproxy_fleet"
MAX_PAYLOAD = 7900  # PostgreSQL's limit is 8000 bytes
PING_SECONDS = 5.0  # an idle listen connection is checked this often
CONNECT_SECONDS = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
OUTBOX_MAX = 10_000
SEND_RETRY_SECONDS = 0.5

Message = dict[str, Any]  # {"n": node id, "t": kind, ...kind-specific ids}


class LinkDown(Exception):
    pass


def _wait(conn: Any, timeout: float) -> None:
    """Drive an asynchronous psycopg2 operation to completion, yielding to the hub meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise LinkDown("timed out")
        if state == psycopg2.extensions.POLL_READ:
            wait_read(conn.fileno(), timeout=left, timeout_exc=LinkDown("timed out"))
        elif state == psycopg2.extensions.POLL_WRITE:
            wait_write(conn.fileno(), timeout=left, timeout_exc=LinkDown("timed out"))
        else:  # pragma: no cover - psycopg2 documents no other state
            raise LinkDown(f"unexpected poll state {state}")


class FleetLink:
    def __init__(
        self,
        url: str,
        node: str,
        send: Callable[[str], None],
        on_message: Callable[[Message], None],
        on_resync: Callable[[], None],
    ) -> None:
        """`send(payload)` runs `pg_notify` on the store's connection (it may raise)."""
        self.url = url
        self.node = node
        self._send = send
        self.on_message = on_message
        self.on_resync = on_resync
        self.connected = False
        self.last_error: str | None = None
        self.disconnected_since: float | None = time.time()
        self.reconnects = 0
        self._ever_connected = False
        self.resyncs = 0
        self.received = 0
        self.sent = 0
        self.dropped = 0
        self._outbox: Queue = Queue(OUTBOX_MAX)
        self._listener: gevent.Greenlet | None = None
        self._sender: gevent.Greenlet | None = None
        self._conn: Any = None

    # -- outbound ------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Queue a message (never blocks). Too big for NOTIFY, or over the outbox bound: the
        others are asked to resync in full instead, which is always correct."""
        message = {"n": self.node, **message}
        payload = json.dumps(message, separators=(",", ":"))
        if len(payload.encode()) > MAX_PAYLOAD:
            payload = json.dumps({"n": self.node, "t": "resync"})
        try:
            self._outbox.put_nowait(payload)
        except Full:
            self.dropped += 1

    def _send_loop(self) -> None:
        while True:
            payload = self._outbox.get()
            while True:
                try:
                    self._send(payload)
                    self.sent += 1
                    break
                except Exception as exc:  # noqa: BLE001 - the database is away: keep it, retry
                    self.last_error = f"notify: {exc}".strip()
                    gevent.sleep(SEND_RETRY_SECONDS)

    # -- inbound -------------------------------------------------------------------------
    def _connect(self) -> Any:
        params = connect_params(self.url)
        params["application_name"] = f"greyproxy-listen:{self.node}"[:63]
        conn = psycopg2.connect(async_=1, **params)
        try:
            _wait(conn, CONNECT_SECONDS)
            cur = conn.cursor()
            cur.execute(f"LISTEN {CHANNEL}")
            _wait(conn, CONNECT_SECONDS)
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                self._conn = self._connect()
            except (psycopg2.Error, OSError, LinkDown) as exc:
                self._down(exc)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self.connected, self.disconnected_since, self.last_error = True, None, None
            log.info("fleet: listening for changes from other nodes (node %s)", self.node)
            try:
                self.resyncs += 1
                self._safe(self.on_resync)  # whatever was sent while we were not listening
                self._receive(self._conn)
            except (psycopg2.Error, OSError, LinkDown) as exc:
                self._down(exc)
            finally:
                self._close()

    def _receive(self, conn: Any) -> None:
        while True:
            try:
                wait_read(conn.fileno(), timeout=PING_SECONDS, timeout_exc=LinkDown("idle"))
            except LinkDown:
                cur = conn.cursor()  # idle: make sure the server is still there
                cur.execute("SELECT 1")
                _wait(conn, CONNECT_SECONDS)
                cur.fetchall()
            conn.poll()
            while conn.notifies:
                note = conn.notifies.pop(0)
                self._deliver(note.payload)

    def _deliver(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or self.ours(message.get("n")):
            return
        self.received += 1
        self._safe(lambda: self.on_message(message))

    def ours(self, sender: Any) -> bool:
        """Sent by this node, or by one of its worker processes (`<node>/w<k>`, docs/workers.md),
        which the control plane has already relayed here."""
        return isinstance(sender, str) and (sender == self.node or sender.startswith(self.node + "/"))

    def _safe(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # one bad message must not stop the link
            log.exception("fleet: applying a change from another node failed")

    def _down(self, exc: BaseException) -> None:
        if self.connected or self.last_error is None:
            log.warning("fleet: lost the change feed (%s); deciding from the last known rules, reconnecting",
                        str(exc).strip() or type(exc).__name__)
        self.connected = False
        self.last_error = str(exc).strip() or type(exc).__name__
        if self.disconnected_since is None:
            self.disconnected_since = time.time()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._listener = gevent.spawn(self._listen_loop)
        self._sender = gevent.spawn(self._send_loop)

    def flush(self, timeout: float = 2.0) -> None:
        """Give queued messages a moment to leave (stopping)."""
        deadline = time.monotonic() + timeout
        while not self._outbox.empty() and time.monotonic() < deadline:
            gevent.sleep(0.02)

    def stop(self) -> None:
        self.flush()
        for g in (self._listener, self._sender):
            if g is not None:
                g.kill(block=True, timeout=1)
        self._close()
        self.connected = False

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "disconnected_since": self.disconnected_since,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "resyncs": self.resyncs,
            "received": self.received,
            "sent": self.sent,
            "dropped": self.dropped,
            "queued": self._outbox.qsize(),
        }


def notifier(db: Any) -> Callable[[str], None]:
    """`send` for FleetLink: NOTIFY through the store's own connection (its database thread)."""

    def send(payload: str) -> None:
        db.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    return send
