"""The middleware engine: connections to external middlewares and the request/response cascade.

Each middleware has a supervisor greenlet that connects (spawns or dials), shakes hands, then
reads replies and hands each to the greenlet waiting for that `id`; when the connection ends it
reconnects with backoff. Callers ask with `on_request` / `on_response`; any failure to get a
valid answer in time applies the middleware's `on_disconnect` policy.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gevent
import gevent.event
import gevent.lock

from greyproxy.middleware.config import MiddlewareConfig
from greyproxy.middleware.protocol import (
    HOOK_REQUEST,
    HOOK_RESPONSE,
    REQUEST_ACTIONS,
    RESPONSE_ACTIONS,
    Decision,
    HandshakeError,
    Headers,
    Hello,
    MatchInput,
    ProtocolError,
    RequestFacts,
    RequestOutcome,
    ResponseFacts,
    ResponseOutcome,
    hello_message,
    match_input,
    merge_headers,
    parse_decision,
    parse_hello,
    request_message,
    response_message,
    strip_forbidden,
)
from greyproxy.middleware.transport import KILL_GRACE_SECONDS, Connection, TransportError, open_connection

log = logging.getLogger("greyproxy.middleware")

HELLO_TIMEOUT = 5.0  # connect + hello, per middleware
STOP_TIMEOUT = 5.0
BACKOFF_START = 0.1
BACKOFF_MAX = 2.0
BACKOFF_JITTER = 0.2
STABLE_AFTER = 5.0  # a connection that lived this long resets the backoff
LOG_EXCERPT = 200
UNAVAILABLE_REQUEST_BODY = b"Request denied by middleware (unavailable)\n"
UNAVAILABLE_RESPONSE_BODY = b"Response blocked by middleware (unavailable)\n"


class Backoff:
    """100 ms doubling to 2 s, each delay ±20 % jitter."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self._base = BACKOFF_START

    def next(self) -> float:
        delay = self._base * (1 + BACKOFF_JITTER * (2 * self._rng() - 1))
        self._base = min(self._base * 2, BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self._base = BACKOFF_START


class Unavailable(Exception):
    """No valid answer from a middleware for one message; the text is the audit reason."""


class Middleware:
    """One configured middleware: its connection, supervisor, in-flight requests and counters."""

    def __init__(self, config: MiddlewareConfig) -> None:
        self.config = config
        self.label = config.label()
        self.hello: Hello | None = None
        self.connected = False
        self.refused = False  # the hello was unacceptable: not retried until a reload
        self.stopped = False
        self.last_error: str | None = None
        self.counters = {"requests": 0, "denied": 0, "rewritten": 0, "failures": 0}
        self.first_attempt = gevent.event.Event()  # set once the first connect has succeeded or failed
        self._conn: Connection | None = None
        self._pending: dict[str, gevent.event.AsyncResult] = {}
        self._send_lock = gevent.lock.Semaphore()
        self._supervisor: gevent.Greenlet | None = None

    @property
    def name(self) -> str:
        return (self.hello.name if self.hello else None) or self.label

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = gevent.spawn(self._run)

    def stop(self) -> None:
        self.stopped = True
        if self._supervisor is not None:
            self._supervisor.kill(block=True, timeout=STOP_TIMEOUT)
        conn, self._conn = self._conn, None
        if conn is not None:  # the supervisor normally closed it already
            conn.close()
        self.connected = False
        self._fail_pending("middleware stopped")

    def _run(self) -> None:
        backoff = Backoff()
        while not self.stopped:
            began = time.monotonic()
            try:
                conn = self._connect()
            except HandshakeError as exc:
                self.refused = True
                self._start_failed(f"refused: {exc}")
                return
            except (TransportError, ProtocolError, OSError, gevent.Timeout) as exc:
                self._start_failed(str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug must not end the supervisor: retry like any failure
                log.exception("middleware %s: unexpected error while connecting", self.label)
                self._start_failed(f"{type(exc).__name__}: {exc}")
            else:
                self._serve(conn)
                if time.monotonic() - began >= STABLE_AFTER:
                    backoff.reset()
            if not self.stopped:
                gevent.sleep(backoff.next())

    def _start_failed(self, reason: str) -> None:
        # A middleware that stays down would warn every 2 s: warn when the reason changes.
        level = logging.DEBUG if reason == self.last_error else logging.WARNING
        self.last_error = reason
        self.first_attempt.set()
        log.log(level, "middleware %s could not start: %s", self.label, reason)

    def _connect(self) -> Connection:
        conn: Connection | None = None
        deadline = gevent.Timeout(HELLO_TIMEOUT, TransportError(f"no hello within {HELLO_TIMEOUT:g} s"))
        deadline.start()
        try:
            conn = open_connection(self.config, lambda: self.name, HELLO_TIMEOUT)
            conn.send(json.dumps(hello_message()))
            self.hello = self._read_hello(conn)
            return conn
        except BaseException:
            deadline.close()  # killing the process may take a moment; never cut that short
            if conn is not None:
                conn.close()
            raise
        finally:
            deadline.close()

    def _read_hello(self, conn: Connection) -> Hello:
        while True:
            text = conn.receive()
            if text is None:
                raise TransportError("the connection ended before the hello")
            obj = self._decode(text)
            if obj is not None:
                return parse_hello(obj)

    def _serve(self, conn: Connection) -> None:
        """Reads replies until the connection ends, then fails whatever is still waiting."""
        assert self.hello is not None
        self._conn, self.connected, self.last_error = conn, True, None
        self.first_attempt.set()
        log.info("middleware %s (%s) connected, protocol v%d, hooks: %s", self.name, self.label,
                 self.hello.version, ", ".join(h.type for h in self.hello.hooks) or "none")
        reason = "disconnected"
        try:
            while (text := conn.receive()) is not None:
                self._dispatch(text)
        except (OSError, ValueError) as exc:  # includes invalid WebSocket frames
            reason = f"disconnected: {exc}"
        except Exception as exc:  # a bug must not end the supervisor: reconnect
            log.exception("middleware %s: unexpected error while reading", self.name)
            reason = f"disconnected: {type(exc).__name__}"
        finally:
            self.connected = False
            if self._conn is conn:
                self._conn = None
            conn.close()
            self._fail_pending(reason)
        if not self.stopped:
            self.last_error = reason
            log.warning("middleware %s %s; reconnecting", self.name, reason)

    # --- messages --------------------------------------------------------------------------

    def _decode(self, text: str) -> dict[str, Any] | None:
        """A JSON object, or None (logged) for anything else: a bad line never breaks anything."""
        try:
            obj = json.loads(text)
        except ValueError:
            log.warning("middleware %s sent a line that is not JSON: %r", self.name, text[:LOG_EXCERPT])
            return None
        if not isinstance(obj, dict):
            log.warning("middleware %s sent JSON that is not an object: %r", self.name, text[:LOG_EXCERPT])
            return None
        return obj

    def _dispatch(self, text: str) -> None:
        obj = self._decode(text)
        if obj is None:
            return
        if obj.get("type", "decision") != "decision":
            log.debug("middleware %s sent a %r message; ignored", self.name, str(obj.get("type"))[:40])
            return
        msg_id = obj.get("id")
        waiter = self._pending.pop(msg_id, None) if isinstance(msg_id, str) else None
        if waiter is None:
            log.warning("middleware %s answered an id nobody waits for: %r", self.name, str(msg_id)[:64])
            return
        waiter.set(obj)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.set_exception(Unavailable(reason))

    def decide(self, message: dict[str, Any]) -> Decision:
        """Sends one message and waits for its decision; Unavailable when there is none in time."""
        self.counters["requests"] += 1
        conn = self._conn
        if conn is None or not self.connected:
            raise Unavailable(f"not connected ({self.last_error})" if self.last_error else "not connected")
        msg_id = message["id"]
        if msg_id in self._pending:
            raise Unavailable("an exchange with the same id is already in flight")
        try:
            text = json.dumps(message)
        except (TypeError, ValueError):
            raise Unavailable("the message could not be encoded") from None
        waiter = gevent.event.AsyncResult()
        self._pending[msg_id] = waiter
        deadline = gevent.Timeout(self.config.timeout_ms / 1000)
        deadline.start()
        try:
            self._write(conn, text)
            reply = waiter.get()
            return parse_decision(reply)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            raise Unavailable(f"timeout after {self.config.timeout_ms} ms") from None
        except (OSError, ValueError) as exc:  # a write error, or an invalid decision (ProtocolError)
            raise Unavailable(str(exc) or type(exc).__name__) from None
        finally:
            deadline.close()
            if self._pending.get(msg_id) is waiter:
                del self._pending[msg_id]

    def _write(self, conn: Connection, text: str) -> None:
        with self._send_lock:  # a timeout while waiting here has written nothing yet
            try:
                conn.send(text)
            except BaseException:
                # A line cut short would corrupt every later message: drop the connection.
                gevent.spawn(conn.close)
                raise

    # --- views -----------------------------------------------------------------------------

    def wants(self, hook_type: str, m: MatchInput) -> bool:
        hello = self.hello
        if hello is None:
            # Never shook hands, so its hooks are unknown: a deny policy must still hold (fail closed).
            return hook_type == HOOK_REQUEST and self.config.on_disconnect == "deny"
        return any(h.type == hook_type and h.matches(m) for h in hello.hooks)

    def event(self, hook: str, action: str, decision: Decision | None = None,
              reason: str | None = None) -> dict[str, Any]:
        return {"middleware": self.name, "hook": hook, "action": action,
                "tags": decision.tags if decision else None,
                "status_code": decision.status_code if decision else None, "reason": reason}

    def status(self) -> dict[str, Any]:
        hello = self.hello
        return {"name": self.name, "transport": self.config.transport, "target": self.label,
                "connected": self.connected, "version": hello.version if hello else None,
                "hooks": [{"type": h.type, "filters": h.filters} for h in hello.hooks] if hello else [],
                "max_body_bytes": hello.max_body_bytes if hello else 0,
                "on_disconnect": self.config.on_disconnect, "timeout_ms": self.config.timeout_ms,
                "last_error": self.last_error, **self.counters}


class MiddlewareEngine:
    """The configured middlewares in cascade order."""

    def __init__(self, configs: list[MiddlewareConfig]) -> None:
        self._middlewares = [Middleware(c) for c in configs]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connects all middlewares in parallel; never raises for a bad one (see status())."""
        self._start(self._middlewares)

    def stop(self) -> None:
        _stop_all(self._middlewares)

    def reload(self, configs: list[MiddlewareConfig]) -> None:
        """Keeps the connection of every unchanged middleware; stops the rest and starts the new."""
        # Refused ones get a fresh try; stopped ones cannot be revived.
        available = [mw for mw in self._middlewares if not (mw.refused or mw.stopped)]
        kept: list[Middleware] = []
        for config in configs:
            match = next((mw for mw in available if mw.config == config), None)
            if match is not None:
                available.remove(match)
            kept.append(match or Middleware(config))
        old = [mw for mw in self._middlewares if mw not in kept]
        self._middlewares = kept
        _stop_all(old)
        self._start([mw for mw in kept if not mw.started])

    @staticmethod
    def _start(middlewares: list[Middleware]) -> None:
        if not middlewares:
            return
        for mw in middlewares:
            mw.start()
        # A failed attempt also waits for its process to be killed before it counts as done.
        gevent.wait([mw.first_attempt for mw in middlewares], timeout=HELLO_TIMEOUT + 2 * KILL_GRACE_SECONDS + 0.5)

    # --- queries ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return bool(self._middlewares)

    @property
    def max_body_bytes(self) -> int:
        limits = [mw.hello.max_body_bytes for mw in self._middlewares if mw.hello and mw.hello.max_body_bytes > 0]
        return min(limits, default=0)

    def wants_request(self, facts: RequestFacts) -> bool:
        m = match_input(facts, facts.headers)
        return any(mw.wants(HOOK_REQUEST, m) for mw in self._middlewares)

    def wants_response(self, facts: RequestFacts, response_headers: Headers) -> bool:
        m = match_input(facts, response_headers)
        return any(mw.wants(HOOK_RESPONSE, m) for mw in self._middlewares)

    def status(self) -> list[dict]:
        return [mw.status() for mw in self._middlewares]

    # --- the cascade -----------------------------------------------------------------------

    def on_request(self, facts: RequestFacts) -> RequestOutcome:
        if not facts.id:
            facts.id = secrets.token_hex(8)
        current = replace(facts, headers=list(facts.headers), body=self._limited(facts.body))
        events: list[dict] = []
        rewriter: str | None = None
        headers_changed = body_replaced = False
        for mw in list(self._middlewares):
            if not mw.wants(HOOK_REQUEST, match_input(current, current.headers)):
                continue
            try:
                decision = mw.decide(request_message(current))
            except Unavailable as exc:
                if _unavailable(mw, HOOK_REQUEST, str(exc), events):
                    return RequestOutcome("deny", 403, UNAVAILABLE_REQUEST_BODY, True, middleware=mw.label,
                                          events=events)
                continue
            action = _known_action(mw, decision.action, REQUEST_ACTIONS, "allow")
            if action == "deny":
                mw.counters["denied"] += 1
                events.append(mw.event(HOOK_REQUEST, "deny", decision, decision.reason))
                return RequestOutcome("deny", decision.status_code, decision.body, decision.body_replaced,
                                      middleware=mw.label, events=events)
            if action == "rewrite":
                mw.counters["rewritten"] += 1
                events.append(mw.event(HOOK_REQUEST, "rewrite", decision, decision.reason))
                rewriter = mw.label
                if decision.headers is not None:
                    current.headers = merge_headers(current.headers, strip_forbidden(decision.headers, mw.name))
                    headers_changed = True
                if decision.body_replaced:
                    current.body, body_replaced = decision.body, True
            elif decision.tags:
                events.append(mw.event(HOOK_REQUEST, "tagged-allow", decision, decision.reason))
        if rewriter is None:
            return RequestOutcome("allow", events=events)
        return RequestOutcome("rewrite", body=current.body if body_replaced else None, body_replaced=body_replaced,
                              headers=current.headers if headers_changed else None, middleware=rewriter,
                              events=events)

    def on_response(self, request: RequestFacts, response: ResponseFacts) -> ResponseOutcome:
        if not request.id:
            request.id = secrets.token_hex(8)
        sent_request = replace(request, body=self._limited(request.body))
        current = replace(response, headers=list(response.headers), body=self._limited(response.body))
        events: list[dict] = []
        rewriter: str | None = None
        headers_changed = body_replaced = status_changed = False
        for mw in list(self._middlewares):
            if not mw.wants(HOOK_RESPONSE, match_input(request, current.headers)):
                continue
            try:
                decision = mw.decide(response_message(sent_request, current))
            except Unavailable as exc:
                if _unavailable(mw, HOOK_RESPONSE, str(exc), events):
                    return ResponseOutcome("block", 502, UNAVAILABLE_RESPONSE_BODY, True, middleware=mw.label,
                                           events=events)
                continue
            action = _known_action(mw, decision.action, RESPONSE_ACTIONS, "passthrough")
            if action == "block":
                mw.counters["denied"] += 1
                events.append(mw.event(HOOK_RESPONSE, "block", decision, decision.reason))
                return ResponseOutcome("block", decision.status_code, decision.body, decision.body_replaced,
                                       middleware=mw.label, events=events)
            if action == "rewrite":
                mw.counters["rewritten"] += 1
                events.append(mw.event(HOOK_RESPONSE, "rewrite", decision, decision.reason))
                rewriter = mw.label
                if decision.status_code is not None:
                    current.status_code, status_changed = decision.status_code, True
                if decision.headers is not None:
                    current.headers = merge_headers(current.headers, strip_forbidden(decision.headers, mw.name))
                    headers_changed = True
                if decision.body_replaced:
                    current.body, body_replaced = decision.body, True
            elif decision.tags:
                events.append(mw.event(HOOK_RESPONSE, "tagged-passthrough", decision, decision.reason))
        if rewriter is None:
            return ResponseOutcome("passthrough", events=events)
        return ResponseOutcome("rewrite", status_code=current.status_code if status_changed else None,
                               body=current.body if body_replaced else None, body_replaced=body_replaced,
                               headers=current.headers if headers_changed else None, middleware=rewriter,
                               events=events)

    def _limited(self, body: bytes | None) -> bytes | None:
        limit = self.max_body_bytes
        return None if body is not None and limit and len(body) > limit else body


def _unavailable(mw: Middleware, hook: str, reason: str, events: list[dict]) -> bool:
    """Records a failed exchange; True when the middleware's policy is to deny/block."""
    mw.counters["failures"] += 1
    events.append(mw.event(hook, "error", reason=reason))
    log.warning("middleware %s unavailable for %s (%s); on_disconnect=%s", mw.name, hook, reason,
                mw.config.on_disconnect)
    return mw.config.on_disconnect == "deny"


def _known_action(mw: Middleware, action: str, known: tuple[str, ...], default: str) -> str:
    if action in known:
        return action
    log.warning("middleware %s answered unknown action %r; treated as %s", mw.name, action[:40], default)
    return default


def _stop_all(middlewares: list[Middleware]) -> None:
    gevent.joinall([gevent.spawn(mw.stop) for mw in middlewares], timeout=STOP_TIMEOUT * 2)
