"""The control WebSocket `GET /ws` (docs/decisions.md#audit-observability-traffic-tools).

Server → client: `{"type": "connected", ...}` once, then every bus event envelope
`{"type", "data"}` (all types until the first `subscribe`, then only subscribed ones).
Client → server: JSON commands (`ping`, `allow`, `deny`, `dismiss`, `subscribe`,
`unsubscribe`, `claim_notifications`, and `allow_request` / `deny_request` for held HTTP
requests, docs/request-rules.md); every reply carries a `timestamp`.

Each connection runs two greenlets, one reading commands and one pumping bus events; when
either ends (socket closed, send failed) the other is killed, the bus subscription is closed
and a notification claim is released.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import gevent
from flask import Blueprint
from flask_sock import Sock
from gevent.lock import Semaphore
from simple_websocket import ConnectionClosed

from greyproxy.api.context import claims, runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.notifications import NO_BACKEND, NotificationClaims
from greyproxy.api.parse import decode_json
from greyproxy.api.pending import decision_fields
from greyproxy.api.pending_http import answer_fields
from greyproxy.api.streams import SUBSCRIBER_QUEUE, timestamp, to_json
from greyproxy.events import Event, Subscription
from greyproxy.policy.durations import DurationError
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.scopes import ScopeError
from greyproxy.services.audit import current_actor
from greyproxy.services.pending_http import answer_request
from greyproxy.services.rules import Conflict, NotFound

if TYPE_CHECKING:
    from greyproxy.events import Bus
    from greyproxy.services.pending import PendingService
    from greyproxy.services.settings import SettingsStore

log = logging.getLogger("greyproxy.api.ws")
bp = Blueprint("ws", __name__)
sock = Sock()

# simple-websocket options: ping idle clients so dead peers are noticed; cap command size.
# Commands that change nothing: no need to wait for the worker processes after them.
READ_ONLY = ("ping", "subscribe", "unsubscribe", "claim_notifications")
SERVER_OPTIONS = {"ping_interval": 25, "max_message_size": 1 << 20}
POLL_SECONDS = 1.0  # how often both greenlets re-check that the socket is still open

Reply = dict[str, Any]


def _error(message: str) -> Reply:
    return {"type": "error", "error": message}


class CommandError(Exception):
    """A command failed in a way the client should hear about as `{"type": "error"}`."""


def _pending_id(cmd: dict[str, Any]) -> int:
    value = cmd.get("pending_id")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)  # some clients send ids as strings; the meaning is unambiguous
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise CommandError("pending_id must be a positive integer")
    return value


class WholeSends:
    """Socket wrapper: `send` writes every byte, one writer at a time.

    simple-websocket writes frames with a single `socket.send`, which under gevent may send
    only part of a frame once a slow client's buffer is full; the rest would be lost and the
    stream corrupted. Its reader greenlet also writes (pongs, pings, close) on its own, so
    the lock keeps those from landing inside one of our frames.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._lock = Semaphore()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ControlConnection:
    def __init__(self, ws: Any, bus: Bus, pending: PendingService, answer: Callable[..., dict[str, Any]],
                 settings: SettingsStore, claims: NotificationClaims,
                 after_change: Callable[[], object] = lambda: None) -> None:
        ws.sock = WholeSends(ws.sock)
        self.ws = ws
        self.pending = pending
        self.answer = answer  # services/pending_http.py answer_request, bound to the held requests and rules
        self.settings = settings  # its notifier_info says whether a desktop notifier runs
        self.claims = claims
        self.after_change = after_change  # serve --workers N: wait until the workers applied it
        self.client_id = secrets.token_hex(8)
        self.sub: Subscription = bus.subscribe(SUBSCRIBER_QUEUE)
        self.claimed = False
        # Replies and events are sent from two greenlets; framing (compression state) and
        # writing must happen in the same order, so one lock covers both.
        self._send_lock = Semaphore()
        self._commands: dict[str, Callable[[dict[str, Any]], Reply]] = {
            "ping": lambda _cmd: {"type": "pong"},
            "allow": lambda cmd: self._decide(cmd, "allow"),
            "deny": lambda cmd: self._decide(cmd, "deny"),
            "dismiss": self._dismiss,
            "allow_request": lambda cmd: self._answer_request(cmd, True),
            "deny_request": lambda cmd: self._answer_request(cmd, False),
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "claim_notifications": self._claim,
        }

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        workers: list[gevent.Greenlet] = []
        try:
            self.send(
                {"type": "connected", "message": "Connected to proxy event stream", "timestamp": timestamp()}
            )
            workers = [gevent.spawn(self._read_commands), gevent.spawn(self._pump_events)]
            gevent.joinall(workers, count=1)  # whichever side ends first ends the session
        finally:
            gevent.killall(workers)
            self.sub.close()
            if self.claimed:
                self.claims.release()

    def send(self, message: dict[str, Any]) -> bool:
        try:
            with self._send_lock:
                self.ws.send(to_json(message))
            return True
        except (ConnectionClosed, OSError):
            return False

    def _read_commands(self) -> None:
        current_actor.set(f"ws:{self.client_id}")  # changes made by commands are this client's
        while self.ws.connected:
            try:
                message = self.ws.receive(timeout=POLL_SECONDS)
            except ConnectionClosed:
                return
            if message is not None and not self.send({**self.handle(message), "timestamp": timestamp()}):
                return

    def _pump_events(self) -> None:
        while self.ws.connected:
            event = self.sub.get(timeout=POLL_SECONDS)
            if event is not None and self._wanted(event) and not self.send(event):
                return

    def _wanted(self, event: Event) -> bool:
        # Events queued before a `subscribe` narrowed the filter are dropped here.
        return self.sub.types is None or event["type"] in self.sub.types

    # -- commands --------------------------------------------------------------------------
    def handle(self, message: str | bytes) -> Reply:
        try:
            cmd = decode_json(message)  # the REST bodies' reader: depth, surrogates, NaN
        except ApiError:
            return _error("invalid JSON")
        if not isinstance(cmd, dict):
            return _error("invalid JSON")
        name = cmd.get("command")
        handler = self._commands.get(name) if isinstance(name, str) else None
        if handler is None:
            return _error(f"unknown command: {name}")
        try:
            reply = handler(cmd)
            if name not in READ_ONLY:
                self.after_change()
            return reply
        except CommandError as exc:
            return _error(str(exc))
        except ApiError as exc:
            return _error(exc.message)
        except (NotFound, Conflict, DurationError, ScopeError, PatternError) as exc:
            return _error(str(exc))
        except Exception:
            log.exception("ws command %r failed", name)
            return _error("internal error")

    def _decide(self, cmd: dict[str, Any], action: str) -> Reply:
        pid = _pending_id(cmd)
        scope, duration, notes = decision_fields(cmd)
        rule = self.pending.resolve(pid, action, scope, duration, notes, actor=f"ws:{self.client_id}")
        return {"type": "command_success", "command": action, "pending_id": pid, "rule_id": rule["id"]}

    def _answer_request(self, cmd: dict[str, Any], allow: bool) -> Reply:
        """A held HTTP request (docs/request-rules.md): `request_id`, `duration`, `reason`, …."""
        value = cmd.get("request_id")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
            raise CommandError("request_id must be a positive integer")
        out = self.answer(value, allow, actor=f"ws:{self.client_id}", **answer_fields(cmd))
        return {"type": "command_success", "command": cmd["command"], "request_id": value,
                "rule_id": out["rule"]["id"] if out["rule"] else None}

    def _dismiss(self, cmd: dict[str, Any]) -> Reply:
        pid = _pending_id(cmd)
        if not self.pending.dismiss(pid):
            raise CommandError("pending request not found")
        return {"type": "command_success", "command": "dismiss", "pending_id": pid}

    def _event_type(self, cmd: dict[str, Any]) -> str:
        event_type = cmd.get("event_type")
        if not isinstance(event_type, str) or not event_type.strip():
            raise CommandError(f"event_type is required for {cmd['command']}")
        return event_type.strip()

    def _subscribe(self, cmd: dict[str, Any]) -> Reply:
        event_type = self._event_type(cmd)
        if self.sub.types is None:
            self.sub.types = set()  # the first subscribe switches from "everything" to a filter
        self.sub.types.add(event_type)
        return {"type": "subscribed", "event_type": event_type}

    def _unsubscribe(self, cmd: dict[str, Any]) -> Reply:
        event_type = self._event_type(cmd)
        if self.sub.types is not None:
            self.sub.types.discard(event_type)  # an empty filter delivers nothing
        return {"type": "unsubscribed", "event_type": event_type}

    def desktop_backend(self) -> dict[str, Any]:
        info = self.settings.notifier_info
        return info() if info is not None else {"available": False}

    def _claim(self, _cmd: dict[str, Any]) -> Reply:
        if self.claimed:
            raise CommandError("notifications already claimed by this connection")
        self.claimed = True
        reply: Reply = {"type": "notification_claimed", "active_claims": self.claims.acquire()}
        if not self.desktop_backend()["available"]:
            # The claim still quiets the dashboards; say that there is no desktop notifier to quiet.
            reply.update(backend="none", warning=NO_BACKEND)
        return reply


@sock.route("/ws", bp=bp)
def control_socket(ws: Any) -> None:
    # The request guard (token, Host, Origin) has already run: flask-sock upgrades inside the view.
    rt = runtime()
    answer = partial(answer_request, rt.request_holds, rt.rules)
    ControlConnection(ws, rt.bus, rt.pending, answer, rt.settings, claims(),
                      rt.workers.barrier if rt.workers is not None else lambda: None).run()
