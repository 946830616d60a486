"""The live policy (docs/decisions.md#decisions-on-the-connection-path): a decision on the connection path reads memory only.

Issue 13: a policy change no longer rebuilds everything. The rule index is patched in place
(`RuleChange`: rules added/replaced or removed by id, a session's new expiry after a heartbeat),
which costs one bucket, not a pass over every rule, and the small parts (silent mode, container
modes, current sessions, allow-all containers) are swapped in a new `PolicyState` that shares
the index. A full rebuild from a list of rules is left for the start, an ingest and a caller
that cannot say what changed; `counters()` shows how many of each were made (in /api/metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from greyproxy.offhub import in_worker
from greyproxy.policy.decide import ConnectionRequest, Decision, ModeEntry, PolicyState, decide
from greyproxy.policy.index import RuleIndex, RuleSpec


@dataclass(frozen=True, slots=True)
class RuleChange:
    """What a committed rule write changed. `full` asks for a rebuild from the store."""

    added: tuple[RuleSpec, ...] = ()  # new rules, or new versions of rules with the same id
    removed: tuple[int, ...] = ()
    extend_session: tuple[str, float | None] | None = None  # (session id, new expiry, epoch)
    full: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.extend_session or self.full)


# (silent mode, container modes, current sessions, allow-all containers): the policy's small parts
Extras = tuple[str | None, tuple[ModeEntry, ...], Mapping[str, str] | None, frozenset[str]]


def _patch(index: RuleIndex, change: RuleChange) -> None:
    for rule_id in change.removed:
        index.remove(rule_id)
    for spec in change.added:
        index.add(spec)
    if change.extend_session is not None:
        index.extend_session(*change.extend_session)


class PolicyHolder:
    def __init__(self) -> None:
        self.state = PolicyState(index=RuleIndex([]))
        self._journals: list[list[RuleChange]] = []  # one per rebuild under way
        self._started_rebuilds = 0  # the newest rebuild's number: only it may swap its index in
        self.rebuilds = 0
        self.patches = 0
        self.session_extensions = 0
        self.refreshes = 0
        self.last_rebuild_seconds = 0.0

    def rebuild(self, load: Callable[[], list[RuleSpec]], extras: Callable[[], Extras]) -> None:
        """A new index from the store. Reading the rules (`load`, in the database thread) and
        building the index (in a worker thread) both leave the hub serving connections, so a
        patch can be applied meanwhile: each is journaled and replayed onto the new index before
        it replaces the old one, and nothing committed is lost. `extras` (silent mode, container
        modes, current sessions, allow-all containers) is read last, still journaled, so it is
        current; from the replay to the swap nothing yields, so no patch can fall between the
        old index and the new one."""
        started = time.perf_counter()
        self._started_rebuilds += 1
        number = self._started_rebuilds
        journal: list[RuleChange] = []
        self._journals.append(journal)
        try:
            index = in_worker(RuleIndex, load())
            silent_mode, modes, current_sessions, allow_all = extras()
        finally:
            self._journals.remove(journal)
        if number != self._started_rebuilds:
            # A newer rebuild read the store after this one (for a change this read may predate,
            # such as an ingest, which comes as a rebuild, not a patch): only its index may go in,
            # whichever finishes first, or the rules it brought would vanish meanwhile.
            return
        for change in journal:
            _patch(index, change)
        index.set_sessions(current_sessions or {})
        self.state = PolicyState(index=index, silent_mode=silent_mode, allow_all_containers=allow_all, modes=modes)
        self.rebuilds += 1
        self.last_rebuild_seconds = time.perf_counter() - started

    def apply(self, change: RuleChange) -> None:
        """Patch the index in place (the hub runs no lookup meanwhile: nothing here yields)."""
        _patch(self.state.index, change)
        for journal in self._journals:  # a rebuild under way replays it onto its new index
            journal.append(change)
        if change.added or change.removed:
            self.patches += 1
        if change.extend_session is not None:
            self.session_extensions += 1

    def refresh(
        self,
        silent_mode: str | None,
        modes: tuple[ModeEntry, ...],
        current_sessions: Mapping[str, str] | None = None,
        allow_all: frozenset[str] = frozenset(),
    ) -> None:
        """Everything but the rules, swapped in a new state that keeps the index."""
        index = self.state.index
        index.set_sessions(current_sessions or {})
        self.state = PolicyState(index=index, silent_mode=silent_mode, allow_all_containers=allow_all, modes=modes)
        self.refreshes += 1

    def counters(self) -> dict[str, Any]:
        return {
            "rules": len(self.state.index),
            "rebuilds": self.rebuilds,
            "patches": self.patches,
            "session_extensions": self.session_extensions,
            "refreshes": self.refreshes,
            "last_rebuild_seconds": round(self.last_rebuild_seconds, 6),
        }

    def rule(self, rule_id: int) -> RuleSpec | None:
        return self.state.index.get(rule_id)

    def decide(self, request: ConnectionRequest) -> Decision:
        return decide(request, self.state)
