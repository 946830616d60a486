"""Answering held HTTP requests (docs/request-rules.md): once, for a duration, or as a rule.

`once` answers this request only. Any other duration (`1h`, `7d`, `permanent`, a Go duration)
also writes a request-level rule for the same container, host, port, method and path (or the
`method_pattern` / `path_pattern` given), allow or deny, through the one rule service: the rule
is validated, audited and patched into the index like any other, which also answers every
other held request it matches. A deny answers the client 403 with the reason text given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greyproxy.policy.durations import rule_duration, rule_type_for
from greyproxy.policy.scopes import patterns_for_scope
from greyproxy.services.rules import Conflict, NewRule, NotFound, RuleService, rule_to_json, validated

if TYPE_CHECKING:
    from greyproxy.proxy.request_hold import RequestHolds

ONCE = "once"
MAX_REASON = 1000


def clean_reason(text: str | None) -> str | None:
    """The reason goes to the agent in a text body: printable characters and newlines only."""
    if text is None:
        return None
    text = "".join(c if c.isprintable() or c == "\n" else " " for c in text[:MAX_REASON]).strip()
    return text or None


def answer_request(holds: RequestHolds, rules: RuleService, request_id: int, allow: bool, duration: str | None = None,
                   reason: str | None = None, method_pattern: str | None = None, path_pattern: str | None = None,
                   actor: str = "api") -> dict[str, Any]:
    """{request, rule}; NotFound for an unknown id, Conflict when it is no longer waiting."""
    held = holds.get(request_id)
    if held is None:
        raise NotFound(f"held request {request_id} not found")
    if held.status != "pending":
        raise Conflict(f"held request {request_id} is no longer waiting (it was {held.status})")
    duration = (duration or ONCE).strip()
    rule_json = None
    if duration.lower() != ONCE:
        seconds = rule_duration(duration)  # DurationError: a 400 before anything changes
        container_p, dest_p, port_p = patterns_for_scope("exact", held.container, held.host, held.port)
        new = validated(NewRule(
            container_pattern=container_p, destination_pattern=dest_p, port_pattern=port_p,
            action="allow" if allow else "deny", rule_type=rule_type_for(duration, seconds),
            expires_in_seconds=seconds, notes=f"held request {held.method} {held.url}"[:500], created_by=actor,
            method_pattern=method_pattern or held.method, path_pattern=path_pattern or held.path,
        ))
        rule, _ = rules.create(new)
        rule_json = rule_to_json(rule)
    answered = holds.answer(request_id, allow, actor, clean_reason(reason))
    if answered is None and rule_json is None:
        raise Conflict(f"held request {request_id} is no longer waiting")
    return {"request": held.to_json(), "rule": rule_json}
