"""The live policy: one immutable PolicyState swapped in whole after every change, so a
decision on the connection path reads memory only (D5)."""

from __future__ import annotations

from greyproxy.policy.decide import ConnectionRequest, Decision, ModeEntry, PolicyState, decide
from greyproxy.policy.index import RuleIndex, RuleSpec


class PolicyHolder:
    def __init__(self) -> None:
        self.state = PolicyState(index=RuleIndex([]))
        self._by_id: dict[int, RuleSpec] = {}

    def rebuild(
        self,
        rules: list[RuleSpec],
        silent_mode: str | None,
        modes: tuple[ModeEntry, ...],
        current_sessions: dict[str, str] | None = None,
        allow_all: frozenset[str] = frozenset(),
    ) -> None:
        self._by_id = {r.id: r for r in rules}
        self.state = PolicyState(
            index=RuleIndex(rules, current_sessions or {}),
            silent_mode=silent_mode,
            allow_all_containers=allow_all,
            modes=modes,
        )

    def rule(self, rule_id: int) -> RuleSpec | None:
        return self._by_id.get(rule_id)

    def decide(self, request: ConnectionRequest) -> Decision:
        return decide(request, self.state)
