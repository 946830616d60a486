"""Which rule decides, and why: for a connection (container × destination × port) and, given a
method or a path, for one HTTP request on it (docs/request-rules.md). Used by
`POST /api/rules/test`, `greyproxy rules test` and the dashboard's rule tester; it reads the
same in-memory policy the proxy decides with, so its answer is the proxy's answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greyproxy.policy.canonical import PatternError, try_canonical_host
from greyproxy.policy.decide import ConnectionRequest, Decision
from greyproxy.policy.request_decide import decide_request
from greyproxy.policy.request_rules import RequestQuery, canonical_path
from greyproxy.services.rules import rule_to_json
from greyproxy.store.models import Rule

if TYPE_CHECKING:
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.services.policy_state import PolicyHolder


def _rule_json(decision: Decision) -> dict[str, Any] | None:
    spec = decision.rule
    if spec is None:
        return None
    row = Rule.get_or_none(Rule.id == spec.id)
    if row is not None:
        return rule_to_json(row)
    return {"id": spec.id, "container_pattern": spec.container_pattern,  # deleted a moment ago
            "destination_pattern": spec.destination_pattern, "port_pattern": spec.port_pattern,
            "action": spec.action, "method_pattern": spec.method_pattern or None,
            "path_pattern": spec.path_pattern or None}


def explain(policy: PolicyHolder, guard: ControlPlaneGuard, container: str, destination: str, port: int,
            method: str | None = None, path: str | None = None) -> dict[str, Any]:
    """{decision: allow|deny|hold, rule, reason, level: connection|request, would?, connection?}."""
    host = try_canonical_host(destination)
    if host is None:
        raise PatternError(f"destination: {destination!r} is not a host name or IP address")
    connection = policy.decide(ConnectionRequest(
        container=container, host=host, port=port, control_plane=guard.is_control_plane(host, port)))
    decision, level = connection, "connection"
    if method is not None or path is not None:
        if path is not None and not path.startswith("/"):
            raise PatternError(f"path: {path!r} must start with '/'")
        query = RequestQuery(container, host, port, (method or "GET").upper(), canonical_path(path or "/"))
        decision = decide_request(connection, query, policy.state)
        level = "request" if decision is not connection else "connection"
    out: dict[str, Any] = {"decision": decision.verdict.value, "rule": _rule_json(decision),
                           "reason": decision.reason, "level": level}
    if decision.would:
        out["would"] = decision.would
    if level == "request":
        out["connection"] = {"decision": connection.verdict.value, "rule": _rule_json(connection),
                             "reason": connection.reason}
    return out
