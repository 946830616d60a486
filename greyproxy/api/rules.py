"""Rule routes (docs/user-guide.md#rules-pending-requests-and-holds): list, create, bulk ingest, partial update, delete.

Every pattern, port, action and expiry is validated here on write: a bad value is a 400
naming the field, never a 500 from a database constraint and never a silently dead rule.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import (
    bool_arg,
    bool_field,
    choice,
    choice_arg,
    int_arg,
    int_field,
    json_array,
    json_object,
    no_unknown_keys,
    path_id,
    rfc3339,
    str_arg,
    str_field,
)
from greyproxy.policy.durations import rule_duration, rule_type_for
from greyproxy.policy.patterns import (
    PatternError,
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
)
from greyproxy.services.rules import NewRule, NotFound, rule_to_json
from greyproxy.store.models import PendingRequest
from greyproxy.timeutil import utcnow

bp = Blueprint("rules", __name__)

ACTIONS = ("allow", "deny", "hold")  # hold: request-level rules only (services/rules.py)
# "glob" names the pattern dialect (some clients send it); the stored type follows the expiry.
RULE_TYPES = ("permanent", "temporary", "glob", "until_restart")
MAX_NOTES = 1024 * 1024  # free text, but not unbounded
# What a rule body may hold. The read-only fields of the Rule JSON are accepted (and ignored) so
# that a rule as GET shows it can be posted or ingested back; anything else is a 400 naming it.
RULE_KEYS = ["container_pattern", "destination_pattern", "port_pattern", "action", "rule_type", "duration",
             "expires_in_seconds", "expires_at", "notes", "created_by", "method_pattern", "path_pattern"]
READ_ONLY_KEYS = ("id", "created_at", "last_used_at", "is_active", "source", "session_id",
                  "destination_unicode", "mixed_script", "enabled")
# Reserved `created_by` values mark layers: a client must not forge a built-in or session rule.
RESERVED_CREATOR = "builtin"
SESSION_CREATOR_PREFIX = "session:"
MAX_EXPIRY_SECONDS = 100 * 365 * 86400  # far enough; beyond this the date arithmetic overflows


NORMALIZERS = {
    "container_pattern": normalize_container_pattern,
    "destination_pattern": normalize_destination_pattern,
    "port_pattern": normalize_port_pattern,
}


def _patterns(body: dict[str, Any], partial: bool = False) -> dict[str, str]:
    """The validated, stored form of the pattern fields; `partial` skips the absent ones."""
    out: dict[str, str] = {}
    for name, normalize in NORMALIZERS.items():
        value = str_field(body, name)
        if value is not None or not partial:
            # A missing container/destination is reported by its normalizer; a missing port is '*'.
            out[name] = normalize(value)
    return out


def _created_by(body: dict[str, Any]) -> str:
    creator = str_field(body, "created_by", default="admin", max_length=256).strip() or "admin"
    if creator == RESERVED_CREATOR or creator.startswith(SESSION_CREATOR_PREFIX):
        raise ApiError(400, f"'created_by' may not be {creator!r}: 'builtin' and 'session:*' are reserved")
    return creator


def _expiry_seconds(body: dict[str, Any]) -> int | None:
    """`expires_in_seconds`, or `expires_at` (RFC 3339) as seconds from now: a temporary grant
    must expire, never silently become permanent."""
    seconds = int_field(body, "expires_in_seconds", minimum=1, maximum=MAX_EXPIRY_SECONDS)
    text = str_field(body, "expires_at", max_length=64)
    if not text:
        return seconds
    if seconds is not None:
        raise ApiError(400, "give either 'expires_in_seconds' or 'expires_at', not both")
    left = (rfc3339(text, "'expires_at'") - utcnow()).total_seconds()
    if left <= 0:
        raise ApiError(400, "'expires_at' is in the past")
    return min(MAX_EXPIRY_SECONDS, max(1, round(left)))


def new_rule(body: Any) -> NewRule:
    if not isinstance(body, dict):
        raise ApiError(400, "a rule must be a JSON object")
    no_unknown_keys(body, (*RULE_KEYS, *READ_ONLY_KEYS))
    if bool_field(body, "enabled") is False:  # read back from GET, a disabled rule must not come back on
        raise ApiError(400, "'enabled': a rule is created enabled; switch it off with PUT /api/rules/{id}")
    expires = _expiry_seconds(body)
    rule_type = choice(str_field(body, "rule_type"), "rule_type", RULE_TYPES)
    duration = str_field(body, "duration", max_length=64)
    if duration is not None:  # the decision vocabulary: 7d, 90m, permanent, restart (DurationError: a 400)
        if expires is not None:
            raise ApiError(400, "give either 'duration' or 'expires_in_seconds'/'expires_at', not both")
        expires = rule_duration(duration)
        rule_type = rule_type_for(duration, expires)
    elif rule_type == "until_restart" and expires is not None:
        raise ApiError(400, "an 'until_restart' rule has no expiry: it goes when greyproxy restarts")
    if rule_type in (None, "glob"):
        rule_type = "temporary" if expires else "permanent"
    return NewRule(
        **_patterns(body),
        action=choice(str_field(body, "action", default="allow"), "action", ACTIONS),
        rule_type=rule_type,
        expires_in_seconds=expires,
        notes=str_field(body, "notes", max_length=MAX_NOTES),
        created_by=_created_by(body),
        # Request-level rules; services/rules.py validates them (an empty one = any).
        method_pattern=str_field(body, "method_pattern", default="", max_length=256),
        path_pattern=str_field(body, "path_pattern", default="", max_length=4096),
    )


@bp.get("/api/rules")
def list_rules() -> Any:
    rows, total = runtime().rules.list(
        container=str_arg("container"),
        destination=str_arg("destination"),
        action=choice_arg("action", ACTIONS),
        include_expired=bool_arg("include_expired"),
        limit=int_arg("limit", 100, minimum=1, maximum=1000),
        offset=int_arg("offset", 0),
    )
    return {"items": [rule_to_json(r) for r in rows], "total": total}


@bp.post("/api/rules")
def create_rule() -> Any:
    rule, _ = runtime().rules.create(new_rule(json_object()))
    return rule_to_json(rule), 201  # a duplicate returns the existing row, also 201


@bp.get("/api/rules/<rule_id>")
def get_rule(rule_id: str) -> Any:
    return rule_to_json(runtime().rules.get(path_id(rule_id)))


def _ingest_item(index: int, body: Any) -> NewRule:
    try:
        return new_rule(body)
    except ApiError as exc:
        raise ApiError(exc.status, f"item {index}: {exc.message}") from None
    except PatternError as exc:
        raise ApiError(400, f"item {index}: {exc}") from None


def _allowed_now(row: PendingRequest) -> bool:
    spec = runtime().policy.state.index.match(
        row.container_name, row.destination_host, row.destination_port, row.resolved_hostname
    )
    return spec is not None and spec.action == "allow"


MAX_INGEST = 10_000


@bp.post("/api/rules/ingest")
def ingest_rules() -> Any:
    # Every item is validated before the first write, so a bad item changes nothing.
    body = json_array()
    if len(body) > MAX_INGEST:  # issue 13: one call is bounded work; a bigger set goes in several
        raise ApiError(400, f"{len(body)} rules in one call: at most {MAX_INGEST} per call, send several calls")
    items = [_ingest_item(i, item) for i, item in enumerate(body)]
    rt = runtime()
    imported, skipped = rt.rules.ingest(items)
    cleaned = rt.pending.prune_matching(_allowed_now) if imported else 0
    return {"imported": imported, "skipped": skipped, "pending_cleaned": cleaned}


UPDATE_KEYS = ["container_pattern", "destination_pattern", "port_pattern", "action", "notes", "expires_at",
               "method_pattern", "path_pattern", "enabled"]


def _changes(body: dict[str, Any]) -> dict[str, Any]:
    # rule_type and created_by are in GET's shape, so a rule may be PUT back as read; they do not change.
    no_unknown_keys(body, (*UPDATE_KEYS, *READ_ONLY_KEYS, "rule_type", "created_by", "expires_in_seconds"))
    changes: dict[str, Any] = _patterns(body, partial=True)
    action = choice(str_field(body, "action"), "action", ACTIONS)
    if action is not None:
        changes["action"] = action
    for name, longest in (("method_pattern", 256), ("path_pattern", 4096)):
        if name in body:  # null or "" makes it a connection rule again
            changes[name] = str_field(body, name, default="", max_length=longest)
    if "notes" in body:
        changes["notes"] = str_field(body, "notes", max_length=MAX_NOTES)
    enabled = bool_field(body, "enabled")  # off: kept and listed, but it decides nothing
    if enabled is not None:
        changes["enabled"] = enabled
    if "expires_at" in body:
        text = str_field(body, "expires_at", max_length=64)
        if not text:
            changes["expires_at"] = None  # "" (or null) clears the expiry: the rule becomes permanent
        else:
            changes["expires_at"] = rfc3339(text, "'expires_at'")
    seconds = int_field(body, "expires_in_seconds", minimum=1, maximum=MAX_EXPIRY_SECONDS)
    if seconds is not None:
        if "expires_at" in body:
            raise ApiError(400, "give either 'expires_in_seconds' or 'expires_at', not both")
        changes["expires_at"] = utcnow() + dt.timedelta(seconds=seconds)
    return changes


@bp.put("/api/rules/<rule_id>")
def update_rule(rule_id: str) -> Any:
    rid = path_id(rule_id)
    changes = _changes(json_object())
    rules = runtime().rules
    rule = rules.update(rid, changes) if changes else rules.get(rid)
    return rule_to_json(rule)


@bp.delete("/api/rules/<rule_id>")
def delete_rule(rule_id: str) -> Any:
    rid = path_id(rule_id)
    if not runtime().rules.delete(rid):
        raise NotFound(f"rule {rid} not found")
    return {"status": "ok", "deleted": True}
