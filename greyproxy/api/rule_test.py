"""`POST /api/rules/test {container, destination, port, method?, path?}` → `{decision, rule,
reason, level}`: which rule decides a connection, or one request on it, and why
(services/rule_tester.py; docs/request-rules.md)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import int_field, json_object, str_field
from greyproxy.services.rule_tester import explain

bp = Blueprint("rule_test", __name__)
KEYS = {"container", "destination", "port", "method", "path"}


@bp.post("/api/rules/test")
def rules_test() -> Any:
    body = json_object()
    unknown = sorted(set(body) - KEYS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    container = str_field(body, "container", required=True, max_length=256)
    destination = str_field(body, "destination", required=True, max_length=1024)
    port = int_field(body, "port", minimum=1, maximum=65535, default=443)
    method = str_field(body, "method", max_length=64)
    path = str_field(body, "path", max_length=8192)
    if not container.strip() or not destination.strip():
        raise ApiError(400, "'container' and 'destination' must not be empty")
    rt = runtime()
    return explain(rt.policy, rt.guard, container, destination.strip(), port, method, path)
