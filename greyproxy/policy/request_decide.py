"""The decision on one HTTP request (docs/request-rules.md), as a pure function.

Host rules come first and are not overridden: a request is only judged by request-level rules
once its connection is allowed. A connection that is denied or held never reaches this point;
the request rules then say allow, deny or hold for this one request, and no matching request
rule leaves the connection's allow in force. Silent allow lets every request through; a
container in `report` mode has a deny or hold recorded as `would_block` / `would_hold` and let
through, one in `open` mode is let through.
"""

from __future__ import annotations

from dataclasses import replace

from .decide import MODE_ENFORCE, MODE_OPEN, Decision, PolicyState, Verdict, container_mode
from .request_rules import RequestQuery

REASONS = {"allow": "allowed_by_request_rule", "deny": "denied_by_request_rule", "hold": "held_by_request_rule"}
VERDICTS = {"allow": Verdict.ALLOW, "deny": Verdict.DENY, "hold": Verdict.HOLD}


def decide_request(connection: Decision, q: RequestQuery, state: PolicyState, now: float | None = None) -> Decision:
    """`connection` is the decision for the connection the request travels on (as it is now)."""
    if connection.verdict is not Verdict.ALLOW or connection.reason == "silent_allow":
        return connection
    if not state.index.has_request_rules:
        return connection
    rule = state.index.match_request(q, now)
    if rule is None:
        return connection
    decision = Decision(VERDICTS[rule.action], REASONS[rule.action], rule)
    if decision.verdict is Verdict.ALLOW or not state.modes:
        return decision
    mode = container_mode(q.container, state.modes)
    if mode == MODE_ENFORCE:
        return decision
    if mode == MODE_OPEN:
        return Decision(Verdict.ALLOW, "container_mode_open")
    would = "would_block" if decision.verdict is Verdict.DENY else "would_hold"
    return replace(decision, verdict=Verdict.ALLOW, reason="report_mode", would=would)
