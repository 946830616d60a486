"""Which decoder reads which LLM endpoint: `GET /api/dissectors` and
`GET/POST/PUT/DELETE /api/endpoint-rules`.

Built-in rules are re-seeded at every start and cannot be changed here; user rules can. After a
change the assembler reloads its rules, so the next transaction is decoded by the new table.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import (
    bool_arg,
    bool_field,
    choice,
    int_field,
    json_object,
    no_unknown_keys,
    path_id,
    str_field,
)
from greyproxy.conversations.endpoints import DECODERS
from greyproxy.services.rules import NotFound
from greyproxy.store.models import EndpointRuleRow

bp = Blueprint("endpoint_rules", __name__)

# One line per decoder, ours; a decoder without a line here is still listed.
DESCRIPTIONS = {
    "anthropic": "Anthropic Messages API (/v1/messages), JSON and SSE streams",
    "openai": "OpenAI Responses API over HTTP (/v1/responses)",
    "openai-ws": "OpenAI Responses API over a WebSocket (response.create / response.completed frames)",
    "openai-chat": "OpenAI-style Chat Completions (OpenAI, OpenRouter, LiteLLM, Ollama, vLLM, ...)",
    "google-ai": "Google Gemini generateContent and streamGenerateContent",
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "WS_REQ", "WS_RESP", "*")
KEYS = ("host_pattern", "path_pattern", "method", "decoder_name", "priority", "enabled")
MAX_PATTERN = 512
# Hosts and paths are globs where only `*` is special; anything that cannot be in a URL is refused.
_HOST = re.compile(r"[a-z0-9*._\-\[\]:]+")
_PATH = re.compile(r"/[\x21-\x7e]*")


def endpoint_rule_json(row: EndpointRuleRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "host_pattern": row.host_pattern,
        "path_pattern": row.path_pattern,
        "method": row.method,
        "decoder_name": row.decoder_name,
        "priority": row.priority,
        "enabled": bool(row.enabled),
        "user_defined": bool(row.user_defined),
    }


@bp.get("/api/dissectors")
def list_dissectors() -> Any:
    return {"dissectors": [{"name": name, "description": DESCRIPTIONS.get(name, "")} for name in DECODERS]}


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    no_unknown_keys(body, KEYS)
    host = (str_field(body, "host_pattern", required=True, max_length=MAX_PATTERN)).strip().lower()
    if host in ("", "*", "%"):
        raise ApiError(400, "'host_pattern' must name a host (not empty, '*' or '%')")
    if not _HOST.fullmatch(host):
        raise ApiError(400, "'host_pattern' may hold letters, digits, '.', '-', '_', '*' and a :port")
    path = str_field(body, "path_pattern", required=True, max_length=MAX_PATTERN).strip()
    if not _PATH.fullmatch(path):
        raise ApiError(400, "'path_pattern' must start with '/' and hold no spaces or control characters")
    method = (str_field(body, "method", default="POST", max_length=16)).strip().upper()
    choice(method, "method", METHODS)
    decoder = str_field(body, "decoder_name", required=True, max_length=64)
    choice(decoder, "decoder_name", DECODERS)
    return {
        "host_pattern": host,
        "path_pattern": path,
        "method": method,
        "decoder_name": decoder,
        "priority": int_field(body, "priority", minimum=-1000, maximum=1000, default=0),
        "enabled": bool_field(body, "enabled", default=True),
    }


def _changed(verb: str, rid: int, before: Any, after: Any) -> None:
    rt = runtime()
    rt.audit.record(f"endpoint_rule.{verb}", f"endpoint_rule:{rid}", before, after)  # the audit log
    # The assembler keeps the table in memory; it re-reads it from the database.
    rt.assembler._load_rules()  # noqa: SLF001 - the conversations package offers no public reload yet


def _user_rule(rule_id: str) -> EndpointRuleRow:
    rid = path_id(rule_id)
    row = EndpointRuleRow.get_or_none(EndpointRuleRow.id == rid)
    if row is None:
        raise NotFound(f"endpoint rule {rid} not found")
    if not row.user_defined:
        raise ApiError(400, f"endpoint rule {rid} is built in and cannot be changed")
    return row


@bp.get("/api/endpoint-rules")
def list_endpoint_rules() -> Any:
    query = EndpointRuleRow.select().order_by(EndpointRuleRow.priority.desc(), EndpointRuleRow.id)
    if not bool_arg("include_disabled"):
        query = query.where(EndpointRuleRow.enabled == True)  # noqa: E712 - peewee expression
    return {"rules": [endpoint_rule_json(r) for r in query]}


@bp.post("/api/endpoint-rules")
def create_endpoint_rule() -> Any:
    row = EndpointRuleRow.create(**_fields(json_object()), user_defined=True)
    after = endpoint_rule_json(row)
    _changed("create", row.id, None, after)
    return after, 201


@bp.put("/api/endpoint-rules/<endpoint_rule_id>")
def replace_endpoint_rule(endpoint_rule_id: str) -> Any:
    row = _user_rule(endpoint_rule_id)
    fields = _fields(json_object())
    EndpointRuleRow.update(**fields).where(EndpointRuleRow.id == row.id).execute()
    after = endpoint_rule_json(EndpointRuleRow.get_by_id(row.id))
    _changed("update", row.id, endpoint_rule_json(row), after)
    return {"ok": True, "rule": after}


@bp.delete("/api/endpoint-rules/<endpoint_rule_id>")
def delete_endpoint_rule(endpoint_rule_id: str) -> Any:
    row = _user_rule(endpoint_rule_id)
    EndpointRuleRow.delete().where(EndpointRuleRow.id == row.id).execute()
    _changed("delete", row.id, endpoint_rule_json(row), None)
    return {"ok": True}
