"""Live connections by the rule that allowed them, so revoking a rule tears them down (docs/user-guide.md#rules-pending-requests-and-holds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent

from greyproxy.policy.index import RuleSpec


@dataclass(eq=False)
class TrackedConnection:
    rule: RuleSpec | None
    close: Callable[[], None]
    session_id: str | None = None
    opened_at: float = field(default_factory=time.time)


class ConnectionTracker:
    def __init__(self, rule_lookup: Callable[[int], RuleSpec | None], enforce_expiry: bool = True) -> None:
        # rule_lookup gives the rule as it is now (it may have been extended or deleted since).
        self.rule_lookup = rule_lookup
        self.enforce_expiry = enforce_expiry
        self._by_rule: dict[int, set[TrackedConnection]] = {}
        self._all: set[TrackedConnection] = set()
        self._sweeper: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._all)

    def add(self, conn: TrackedConnection) -> TrackedConnection:
        self._all.add(conn)
        if conn.rule is not None:
            self._by_rule.setdefault(conn.rule.id, set()).add(conn)
        return conn

    def remove(self, conn: TrackedConnection) -> None:
        self._all.discard(conn)
        if conn.rule is not None:
            conns = self._by_rule.get(conn.rule.id)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._by_rule[conn.rule.id]

    def cancel_rule(self, rule_id: int) -> int:
        conns = list(self._by_rule.get(rule_id, ()))
        for conn in conns:
            self._cancel(conn)
        return len(conns)

    def cancel_session(self, session_id: str) -> int:
        """A session ended: close what its allow-all let through (its rules' tunnels go with the rules)."""
        conns = [c for c in self._all if c.session_id == session_id]
        for conn in conns:
            self._cancel(conn)
        return len(conns)

    def _cancel(self, conn: TrackedConnection) -> None:
        self.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    def close_all(self) -> None:
        for conn in list(self._all):
            self._cancel(conn)

    def sweep_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        expired = []
        for rule_id, conns in self._by_rule.items():
            rule = self.rule_lookup(rule_id)
            if rule is not None and rule.expires_at is not None and rule.expires_at <= now:
                expired.extend(conns)
        for conn in expired:
            self._cancel(conn)
        return len(expired)

    def start(self, interval: float = 0.5) -> None:
        def loop() -> None:
            while True:
                gevent.sleep(interval)
                if self.enforce_expiry:
                    self.sweep_expired()

        self._sweeper = gevent.spawn(loop)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
