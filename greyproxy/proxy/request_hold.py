"""Holding single HTTP requests (docs/request-rules.md): the step of the exchange pipeline that
judges a request by the request-level rules, and the in-memory list of held requests.

A request whose connection is allowed but which a request-level `hold` rule matches waits here
(method, URL, redacted headers and a body preview are shown to a human) until it is approved
(it goes on, its body byte-identical), denied (403 with the reason text), or the hold times out.
A `deny` rule answers 403 at once. Held requests live in memory only: each one is a waiting
client, and a restart ends them all. Bounded: at most MAX_HELD_PER_CONTAINER / MAX_HELD_TOTAL
waiting, bodies buffered up to MAX_HELD_BODY, and the last MAX_DECIDED answers kept for display.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import AsyncResult

from greyproxy.events import Bus
from greyproxy.hangup import client_hung_up
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.policy.request_decide import decide_request
from greyproxy.policy.request_rules import RequestQuery, canonical_path
from greyproxy.proxy.httpwire import (
    BufferedSocket,
    Head,
    WholeBody,
    WireError,
    read_whole_body,
    unread,
    wants_close,
)

if TYPE_CHECKING:
    from greyproxy.capture.redact import Redactor
    from greyproxy.capture.scrub import Scrubber
    from greyproxy.proxy.exchange import Destination
    from greyproxy.proxy.gate import Gatekeeper
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.views import PolicyView

log = logging.getLogger("greyproxy.requests")

MAX_HELD_PER_CONTAINER = 64
MAX_HELD_TOTAL = 512
MAX_HELD_BODY = 256 * 1024  # buffered while held; a longer body stays in the socket (no preview)
BODY_READ_SECONDS = 10.0  # the body of a request to hold must arrive within this
PREVIEW_BYTES = 4096
MAX_DECIDED = 200
HANGUP_POLL_SECONDS = 0.5
STATUSES = ("pending", "allowed", "denied", "expired", "gone")


@dataclass(eq=False)
class HeldRequest:
    id: int
    container: str
    host: str
    port: int
    method: str
    url: str  # as shown: query values redacted
    path: str  # canonical (what rules match)
    headers: dict[str, list[str]]  # redacted
    body_preview: str | None
    body_size: int | None  # None: not read (too large, or Expect: 100-continue)
    rule_id: int | None
    resolved_hostname: str | None
    created_at: float = field(default_factory=time.time)
    status: str = "pending"
    decided_at: float | None = None
    decided_by: str | None = None
    reason: str | None = None  # the reason text of a deny, said to the client
    result: AsyncResult = field(default_factory=AsyncResult, repr=False)

    def query(self) -> RequestQuery:
        return RequestQuery(self.container, self.host, self.port, self.method, self.path, self.resolved_hostname)

    def to_json(self) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        return {"id": self.id, "container_name": self.container, "destination_host": self.host,
                "destination_port": self.port, "method": self.method, "url": self.url, "path": self.path,
                "headers": self.headers, "body_preview": self.body_preview, "body_size": self.body_size,
                "rule_id": self.rule_id, "resolved_hostname": self.resolved_hostname, "status": self.status,
                "created_at": iso(self.created_at), "decided_at": iso(self.decided_at),
                "decided_by": self.decided_by, "reason": self.reason}


class RequestHolds:
    """The held requests. `decide` answers a held request as the policy stands now (a rule
    written meanwhile wakes it: `reevaluate`, called after every policy change)."""

    def __init__(self, bus: Bus, decide: Callable[[HeldRequest], Decision]) -> None:
        self.bus = bus
        self.decide = decide
        # Ids are not reused across restarts either (a stale id in a UI must not approve a
        # newer request): they start from the clock.
        self._ids = itertools.count(int(time.time() * 1000))
        self._pending: dict[int, HeldRequest] = {}
        self._decided: deque[HeldRequest] = deque(maxlen=MAX_DECIDED)
        self._by_container: dict[str, int] = {}

    # -- reads -----------------------------------------------------------------------------
    def get(self, request_id: int) -> HeldRequest | None:
        found = self._pending.get(request_id)
        if found is not None:
            return found
        return next((r for r in self._decided if r.id == request_id), None)

    def list(self, status: str | None = None, container: str | None = None) -> list[HeldRequest]:
        rows = list(self._pending.values()) if status in (None, "pending") else []
        if status != "pending":
            rows += [r for r in reversed(self._decided) if status is None or r.status == status]
        return [r for r in rows if container is None or r.container == container]

    def count(self) -> int:
        return len(self._pending)

    def full(self, container: str) -> bool:
        return len(self._pending) >= MAX_HELD_TOTAL or self._by_container.get(container, 0) >= MAX_HELD_PER_CONTAINER

    # -- the hold --------------------------------------------------------------------------
    def new_id(self) -> int:
        return next(self._ids)

    def stride(self, offset: int, step: int) -> None:
        """Worker processes (docs/workers.md): each takes every `step`-th id from its own
        `offset`, so no two processes ever hand out the same id."""
        start = next(self._ids)
        self._ids = itertools.count(start - start % step + step + offset, step)

    def hold(self, held: HeldRequest, timeout: float, client: socket.socket | None) -> Decision:
        self._pending[held.id] = held
        self._by_container[held.container] = self._by_container.get(held.container, 0) + 1
        self.bus.publish("pending_http.created", held.to_json())
        # An HTTP/2 stream is no socket of its own (no fileno): its hang-up is not watched.
        watched = client is not None and callable(getattr(client, "fileno", None))
        watcher = gevent.spawn(self._watch_hangup, held, client) if watched else None
        try:
            decision = held.result.get(timeout=timeout)
        except gevent.Timeout:
            decision = self.decide(held)  # a final re-check: a rule written a moment ago counts
            if decision.verdict is Verdict.HOLD:
                decision = Decision(Verdict.DENY, "pending_timeout")
        finally:
            if watcher is not None:
                watcher.kill(block=False)
            self._pending.pop(held.id, None)
            left = self._by_container.get(held.container, 1) - 1
            if left > 0:
                self._by_container[held.container] = left
            else:
                self._by_container.pop(held.container, None)
        if held.status == "pending":  # not answered by a human: a rule, the timeout or a hang-up
            status = {"pending_timeout": "expired", "client_gone": "gone"}.get(decision.reason)
            self._finish(held, status or ("allowed" if decision.verdict is Verdict.ALLOW else "denied"),
                         None, decision.reason)
        self._decided.append(held)
        return decision

    def _finish(self, held: HeldRequest, status: str, actor: str | None, reason: str | None) -> None:
        held.status, held.decided_at, held.decided_by = status, time.time(), actor
        if status == "denied":
            held.reason = reason
        self.bus.publish(f"pending_http.{status}", held.to_json())

    def answer(self, request_id: int, allow: bool, actor: str | None, reason: str | None = None) -> HeldRequest | None:
        """A human's answer; None when no such request is waiting (answered, timed out, gone)."""
        held = self._pending.get(request_id)
        if held is None or held.result.ready():
            return None
        if allow:
            self._finish(held, "allowed", actor, None)
            held.result.set(Decision(Verdict.ALLOW, "request_approved"))
        else:
            self._finish(held, "denied", actor, reason or "denied by a human")
            held.result.set(Decision(Verdict.DENY, "request_denied"))
        return held

    def _watch_hangup(self, held: HeldRequest, client: socket.socket) -> None:
        while not held.result.ready():
            if client_hung_up(client):
                held.result.set(Decision(Verdict.DENY, "client_gone"))
                return
            gevent.sleep(HANGUP_POLL_SECONDS)

    def reevaluate(self) -> None:
        """After a policy change: wake the held requests whose answer is no longer 'hold'."""
        for held in list(self._pending.values()):
            if held.result.ready():
                continue
            decision = self.decide(held)
            if decision.verdict is not Verdict.HOLD:
                held.result.set(decision)

    def release_all(self, reason: str) -> None:
        for held in list(self._pending.values()):
            if not held.result.ready():
                held.result.set(Decision(Verdict.DENY, reason))


