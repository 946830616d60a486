"""The connection decision (docs/user-guide.md#rules-pending-requests-and-holds) as a pure function of request and state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from .canonical import try_canonical_host
from .index import RuleIndex, RuleSpec
from .patterns import container_matcher, container_specificity

MODE_ENFORCE = "enforce"
MODE_REPORT = "report"
MODE_OPEN = "open"
MODES = (MODE_ENFORCE, MODE_REPORT, MODE_OPEN)


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    container: str
    host: str
    port: int
    resolved_hostname: str | None = None
    control_plane: bool = False  # computed by the proxy's guard (destination is one of our listeners)


@dataclass(frozen=True, slots=True)
class ModeEntry:
    """Per-container mode: container glob -> 'enforce' | 'report' | 'open'."""

    id: int
    container_pattern: str
    mode: str


@dataclass(frozen=True, slots=True)
class PolicyState:
    index: RuleIndex
    silent_mode: str | None = None  # None, 'allow' or 'deny'
    allow_all_containers: frozenset[str] = frozenset()  # containers with an active allow_all session
    modes: tuple[ModeEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    rule: RuleSpec | None = None
    would: str | None = None  # report mode: 'would_block' / 'would_hold' (verdict is then ALLOW)

    @property
    def rule_id(self) -> int | None:
        return self.rule.id if self.rule is not None else None


def container_mode(container: str, modes: Sequence[ModeEntry]) -> str:
    """Most specific matching container pattern wins, ties -> lowest id; default 'enforce'."""
    best: tuple[int, int] | None = None
    mode = MODE_ENFORCE
    for entry in modes:
        if entry.mode not in MODES or not container_matcher(entry.container_pattern)(container):
            continue
        key = (-container_specificity(entry.container_pattern), entry.id)
        if best is None or key < best:
            best, mode = key, entry.mode
    return mode


def _base_decision(req: ConnectionRequest, state: PolicyState, now: float | None) -> Decision:
    """Everything below the control-plane guard and before modes (in greyproxy's order)."""
    if state.silent_mode == "deny":
        return Decision(Verdict.DENY, "silent_deny")
    if state.silent_mode == "allow":
        return Decision(Verdict.ALLOW, "silent_allow")
    if req.container in state.allow_all_containers:
        return Decision(Verdict.ALLOW, "session_allow_all")
    rule = state.index.match(req.container, req.host, req.port, req.resolved_hostname, now)
    if rule is None:
        return Decision(Verdict.HOLD, "no_matching_rule")
    if rule.action == "deny":
        return Decision(Verdict.DENY, "denied_by_rule", rule)
    return Decision(Verdict.ALLOW, "allowed_by_rule", rule)


def _apply_mode(decision: Decision, mode: str) -> Decision:
    if decision.verdict is Verdict.ALLOW or mode == MODE_ENFORCE:
        return decision
    if mode == MODE_OPEN:
        return Decision(Verdict.ALLOW, "container_mode_open")
    # report: let it through but record what enforcement would have done
    would = "would_block" if decision.verdict is Verdict.DENY else "would_hold"
    return replace(decision, verdict=Verdict.ALLOW, reason="report_mode", would=would)


def decide(req: ConnectionRequest, state: PolicyState, now: float | None = None) -> Decision:
    # Our own control plane is unreachable through the proxy, whatever else is configured.
    if req.control_plane:
        return Decision(Verdict.DENY, "control_plane")
    # A destination with no canonical spelling is refused in every mode (it could not be
    # matched against rules, and nothing could be dialled for it).
    if try_canonical_host(req.host) is None:
        return Decision(Verdict.DENY, "bad_destination")
    # Silent deny is the global kill switch: no per-container mode loosens it.
    if state.silent_mode == "deny":
        return Decision(Verdict.DENY, "silent_deny")
    decision = _base_decision(req, state, now)
    if not state.modes:
        return decision
    return _apply_mode(decision, container_mode(req.container, state.modes))
