"""The hold: an unmatched connection waits here, open, for a human decision (docs/decisions.md).

Waiters are re-decided against the in-memory policy whenever it changes: one decision per
distinct request (10,000 waiters on 100 destinations: 100 decisions, not 10,000), and only the
waiters whose answer changed are woken. At the timeout a final re-check runs before blocking.

A held connection costs no greenlet beyond its own handler and no periodic work: its hang-up is
noticed by one read watcher on the client socket (bench/hold_bench.py, docs/benchmarks.md).

A key whose hold timed out with nobody deciding (or whose client gave up waiting, after at
least GAVE_UP_SECONDS) is remembered (in memory, bounded) for `unanswered_seconds`: further attempts on it are refused at once (`pending_unanswered`) instead
of each waiting the whole hold again, so a client that retries (pip: 5 retries) does not
multiply the wait. The pending row still counts every attempt; a decision ends it.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import AsyncResult

from greyproxy.events import Bus
from greyproxy.hangup import client_hung_up
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict

WaiterKey = tuple[str, str, int]  # (container, host, port)

# How often a held client socket that sent bytes before its answer is checked for a hang-up (any
# other held socket is watched for readability instead, which costs nothing until it hangs up).
HANGUP_POLL_SECONDS = 0.5
_READ = 1  # libev/libuv's read event
# At most this many unanswered keys are remembered (the oldest is forgotten first): a flood of
# distinct destinations costs bounded memory, and a forgotten key is only held again.
UNANSWERED_MAX = 10_000
# A client that hangs up after waiting at least this long (or the whole hold, if shorter) gave
# up on a decision; one that leaves sooner (a browser closing a spare connection) did not.
GAVE_UP_SECONDS = 5.0


@dataclass(eq=False, slots=True)
class HeldConnection:
    request: ConnectionRequest
    result: AsyncResult = field(default_factory=AsyncResult)
    client: socket.socket | None = None
    since: float = field(default_factory=time.monotonic)
    watcher: Any = None  # the read watcher on `client`, or the polling greenlet that replaced it

    @property
    def key(self) -> WaiterKey:
        return (self.request.container, self.request.host, self.request.port)


class HoldManager:
    def __init__(self, bus: Bus, decide: Callable[[ConnectionRequest], Decision]) -> None:
        self.bus = bus
        self.decide = decide
        self._waiters: dict[WaiterKey, set[HeldConnection]] = {}
        self._by_container: dict[str, int] = {}  # held connections per container (limits, O(1))
        self._total = 0
        self._unanswered: OrderedDict[WaiterKey, float] = OrderedDict()  # key -> monotonic end
        # A worker process (docs/workers.md) tells the others, so a retry landing there fails fast too.
        self.on_unanswered: Callable[[WaiterKey, float], None] = lambda _key, _seconds: None

    def unanswered(self, key: WaiterKey) -> bool:
        """Whether attempts on `key` fail fast: its hold timed out unanswered a moment ago."""
        until = self._unanswered.get(key)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._unanswered[key]
        return False

    def forget(self, key: WaiterKey) -> None:
        """Someone decided (a rule now answers this key, or it was dismissed): hold it again."""
        if self._unanswered:
            self._unanswered.pop(key, None)

    def _remember_unanswered(self, key: WaiterKey, seconds: float) -> None:
        self.remember_unanswered(key, seconds)
        self.on_unanswered(key, seconds)

    def remember_unanswered(self, key: WaiterKey, seconds: float) -> None:
        """Attempts on `key` fail fast for `seconds` (also what another worker process saw)."""
        self._unanswered[key] = time.monotonic() + seconds
        self._unanswered.move_to_end(key)
        while len(self._unanswered) > UNANSWERED_MAX:
            self._unanswered.popitem(last=False)

    def count(self, container: str, host: str, port: int) -> int:
        return len(self._waiters.get((container, host, port), ()))

    def held_by(self, container: str) -> int:
        return self._by_container.get(container, 0)

    @property
    def total(self) -> int:
        return self._total

    def _changed(self, key: WaiterKey, previous: int) -> None:
        container, host, port = key
        self.bus.publish(
            "waiters.changed",
            {
                "container_name": container,
                "host": host,
                "port": port,
                "previous_count": previous,
                "current_count": self.count(*key),
            },
        )

    def hold(self, request: ConnectionRequest, timeout: float, client: socket.socket | None,
             unanswered_seconds: float = 0.0) -> Decision:
        """Wait for a decision; `unanswered_seconds` > 0: a timeout with nobody deciding makes
        further attempts on this key fail fast for that long (see the module docstring)."""
        waiter = HeldConnection(request, client=client)
        key = waiter.key
        if unanswered_seconds > 0:
            self._notice_gave_up(key, min(timeout, GAVE_UP_SECONDS), unanswered_seconds)
            if self.unanswered(key):
                return Decision(Verdict.DENY, "pending_unanswered")
        previous = self.count(*key)
        self._waiters.setdefault(key, set()).add(waiter)
        container = request.container
        self._by_container[container] = self._by_container.get(container, 0) + 1
        self._total += 1
        self._changed(key, previous)
        if client is not None:
            self._watch(waiter, client)
        started = time.monotonic()
        try:
            decision = waiter.result.get(timeout=timeout)
        except gevent.Timeout:
            decision = None
        finally:
            self._unwatch(waiter)
            previous = self.count(*key)
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]
            left = self._by_container.get(container, 0) - 1
            if left > 0:
                self._by_container[container] = left
            else:
                self._by_container.pop(container, None)
            self._total = max(0, self._total - 1)
            self._changed(key, previous)
        if decision is None:
            # Final re-check at the timeout: a rule added a moment ago still counts.
            decision = self.decide(request)
            if decision.verdict is Verdict.HOLD:
                decision = Decision(Verdict.DENY, "pending_timeout")
                if unanswered_seconds > 0:
                    self._remember_unanswered(key, unanswered_seconds)
        elif (decision.reason == "client_gone" and unanswered_seconds > 0
              and time.monotonic() - started >= min(timeout, GAVE_UP_SECONDS)
              and self.decide(request).verdict is Verdict.HOLD):
            # The client gave up waiting (pip's own 15 s timeout is shorter than the hold) with
            # nobody deciding: its retries are unanswered too.
            self._remember_unanswered(key, unanswered_seconds)
        return decision

    def _notice_gave_up(self, key: WaiterKey, patience: float, unanswered_seconds: float) -> None:
        """A retry often arrives the moment its previous attempt gave up, before the hang-up
        watcher looked (HANGUP_POLL_SECONDS): look now, so the retry already fails fast."""
        now = time.monotonic()
        for other in list(self._waiters.get(key, ())):
            if (other.client is not None and not other.result.ready() and now - other.since >= patience
                    and client_hung_up(other.client)):
                other.result.set(Decision(Verdict.DENY, "client_gone"))
                self._remember_unanswered(key, unanswered_seconds)

    def _watch(self, waiter: HeldConnection, client: socket.socket) -> None:
        """A held client sends nothing until it is answered, so its socket turns readable only
        when it hangs up (EOF, reset): one read watcher in the event loop (a callback, no
        greenlet, nothing done every HANGUP_POLL_SECONDS) notices that. A client that did send
        bytes early (a pipelined TLS hello) keeps it readable: it is polled instead."""
        try:
            io = gevent.get_hub().loop.io(client.fileno(), _READ)
        except (OSError, ValueError):  # already closed
            waiter.result.set(Decision(Verdict.DENY, "client_gone"))
            return
        waiter.watcher = io
        io.start(self._readable, waiter)

    def _readable(self, waiter: HeldConnection) -> None:
        io, client = waiter.watcher, waiter.client
        if io is None or client is None or waiter.result.ready():
            return
        io.stop()
        io.close()
        if client_hung_up(client):
            waiter.watcher = None
            waiter.result.set(Decision(Verdict.DENY, "client_gone"))
        else:  # bytes waiting for the tunnel, not a hang-up
            waiter.watcher = gevent.spawn(self._poll_hangup, waiter, client)

    @staticmethod
    def _unwatch(waiter: HeldConnection) -> None:
        watcher, waiter.watcher = waiter.watcher, None
        if isinstance(watcher, gevent.Greenlet):
            watcher.kill(block=False)
        elif watcher is not None:
            watcher.stop()
            watcher.close()

    def _poll_hangup(self, waiter: HeldConnection, client: socket.socket) -> None:
        while not waiter.result.ready():
            if client_hung_up(client):
                waiter.result.set(Decision(Verdict.DENY, "client_gone"))
                return
            gevent.sleep(HANGUP_POLL_SECONDS)

    def reevaluate(self) -> None:
        """Called after every policy change: wake the waiters whose answer is no longer 'hold'.

        The waiters of one key differ at most by the name a raw IP resolved to and the control-
        plane flag, so each key is decided once per such variant, and a key still held costs a
        look at its waiters, not a decision each. Nothing here switches greenlets (setting a
        result only schedules the waiter), so the sets are walked as they are."""
        decide = self.decide
        for waiters in list(self._waiters.values()):
            answers: dict[tuple[str | None, bool], Decision] = {}
            for waiter in waiters:
                request = waiter.request
                variant = (request.resolved_hostname, request.control_plane)
                decision = answers.get(variant)
                if decision is None:
                    decision = answers[variant] = decide(request)
                if decision.verdict is not Verdict.HOLD and not waiter.result.ready():
                    waiter.result.set(decision)

    def release_all(self, reason: str) -> None:
        """Shutting down: answer every held connection now (blocked with `reason`) rather than
        keeping it waiting through the drain for a decision nobody can make any more."""
        for waiters in list(self._waiters.values()):
            for waiter in list(waiters):
                if not waiter.result.ready():
                    waiter.result.set(Decision(Verdict.DENY, reason))

    def dismiss(self, container: str, hosts: Iterable[str], port: int) -> None:
        """A pending request was dismissed without a rule: block exactly its waiters (the next
        attempt is held again: someone is answering)."""
        for host in hosts:
            self.forget((container, host, port))
            for waiter in list(self._waiters.get((container, host, port), ())):
                if not waiter.result.ready():
                    waiter.result.set(Decision(Verdict.DENY, "dismissed"))