# -- the pipeline step -----------------------------------------------------------------------
def request_decision(policy: PolicyView, guard: ControlPlaneGuard, container: str, host: str, port: int,
                     resolved: str | None, q: RequestQuery) -> Decision:
    """The connection as it stands now, then the request-level rules (policy/request_decide.py);
    the connection's own decision (the same object) when no request rule has a say."""
    connection = policy.decide(ConnectionRequest(container=container, host=host, port=port,
                                                 resolved_hostname=resolved,
                                                 control_plane=guard.is_control_plane(host, port)))
    return decide_request(connection, q, policy.state)


def _by_request_rule(decision: Decision) -> bool:
    """The decision came from a request-level rule (not the connection's own, which the pipeline's
    `check` already applied: a connection that is no longer allowed is its business)."""
    return decision.rule is not None and bool(decision.rule.method_pattern or decision.rule.path_pattern)


def uninspectable_refusal(policy: PolicyView, container: str, host: str, port: int, resolved: str | None) -> str | None:
    """Why a tunnel that would be piped without inspection (interception off or bypassed for
    it, no CA) must be refused instead, or None: a request-level deny or hold rule could apply
    to it, and a piped tunnel would carry every request past that rule unseen."""
    rule = policy.state.index.restricting_request_rule(container, host, port, resolved)
    if rule is None:
        return None
    return (f"request-level {rule.action} rule #{rule.id} applies to {host}:{port}, and this tunnel would not be "
            "inspected (interception is off, bypassed for this host, or has no CA)")


