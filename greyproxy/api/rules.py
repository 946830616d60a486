"""Rule routes (§3, §5): list, create, bulk ingest, partial update, delete.

Every pattern, port, action and expiry is validated here on write (D3): a bad value is a 400
naming the field, never a 500 from a database constraint and never a silently dead rule.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import (
    bool_arg,
    choice,
    choice_arg,
    int_arg,
    int_field,
    json_array,
    json_object,
    path_id,
    rfc3339,
    str_arg,
    str_field,
)
from greyproxy.policy.patterns import (
    PatternError,
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
)
from greyproxy.services.rules import NewRule, NotFound, rule_to_json
from greyproxy.store.models import PendingRequest

bp = Blueprint("rules", __name__)

ACTIONS = ("allow", "deny")
RULE_TYPES = ("permanent", "temporary")
# Reserved `created_by` values mark layers (§3.1): a client must not forge a built-in or session rule.
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
    creator = str_field(body, "created_by", default="admin").strip() or "admin"
    if creator == RESERVED_CREATOR or creator.startswith(SESSION_CREATOR_PREFIX):
        raise ApiError(400, f"'created_by' may not be {creator!r}: 'builtin' and 'session:*' are reserved")
    return creator


def new_rule(body: Any) -> NewRule:
    if not isinstance(body, dict):
        raise ApiError(400, "a rule must be a JSON object")
    return NewRule(
        **_patterns(body),
        action=choice(str_field(body, "action", default="allow"), "action", ACTIONS),
        rule_type=choice(str_field(body, "rule_type", default="permanent"), "rule_type", RULE_TYPES),
        expires_in_seconds=int_field(body, "expires_in_seconds", minimum=1, maximum=MAX_EXPIRY_SECONDS),
        notes=str_field(body, "notes"),
        created_by=_created_by(body),
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
    return rule_to_json(rule), 201  # a duplicate returns the existing row, also 201 (§3.1)


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


@bp.post("/api/rules/ingest")
def ingest_rules() -> Any:
    # Every item is validated before the first write, so a bad item changes nothing.
    items = [_ingest_item(i, item) for i, item in enumerate(json_array())]
    rt = runtime()
    imported, skipped = rt.rules.ingest(items)
    cleaned = rt.pending.prune_matching(_allowed_now) if imported else 0
    return {"imported": imported, "skipped": skipped, "pending_cleaned": cleaned}


def _changes(body: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = _patterns(body, partial=True)
    action = choice(str_field(body, "action"), "action", ACTIONS)
    if action is not None:
        changes["action"] = action
    if "notes" in body:
        changes["notes"] = str_field(body, "notes")
    if "expires_at" in body:
        text = str_field(body, "expires_at")
        if not text:
            changes["expires_at"] = None  # "" (or null) clears the expiry: the rule becomes permanent
        else:
            changes["expires_at"] = rfc3339(text, "'expires_at'")
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