def _refusal(gate: Gatekeeper, dest: Destination, reason: str, method: str, url: str, detail: str | None,
             keep: bool) -> bytes:
    from greyproxy.proxy.exchange import simple_response  # the pipeline imports us

    text = gate.blocked_text(dest.admission, reason) + f"Request: {method} {url}\n"
    if detail:
        text += f"Detail: {detail}\n"
    return simple_response(403, "Forbidden", text, [("X-Greyproxy-Reason", reason)], close=not keep)


class RequestScreen:
    """The pipeline's request-level step (docs/request-rules.md): deny, hold or let through one
    request before anything of it goes upstream."""

    def __init__(self, policy: PolicyView, guard: ControlPlaneGuard, gate: Gatekeeper, holds: RequestHolds,
                 redactor: Callable[[], Redactor], scrubber: Scrubber, hold_seconds: Callable[[], float]) -> None:
        self.policy = policy
        self.guard = guard
        self.gate = gate  # refusals are logged and worded by the gate
        self.holds = holds
        self.redactor = redactor  # read at each request: a settings change replaces the Redactor
        self.scrubber = scrubber
        self.hold_seconds = hold_seconds  # read at each hold: a reload may change it

    def screen(self, client: BufferedSocket, request: Head, dest: Destination, url: str) -> bool | None:
        """Judge one request by the request-level rules before anything goes upstream. None: go on
        (a held request that was approved has its body put back, byte for byte); else the request
        was answered here (403) and the value says whether the client connection can carry another."""
        index = self.policy.state.index
        if not index.has_request_rules:
            return None  # the common case costs one attribute read
        a = dest.admission
        method, target = request.start[0], request.start[1]
        q = RequestQuery(a.container, a.host, a.port, method, canonical_path(target), a.resolved_hostname)
        decision = request_decision(self.policy, self.guard, a.container, a.host, a.port, a.resolved_hostname, q)
        if not _by_request_rule(decision):
            return None
        if decision.verdict is Verdict.ALLOW:
            if decision.would:  # report mode: what the rule would have done is logged, the request goes on
                self.gate.record(a.container, a.host, a.port, method, decision, 0,
                                 resolved_hostname=a.resolved_hostname, container_id=a.container_id)
            return None
        redactor = self.redactor()
        shown = redactor.url(url)
        if decision.verdict is Verdict.DENY:
            self.gate.refused(a, decision.reason, method=method)
            client.sock.sendall(_refusal(self.gate, dest, decision.reason, method, shown, None, keep=False))
            return False
        holds = self.holds
        if holds.full(a.container):
            self.gate.refused(a, "hold_limit", method=method)
            client.sock.sendall(_refusal(self.gate, dest, "hold_limit", method, shown, "too many requests held", keep=False))
            return False
        body = _buffer_body(client, request)
        raw, payload = (body.raw, body.payload) if body is not None else (None, None)
        scrub = self.scrubber.for_exchange(redactor.redacted_values(request.headers, url))
        preview = None
        if payload is not None:
            preview = payload[:PREVIEW_BYTES].decode("utf-8", "replace")
            preview = scrub(preview) if scrub is not None else preview
        held = HeldRequest(
            id=holds.new_id(), container=a.container, host=a.host, port=a.port, method=method,
            url=scrub(shown) if scrub is not None else shown, path=q.path, headers=redactor.headers(request.headers),
            body_preview=preview, body_size=len(payload) if payload is not None else None,
            rule_id=decision.rule_id, resolved_hostname=a.resolved_hostname)
        log.info("request held: #%s %s %s %s:%s", held.id, a.container, method, a.host, a.port)
        client.sock.settimeout(None)
        answer = holds.hold(held, self.hold_seconds(), client.sock)
        if answer.verdict is Verdict.ALLOW:
            if raw is not None:
                unread(client, raw)  # the pipeline relays it as if it had just arrived
            return None
        self.gate.refused(a, answer.reason, method=method)
        keep = raw is not None and not wants_close(request) and answer.reason != "client_gone"
        try:
            client.sock.sendall(_refusal(self.gate, dest, answer.reason, method, held.url, held.reason, keep=keep))
        except OSError:
            return False
        return keep


def _buffer_body(client: BufferedSocket, request: Head) -> WholeBody | None:
    """The request body, read whole (bounded in size and time) so a human sees a preview and it
    can go on unchanged after an approval; None when it is not read (a client waiting for
    `100 Continue`, or a body over MAX_HELD_BODY, whose start is put back unread)."""
    if (request.get("expect") or "").strip().lower() == "100-continue":
        return None
    client.sock.settimeout(BODY_READ_SECONDS)
    try:
        with gevent.Timeout(BODY_READ_SECONDS, WireError("request body not complete in time", 408)):
            return read_whole_body(client, request, MAX_HELD_BODY)
    finally:
        client.sock.settimeout(None)


def make_request_holds(bus: Bus, policy: PolicyView, guard: ControlPlaneGuard) -> RequestHolds:
    """The held requests, re-decided against the live policy."""
    return RequestHolds(bus, lambda held: request_decision(policy, guard, held.container, held.host, held.port,
                                                           held.resolved_hostname, held.query()))
