"""The OpenAPI 3.1 document of the control plane (docs/decisions.md#audit-observability-traffic-tools), `GET /api/openapi.json`, and a plain
server-rendered reference page built from it, `GET /docs` (no Swagger UI, nothing fetched).

The document is written here, compactly, with helpers for the shapes that recur; a test walks
the app's URL map and fails for any `/api/...`, `/ws` or `/metrics` route that is not described,
so adding a route without describing it breaks the build.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, make_response, render_template

from greyproxy import __version__
from greyproxy.api.context import runtime, settings_store
from greyproxy.api.endpoint_rules import METHODS as ENDPOINT_METHODS
from greyproxy.api.pages import PAGES, WEB_DIR, _secured
from greyproxy.api.parse import KEY_PATTERN
from greyproxy.api.pending import MAX_BULK_IDS
from greyproxy.api.rules import READ_ONLY_KEYS
from greyproxy.conversations.endpoints import DECODERS

bp = Blueprint("openapi", __name__, template_folder=str(WEB_DIR / "templates"))

JSON = "application/json"


# -- schema helpers --------------------------------------------------------------------------
def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def s(type_: str | list[str], description: str | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, **kw}
    if description:
        out["description"] = description
    return out


def obj(props: dict[str, Any], required: tuple[str, ...] = (), extra: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if not extra:
        out["additionalProperties"] = False
    return out


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def page_of(item: str) -> dict[str, Any]:
    return obj({"items": arr(ref(item)), "total": s("integer")}, ("items", "total"))


STR, INT, BOOL, NUM = s("string"), s("integer"), s("boolean"), s("number")
NSTR, NINT = s(["string", "null"]), s(["integer", "null"])
PTR = s(["string", "null"], "reverse DNS name of a raw-IP destination: shown, never matched by rules")
TIME = s("string", format="date-time")
NTIME = s(["string", "null"], format="date-time")
OK = obj({"status": s("string", enum=["ok"])}, extra=True)
# Destinations are stored and matched as punycode; these two are for the humans reading them.
UNICODE = s(["string", "null"], "Unicode form of an internationalised destination (display only; null when it is "
            "plain ASCII)")
MIXED = s("boolean", "a label mixes letters of different scripts (e.g. Latin and Cyrillic): a possible look-alike")
ANY_OBJECT = {"type": "object", "additionalProperties": True}
# A string id: sessions (chosen by the client) and credentials.
KEY = s("string", "1-128 letters, digits, '.', '_', '-'", pattern=f"^{KEY_PATTERN.pattern}$")
# Fields of the Rule JSON a client may send back unchanged (ignored on write).
READ_ONLY_RULE_FIELDS = {k: {} for k in READ_ONLY_KEYS}

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": s("string", "what is wrong, in one line")}, ("error",)),
    "Rule": obj({
        "id": INT, "container_pattern": STR, "destination_pattern": STR, "port_pattern": STR,
        "rule_type": s("string", "'until_restart': no expiry, removed when greyproxy next starts",
                       enum=["permanent", "temporary", "until_restart"]), "action": s("string", enum=["allow", "deny", "hold"]),
        "method_pattern": s(["string", "null"], "request-level rule: methods, e.g. 'POST,PUT' (null: any)"),
        "path_pattern": s(["string", "null"], "request-level rule: canonical path, '*' any run (null: any)"),
        "created_at": TIME, "expires_at": NTIME, "last_used_at": NTIME, "created_by": STR, "notes": NSTR,
        "session_id": NSTR, "is_active": BOOL, "source": s("string", enum=["builtin", "session", "global"]),
        "destination_unicode": UNICODE, "mixed_script": MIXED,
        "enabled": s("boolean", "false: kept and listed, but it decides nothing (PUT enabled to switch)"),
    }, ("id", "container_pattern", "destination_pattern", "port_pattern", "action")),
    "NewRule": obj({
        "container_pattern": STR, "destination_pattern": STR, "port_pattern": s("string", default="*"),
        "action": s("string", "'hold' needs a method_pattern or path_pattern", enum=["allow", "deny", "hold"],
                     default="allow"),
        "rule_type": s("string", "informational: 'temporary' when it expires, else 'permanent'; 'glob' is "
                       "accepted and stored as one of those; 'until_restart' (no expiry) goes when greyproxy "
                       "next starts", enum=["permanent", "temporary", "glob", "until_restart"]),
        "duration": s("string", "instead of an expiry: permanent, restart (until greyproxy restarts), 1h, 7d, "
                      "30d or a Go duration such as 90m"),
        "expires_in_seconds": s("integer", minimum=1),
        "expires_at": s("string", "RFC 3339, in the future; not together with expires_in_seconds",
                        format="date-time"),
        "notes": STR, "created_by": STR, "method_pattern": STR, "path_pattern": STR,
        **READ_ONLY_RULE_FIELDS,
    }, ("container_pattern", "destination_pattern"), extra=False),
    "RuleChanges": obj({
        "container_pattern": STR, "destination_pattern": STR, "port_pattern": STR,
        "action": s("string", enum=["allow", "deny"]), "notes": NSTR,
        "expires_at": s(["string", "null"], "RFC 3339; empty or null makes the rule permanent"),
        "expires_in_seconds": s("integer", "sets expires_at to now + this", minimum=1),
        "method_pattern": NSTR, "path_pattern": NSTR, "rule_type": {}, "created_by": {}, **READ_ONLY_RULE_FIELDS,
    }, extra=False),
    "EndpointRule": obj({
        "id": INT, "host_pattern": STR, "path_pattern": STR, "method": STR, "decoder_name": STR,
        "priority": INT, "enabled": BOOL, "user_defined": BOOL,
    }, ("id", "host_pattern", "path_pattern", "method", "decoder_name")),
    "NewEndpointRule": obj({
        "host_pattern": s("string", "host glob (only * is special); not empty, '*' or '%'", minLength=1),
        "path_pattern": s("string", "path glob, starts with '/'", pattern="^/"),
        "method": s("string", enum=list(ENDPOINT_METHODS), default="POST"),
        "decoder_name": s("string", enum=list(DECODERS)),
        "priority": s("integer", minimum=-1000, maximum=1000, default=0), "enabled": s("boolean", default=True),
    }, ("host_pattern", "path_pattern", "decoder_name"), extra=False),
    "Version": obj({"engine": STR, "version": STR, "api_version": STR, "capabilities": arr(STR),
                    "mitm_enabled": BOOL, "path_prefix": STR},
                   ("engine", "version", "api_version", "capabilities")),
    "Pending": obj({
        "id": INT, "container_name": STR, "container_id": STR, "destination_host": STR, "destination_port": INT,
        "resolved_hostname": NSTR, "ptr_hostname": PTR, "first_seen": TIME, "last_seen": TIME, "attempt_count": INT,
        "waiter_count": s("integer", "connections held open for it right now"),
        "destination_unicode": UNICODE, "mixed_script": MIXED,
    }, ("id", "container_name", "destination_host", "destination_port")),
    "Decision": obj({
        "scope": s("string", enum=["exact", "any_port", "subdomain_wildcard", "all_containers"]),
        "duration": s("string", "once, 1h, 12h, 24h, 7d, 30d, permanent, restart (until greyproxy restarts) or a Go duration such as 30m"),
        "notes": STR,
    }),
    "RequestLog": obj({
        "id": INT, "timestamp": TIME, "container_name": STR, "container_id": NSTR, "destination_host": STR,
        "destination_port": NINT, "resolved_hostname": NSTR, "ptr_hostname": PTR, "dialed_ip": NSTR, "method": NSTR,
        "result": s("string", enum=["allowed", "blocked"]), "rule_id": NINT, "response_time_ms": NINT,
        "reason": NSTR, "would": NSTR, "mitm_skip_reason": NSTR, "rule_summary": STR,
        "destination_unicode": UNICODE, "mixed_script": MIXED,
    }, ("id", "timestamp", "container_name", "destination_host", "result")),
    "Transaction": obj({
        "id": INT, "timestamp": TIME, "container_name": STR, "destination_host": STR, "destination_port": INT,
        "method": STR, "url": STR, "request_headers": ANY_OBJECT, "request_body_size": INT,
        "request_body_truncated": BOOL, "request_content_type": NSTR, "status_code": NINT,
        "response_headers": ANY_OBJECT, "response_body_size": INT, "response_body_truncated": BOOL,
        "response_content_type": NSTR, "duration_ms": NINT, "rule_id": NINT, "result": NSTR,
        "substituted_credentials": {}, "session_id": NSTR, "replay_of": NINT,
        "recording_id": s(["integer", "null"], "the capture recording it belongs to"),
        "middleware_actions": s("array", "what external middlewares did to this exchange",
                                items=obj({"middleware": STR, "hook": STR, "action": STR, "tags": {}})),
        "request_body": s(["string", "null"], "only on GET /api/transactions/{id}"),
        "response_body": s(["string", "null"], "only on GET /api/transactions/{id}"),
    }, ("id", "timestamp", "method", "url")),
    "Recording": obj({
        "id": INT, "name": STR, "container_pattern": NSTR, "source": s("string", enum=["live", "har"]),
        "started_at": TIME, "stopped_at": NTIME, "active": BOOL, "transaction_count": INT,
    }, ("id", "name", "source", "started_at", "active")),
    "Conversation": obj({
        "id": STR, "model": NSTR, "container_name": STR, "provider": NSTR, "client_name": NSTR,
        "started_at": TIME, "ended_at": TIME, "turn_count": INT, "system_prompt": NSTR,
        "system_prompt_summary": NSTR, "first_prompt": NSTR, "parent_conversation_id": NSTR,
        "last_turn_has_response": BOOL, "metadata": ANY_OBJECT, "request_ids": arr(STR), "incomplete": BOOL,
        "incomplete_reason": NSTR,
        "turns": s("array", "only on GET /api/conversations/{id}", items=obj({
            "turn_number": INT, "user_prompt": NSTR, "steps": arr(ANY_OBJECT), "api_calls_in_turn": INT,
            "request_ids": arr(STR), "timestamp": TIME, "timestamp_end": TIME, "duration_ms": NINT, "model": NSTR})),
    }, ("id", "container_name", "turn_count")),
    "AuditEntry": obj({
        "id": INT, "timestamp": TIME, "actor": STR, "kind": STR, "target": NSTR, "before": {}, "after": {},
        "prev_hash": STR, "hash": s("string", "SHA-256 over prev_hash and this entry (greyproxy audit verify)"),
    }, ("id", "timestamp", "actor", "kind", "hash")),
    "Middleware": obj({
        "url": s(["string", "null"], "the WebSocket URL, or the stdio command"),
        "kind": s("string", enum=["ws", "stdio"]), "protocol_version": NINT,
        "name": STR, "transport": s("string", enum=["stdio", "websocket"]), "target": STR, "connected": BOOL,
        "version": NINT, "hooks": arr(ANY_OBJECT), "max_body_bytes": INT, "on_disconnect": STR,
        "timeout_ms": INT, "last_error": NSTR, "requests": INT, "denied": INT, "rewritten": INT, "failures": INT,
    }, ("name", "transport", "connected")),
    "MiddlewareEvent": obj({
        "id": INT, "timestamp": TIME, "middleware": STR, "hook": STR, "action": STR, "status_code": NINT,
        "reason": NSTR, "tags": {}, "container_name": STR, "destination_host": STR, "method": STR, "url": STR,
    }, ("id", "timestamp", "middleware", "action")),
    "Session": obj({
        "session_id": STR, "container_name": STR, "credential_count": INT, "credential_labels": arr(STR),
        "metadata": ANY_OBJECT, "ttl_seconds": INT, "created_at": TIME, "expires_at": TIME,
        "last_heartbeat": NTIME, "substitution_count": INT, "allow_all": BOOL, "identity_bound": BOOL,
    }, ("session_id", "container_name")),
    "NewSession": obj({
        "session_id": KEY, "container_name": s("string", maxLength=256), "mappings": ANY_OBJECT,
        "metadata": ANY_OBJECT,
        "ttl_seconds": INT, "global_credentials": arr(STR),
        "network_rules": arr(obj({"destination_pattern": STR, "port_pattern": STR,
                                  "action": s("string", enum=["allow", "deny"]), "notes": STR})),
        "allow_all": BOOL, "proxy_token": s("string", "required as the proxy password from then on"),
    }, ("session_id", "container_name")),
    "Credential": obj({"id": STR, "label": STR, "placeholder": STR,
                       "value_preview": s("string", "at most the first 4 characters, nothing under 12"),
                       "hosts": arr(STR),
                       "containers": s("array", "container patterns that may use it; empty = any", items=STR),
                       "created_at": TIME}),
    "ContainerMode": obj({"id": INT, "container_pattern": STR, "mode": s("string", enum=["enforce", "report", "open"]),
                          "created_at": NTIME, "source": s("string", enum=["config", "api"])}),
    "Settings": obj({
        "theme": s("string", enum=["system", "light", "dark"]),
        "notifications": obj({"enabled": BOOL, "available": BOOL, "backend": STR, "installHint": STR,
                              "supportsActions": BOOL, "activeClaims": INT}),
        "mitm": obj({"enabled": BOOL, "bypass": arr(STR), "certGenerated": BOOL, "certExpiry": STR,
                     "certPath": STR, "installed": BOOL}),
        "conversations": obj({"enabled": BOOL}),
        "redactedHeaders": arr(STR),
    }),
    "SettingsUpdate": obj({
        "theme": s("string", enum=["system", "light", "dark"]),
        "mitmEnabled": s("boolean", "flat form of mitm.enabled"),
        "notificationsEnabled": s("boolean", "flat form of notifications.enabled"),
        "conversationsEnabled": s("boolean", "flat form of conversations.enabled"),
        "notifications": obj({"enabled": BOOL}, extra=False),
        "mitm": obj({"enabled": BOOL, "bypass": arr(STR)}, extra=False),
        "conversations": obj({"enabled": BOOL}, extra=False),
        "redactedHeaders": s("array", "custom patterns (replaces the stored list)", items=STR),
    }, extra=False),
    "Health": obj({"service": STR, "version": STR, "status": s("string", enum=["ok", "unhealthy"]),
                   "ports": ANY_OBJECT,
                   "upstream": s("object", "the upstream proxy, when one is configured: proxy_url (no password), "
                                 "state unknown|up|down, fail_open, resolve, last_error, tunnels, failures")},
                  ("status",)),
    "HeldRequest": obj({
        "id": INT, "container_name": STR, "destination_host": STR, "destination_port": INT, "method": STR,
        "url": s("string", "query values redacted"), "path": s("string", "canonical path, as rules match it"),
        "headers": s("object", "name -> values, secrets [REDACTED]"), "body_preview": NSTR, "body_size": NINT,
        "rule_id": NINT, "resolved_hostname": NSTR,
        "status": s("string", enum=["pending", "allowed", "denied", "expired", "gone"]),
        "created_at": TIME, "decided_at": NTIME, "decided_by": NSTR, "reason": NSTR,
    }, ("id", "method", "url", "status")),
    "Metrics": obj({
        "uptime_seconds": NUM,
        "connections": obj({"allowed": INT, "blocked": INT, "by_reason": ANY_OBJECT}),
        "decision_seconds": ANY_OBJECT, "hold_seconds": ANY_OBJECT, "held_connections": NINT,
        "pending_requests": NINT, "open_tunnels": NINT, "bytes_relayed": obj({"up": INT, "down": INT}),
        "mitm_handshakes": ANY_OBJECT, "db_write_batches": ANY_OBJECT, "db_rows_written": ANY_OBJECT,
        "docker_lookups": ANY_OBJECT, "reloads": ANY_OBJECT,
    }),
    "CertStatus": obj({"generated": BOOL, "subject": STR, "expiresAt": STR, "certPath": STR, "installed": BOOL}),
    "SilentMode": obj({"active": BOOL, "mode": s("string", enum=["allow", "deny"]), "expires_at": TIME,
                       "remaining_seconds": INT}, ("active",)),
    "MaintenanceProgress": obj({"task": STR, "processed": INT, "total": INT, "done": BOOL}),
}


# -- operation helpers -------------------------------------------------------------------------
def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        out["description"] = description
    return out


def path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or s("integer", minimum=1)}


PAGING = [query("limit", s("integer", minimum=1, maximum=1000)), query("offset", s("integer", minimum=0))]
TIME_RANGE = [query("from_date", TIME), query("to_date", TIME)]


def op(summary: str, tag: str, response: dict[str, Any] | None = None, *, status: str = "200",
       params: list[dict[str, Any]] | None = None, request: dict[str, Any] | None = None,
       errors: tuple[int, ...] = (), media: str = JSON, public: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": "OK" if status == "200" else "Created" if status == "201" else "Result"}
    }
    if response is not None:
        responses[status]["content"] = {media: {"schema": response}}
    for code in (*errors, *(() if public else (401,))):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        out["parameters"] = params
    if request is not None:
        out["requestBody"] = request
    if public:
        out["security"] = []
    return out


ERROR_TEXT = {400: "Bad input (the message says which field)", 401: "Missing or invalid API token",
              403: "Refused by the rules (the body's `reason` says which)",
              404: "Not found", 409: "Conflict", 413: "Request body too large",
              415: "Content-Type must be application/json", 502: "Upstream unreachable or answered badly",
              503: "Unavailable"}


def build_spec() -> dict[str, Any]:
    rid, pid, tid = path_param("rule_id"), path_param("pending_id"), path_param("txn_id")
    sid = path_param("session_id", KEY)
    log_filters = [query("container", STR), query("destination", STR),
                   query("result", s("string", enum=["allowed", "blocked"])),
                   query("search", s("string", maxLength=256), "substring of container, destination, resolved "
                         "name, dialled IP or reason"),
                   query("has_error", BOOL, "only connections that failed (allowed but not reached: no "
                         "dialed_ip; dns_failure, upstream_unreachable; mitm_error), or only the others"),
                   query("reason", STR, "exact reason, e.g. denied_by_rule")]
    txn_filters = [query("container", STR), query("destination", STR), query("method", STR),
                   query("session_id", STR), *TIME_RANGE,
                   query("status_min", s("integer", minimum=0, maximum=999)),
                   query("status_max", s("integer", minimum=0, maximum=999)),
                   query("has_error", BOOL, "no answer, or a status of 400 or more (false: the others)"),
                   query("is_websocket", BOOL, "WebSocket frames and their 101 upgrades (false: the others)"),
                   query("search", s("string", maxLength=1000), "substring of the URL, destination or container"),
                   query("path_contains", s("string", maxLength=1000), "substring of the URL's path (not the "
                         "host, not the query)"),
                   query("recording_id", s("integer", minimum=1), "traffic of one capture recording")]
    rec_id = path_param("recording_id")
    paths: dict[str, dict[str, Any]] = {
        "/api/health": {"get": op("Liveness, version and ports (no token needed)", "operations", ref("Health"),
                                  errors=(503,), public=True)},
        "/api/metrics": {"get": op("Metrics as JSON (the figures of /metrics)", "operations", ref("Metrics"))},
        "/metrics": {"get": op("Metrics in the Prometheus text format", "operations", STR,
                               media="text/plain; version=0.0.4")},
        "/api/openapi.json": {"get": op("This document", "operations", ANY_OBJECT)},
        "/api/audit": {"get": op("The audit log of control-plane changes, newest first", "operations",
                                 page_of("AuditEntry"), errors=(400,), params=[
                                     query("since", TIME), query("until", TIME),
                                     query("kind", s("string", "exact kind, or a family such as 'rule'")),
                                     query("actor", s("string", "token, dashboard, cli, ws:<client>, signal, system")),
                                     *PAGING])},
        "/api/middlewares": {"get": op("External middlewares: connection, hooks and counters "
                                       "(`items` repeats `middlewares`)", "middleware",
                                       obj({"middlewares": arr(ref("Middleware")), "items": arr(ref("Middleware")),
                                            "total": INT}, ("middlewares",)))},
        "/api/dissectors": {"get": op("The conversation decoders", "conversations",
                                      obj({"dissectors": arr(obj({"name": STR, "description": STR}))},
                                          ("dissectors",)))},
        "/api/endpoint-rules": {
            "get": op("Which decoder reads which URL; enabled rules unless include_disabled=true",
                      "conversations", obj({"rules": arr(ref("EndpointRule"))}, ("rules",)), errors=(400,),
                      params=[query("include_disabled", BOOL)]),
            "post": op("Add a user rule", "conversations", ref("EndpointRule"), status="201",
                       request=body(ref("NewEndpointRule")), errors=(400, 415)),
        },
        "/api/endpoint-rules/{endpoint_rule_id}": {
            "put": op("Replace a user rule (built-in rules cannot be changed: 400)", "conversations",
                      obj({"ok": BOOL, "rule": ref("EndpointRule")}), params=[path_param("endpoint_rule_id")],
                      request=body(ref("NewEndpointRule")), errors=(400, 404, 415)),
            "delete": op("Delete a user rule (built-in rules: 400)", "conversations", obj({"ok": BOOL}),
                         params=[path_param("endpoint_rule_id")], errors=(400, 404)),
        },
        "/api/version": {"get": op("Engine version, API version and capabilities", "operations", ref("Version"))},
        "/api/maintenance/status": {"get": op(
            "Is a conversation rebuild due, and the last progress of each background job", "maintenance",
            obj({"assembler_version_current": STR, "assembler_version_stored": NSTR, "needs_rebuild": BOOL,
                 "tasks": obj({"redact_headers": ref("MaintenanceProgress"),
                               "scrub_secrets": ref("MaintenanceProgress")})},
                ("assembler_version_current", "needs_rebuild")))},
        "/api/middlewares/events": {"get": op(
            "What middlewares did: deny, block, rewrite, tagged passes, errors (newest first)", "middleware",
            page_of("MiddlewareEvent"), errors=(400,),
            params=[query("middleware", STR), query("action", STR), query("container", STR),
                    query("hook", s("string", enum=["http-request", "http-response"])), *PAGING])},
        "/api/dashboard": {"get": op("Dashboard figures for a period", "logs", ANY_OBJECT, errors=(400,), params=[
            query("period", s("string", enum=["today", "7d", "30d"])),
            query("group_by", STR), query("recent_limit", s("integer", minimum=0, maximum=100)), *TIME_RANGE])},
        "/api/dashboard/pending": {"get": op(
            "Pending requests as /api/pending, each with registrable_domain and scope_rules (the exact rule "
            "each scope would create, or the error it would get)", "pending", ANY_OBJECT, errors=(400,),
            params=[query("container", STR), query("destination", STR), *PAGING])},
        "/api/dashboard/rules": {"get": op(
            "Rules as /api/rules, with a free-text search, a sort on any column and per rule its hits (connections "
            "the log says it decided)", "rules", ANY_OBJECT, errors=(400,),
            params=[query("container", STR), query("destination", STR), query("action", s("string", enum=["allow", "deny"])),
                    query("include_expired", BOOL), query("search", STR),
                    query("sort", s("string", enum=["id", "created_at", "action", "container_pattern",
                                                    "destination_pattern", "port_pattern", "expires_at", "last_used_at",
                                                    "created_by", "hits"])),
                    query("dir", s("string", enum=["asc", "desc"])), *PAGING])},
        "/api/dashboard/audit-verify": {"post": op(
            "Walk the audit log's hash chain (as greyproxy audit verify): {intact, checked, problem}", "audit",
            ANY_OBJECT)},
        "/api/dashboard/check-rule": {"post": op(
            "Check every field of a rule at once: {errors: {field: message}} (the messages POST /api/rules gives)",
            "rules", ANY_OBJECT, request=body(ANY_OBJECT), errors=(400, 415))},
        "/api/dashboard/transactions": {"get": op(
            "Transactions as /api/transactions (same filters) plus body: a substring of the stored request or "
            "response body", "transactions", ANY_OBJECT, errors=(400,),
            params=[query("body", STR), query("search", STR), query("container", STR), query("destination", STR),
                    query("method", STR), query("status_min", INT), query("status_max", INT),
                    query("has_error", BOOL), *PAGING])},
        "/api/dashboard/duration": {"get": op(
            "Seconds a rule duration stands for (null = permanent); 400 says what is wrong", "rules", ANY_OBJECT,
            errors=(400,), params=[query("value", STR)])},
        "/api/rules": {
            "get": op("List rules", "rules", page_of("Rule"), errors=(400,), params=[
                query("container", STR), query("destination", STR),
                query("action", s("string", enum=["allow", "deny"])), query("include_expired", BOOL), *PAGING]),
            "post": op("Create a rule (an identical rule is returned as is)", "rules", ref("Rule"), status="201",
                       request=body(ref("NewRule")), errors=(400, 415)),
        },
        "/api/rules/ingest": {"post": op(
            "Bulk import; identical rules are skipped, all or nothing", "rules",
            obj({"imported": INT, "skipped": INT, "pending_cleaned": INT}), request=body(arr(ref("NewRule"))),
            errors=(400, 415))},
        "/api/rules/{rule_id}": {
            "get": op("One rule", "rules", ref("Rule"), params=[rid], errors=(400, 404)),
            "put": op("Change a rule (partial)", "rules", ref("Rule"), params=[rid], request=body(ref("RuleChanges")),
                      errors=(400, 404, 409, 415)),
            "delete": op("Delete a rule (its live connections are closed)", "rules",
                         obj({"status": STR, "deleted": BOOL}), params=[rid], errors=(400, 404)),
        },
        "/api/rules/test": {"post": op(
            "Which rule decides a connection, or one request on it (method/path), and why", "rules",
            obj({"decision": s("string", enum=["allow", "deny", "hold"]), "rule": s(["object", "null"]),
                 "reason": STR, "level": s("string", enum=["connection", "request"]), "would": STR,
                 "connection": ANY_OBJECT}, ("decision", "rule", "reason")),
            request=body(obj({"container": STR, "destination": STR, "port": s("integer", default=443),
                              "method": STR, "path": STR}, ("container", "destination"), extra=False)),
            errors=(400, 415))},
        "/api/pending-http": {"get": op(
            "Held HTTP requests: waiting ones, then the last answered (in memory)", "pending",
            page_of("HeldRequest"), errors=(400,), params=[
                query("status", s("string", enum=["pending", "allowed", "denied", "expired", "gone"])),
                query("container", STR), *PAGING])},
        "/api/pending-http/count": {"get": op("Number of held HTTP requests", "pending", obj({"count": INT}))},
        "/api/pending-http/{request_id}": {"get": op("One held HTTP request", "pending", ref("HeldRequest"),
                                                      params=[path_param("request_id")], errors=(400, 404))},
        **{f"/api/pending-http/{{request_id}}/{verb}": {"post": op(
            f"{verb.title()} a held HTTP request: once (default), or for a duration / permanent (writes a "
            "request-level rule)", "pending", obj({"request": ref("HeldRequest"), "rule": s(["object", "null"])}),
            params=[path_param("request_id")], request=body(obj({
                "duration": STR, "reason": s("string", "deny: told to the client in the 403"),
                "method_pattern": STR, "path_pattern": STR}, extra=False), required=False),
            errors=(400, 404, 409, 415))} for verb in ("allow", "deny")},
        "/api/pending": {"get": op("Pending requests", "pending", page_of("Pending"), errors=(400,),
                                   params=[query("container", STR), query("destination", STR), *PAGING])},
        "/api/pending/count": {"get": op("Number of pending requests", "pending", obj({"count": INT}))},
        "/api/pending/{pending_id}": {"delete": op("Dismiss without a rule (held connections are blocked)",
                                                   "pending", OK, params=[pid], errors=(400, 404))},
        "/api/pending/{pending_id}/allow": {"post": op(
            "Allow: creates a rule; held connections go through", "pending",
            obj({"rule": ref("Rule"), "pending_removed": BOOL}), params=[pid],
            request=body(ref("Decision"), required=False), errors=(400, 404, 415))},
        "/api/pending/{pending_id}/deny": {"post": op(
            "Deny: creates a deny rule; held connections are blocked", "pending",
            obj({"rule": ref("Rule"), "pending_removed": BOOL}), params=[pid],
            request=body(ref("Decision"), required=False), errors=(400, 404, 415))},
        "/api/pending/bulk-allow": {"post": op(
            f"Allow several (scope exact); at most {MAX_BULK_IDS:,} ids per call (400 beyond)", "pending", obj({
                "rules_created": arr(ref("Rule")), "pending_removed": INT,
                "refused": s("array", "present only when some row could not become a rule",
                             items=obj({"pending_id": INT, "error": STR})),
            }),
            request=body(obj({"pending_ids": arr(INT), "duration": STR}, ("pending_ids",))), errors=(400, 415))},
        "/api/pending/bulk-dismiss": {"post": op(
            f"Dismiss several; at most {MAX_BULK_IDS:,} ids per call (400 beyond)", "pending",
            obj({"status": STR, "removed": INT}),
            request=body(obj({"pending_ids": arr(INT)}, ("pending_ids",))), errors=(400, 415))},
        "/api/logs": {"get": op("Connection log, newest first", "logs", page_of("RequestLog"), errors=(400,),
                                params=[*log_filters, *TIME_RANGE, *PAGING])},
        "/api/logs/stats": {"get": op(
            "Counts and a timeline for a time range (default today); group_by auto picks hour, day or week",
            "logs", ANY_OBJECT, errors=(400,),
            params=[*log_filters, *TIME_RANGE, query("group_by", s("string", enum=["auto", "hour", "day", "week"]))])},
        "/api/allowall": {
            "get": op("Silent mode status", "modes", ref("SilentMode")),
            "post": op("Silent allow-all / deny-all for a while", "modes", ref("SilentMode"), errors=(400, 415),
                       request=body(obj({"mode": s("string", enum=["allow", "deny"]),
                                         "duration": s("string", "Go duration up to 8h, or 'restart'")},
                                        ("mode", "duration")))),
            "delete": op("End silent mode", "modes", ref("SilentMode")),
        },
        "/api/container-modes": {
            "get": op("Per-container modes (YAML ones included, read-only)", "modes", page_of("ContainerMode")),
            "post": op("Set a container's mode", "modes", ref("ContainerMode"), status="201", errors=(400, 415),
                       request=body(obj({"container_pattern": STR,
                                         "mode": s("string", enum=["enforce", "report", "open"])},
                                        ("container_pattern", "mode")))),
        },
        "/api/container-modes/{mode_id}": {"delete": op("Remove a container mode", "modes",
                                                        obj({"status": STR, "deleted": BOOL}),
                                                        params=[path_param("mode_id")], errors=(400, 404))},
        "/api/settings": {
            "get": op("Runtime settings", "settings", ref("Settings")),
            "put": op("Change settings (nested shape); publishes settings.changed", "settings", ref("Settings"),
                      request=body(ref("SettingsUpdate")), errors=(400, 415)),
        },
        "/api/notifications": {
            "get": op("Desktop notifications on/off and active claims", "settings",
                      obj({"enabled": BOOL, "active_claims": INT})),
            "put": op("Turn desktop notifications on or off", "settings", obj({"enabled": BOOL}),
                      request=body(obj({"enabled": BOOL}, ("enabled",))), errors=(400, 415)),
        },
        "/api/events": {"get": op("Server-Sent Events: one event:/data: pair per bus event", "events", STR,
                                  media="text/event-stream",
                                  params=[query("types", STR, "comma-separated event types to receive")])},
        "/ws": {"get": {**op("Control WebSocket: events out, commands in (allow, deny, dismiss, subscribe, "
                             "claim_notifications, ping)", "events"),
                        "responses": {"101": {"description": "Switching Protocols"},
                                      "401": {"$ref": "#/components/responses/E401"}}}},
        "/api/transactions": {"get": op("Captured HTTP exchanges, newest first", "transactions",
                                        page_of("Transaction"), errors=(400,), params=[*txn_filters, *PAGING])},
        "/api/transactions/export/har": {"get": op(
            "HAR 1.2 export of every filtered exchange, streamed; with limit/offset only the newest `limit` (at "
            "most 10,000), said in log.comment; X-Greyproxy-Matched counts the matches", "transactions",
            ANY_OBJECT, errors=(400,), params=[*txn_filters, query("limit", s("integer", minimum=1, maximum=10000)),
                                               query("offset", s("integer", minimum=0))])},
        "/api/transactions/diff": {"get": op(
            "Diff of two exchanges: method, URL, status, headers (added/removed/changed) and bodies (text diff, "
            "JSON paths), bounded (`truncated` says so)", "transactions", ANY_OBJECT, errors=(400, 404),
            params=[{**query("a", s("integer", minimum=1)), "required": True},
                    {**query("b", s("integer", minimum=1)), "required": True}])},
        "/api/transactions/{txn_id}": {"get": op("One exchange, with bodies", "transactions", ref("Transaction"),
                                                 params=[tid], errors=(400, 404))},
        "/api/transactions/{txn_id}/har": {"get": op("One exchange as HAR 1.2", "transactions", ANY_OBJECT,
                                                     params=[tid], errors=(400, 404))},
        "/api/transactions/{txn_id}/curl": {"get": op("One exchange as a runnable curl command", "transactions",
                                                      STR, media="text/plain", params=[tid], errors=(400, 404))},
        "/api/transactions/{txn_id}/replay": {"post": op(
            "Send the stored request again, optionally changed (subject to the rules of the destination dialled); "
            "a stored [REDACTED] is never sent: 400 naming it unless a value is given; lands as a new exchange",
            "transactions", ref("Transaction"), status="201", params=[tid], errors=(400, 403, 404, 415, 502),
            request=body(obj({"method": STR, "url": STR,
                              "headers": s("object", "Name: value, [values] or null (left out)"),
                              "body": NSTR, "body_base64": STR}, extra=False), required=False))},
        "/api/recordings": {
            "get": op("Capture recordings, newest first", "transactions", page_of("Recording"), errors=(400,),
                      params=[query("active", BOOL), *PAGING]),
            "post": op("Start a recording (container: a name or pattern; none = every container)", "transactions",
                       ref("Recording"), status="201", errors=(400, 409, 415),
                       request=body(obj({"name": s("string", maxLength=200), "container": STR}, ("name",),
                                        extra=False))),
        },
        "/api/recordings/import": {"post": op(
            "Import a HAR 1.2 document (the body; at most 8 MiB and 5,000 entries) as the transactions of a new "
            "recording", "transactions", obj({"recording": ref("Recording"), "imported": INT, "transactions": INT}),
            status="201", errors=(400, 413, 415), request=body(ANY_OBJECT),
            params=[query("name", STR), query("container", STR, "whose traffic it becomes (default har-import)")])},
        "/api/recordings/{recording_id}": {
            "get": op("One recording", "transactions", ref("Recording"), params=[rec_id], errors=(400, 404)),
            "delete": op("Delete a recording (its traffic too with delete_transactions=true)", "transactions",
                         obj({"deleted": BOOL, "transactions_deleted": INT}), errors=(400, 404),
                         params=[rec_id, query("delete_transactions", BOOL)]),
        },
        "/api/recordings/{recording_id}/stop": {"post": op("Stop a running recording", "transactions",
                                                            ref("Recording"), params=[rec_id], errors=(400, 404, 409))},
        "/api/recordings/{recording_id}/har": {"get": op("A recording's traffic as one HAR 1.2", "transactions",
                                                          ANY_OBJECT, params=[rec_id], errors=(400, 404))},
        "/api/cert/status": {"get": op("The interception CA", "cert", ref("CertStatus"))},
        "/api/cert/generate": {"post": op("Create the CA (force=true replaces it)", "cert", ANY_OBJECT,
                                          params=[query("force", BOOL)], errors=(400, 409))},
        "/api/cert/download": {"get": op("The CA certificate (PEM)", "cert", STR, media="application/x-pem-file",
                                         errors=(404,))},
        "/api/cert/reload": {"post": op("Load the CA files again", "cert", ANY_OBJECT, errors=(400,))},
        "/api/maintenance/redact-headers": {
            "post": op("Apply the redaction patterns to stored exchanges (background job; progress as "
                       "maintenance.progress events)", "maintenance", obj({"status": STR}), errors=(409,)),
            "get": op("Last state of that job", "maintenance", ref("MaintenanceProgress")),
        },
        "/api/maintenance/scrub-secrets": {
            "post": op("Replace every known secret value (credentials, session mappings) and each request's "
                       "redacted values by [REDACTED] in stored exchanges, frames, logs, conversations and audit "
                       "entries (background job in batches; progress as maintenance.progress events)",
                       "maintenance", obj({"status": STR}), errors=(409,)),
            "get": op("Last state of that job", "maintenance", ref("MaintenanceProgress")),
        },
        "/api/maintenance/prune": {"post": op("Run retention now", "maintenance", ANY_OBJECT, errors=(409,))},
        "/api/sessions": {
            "get": op("Live sessions", "sessions", arr(ref("Session"))),
            "post": op("Create or replace a session (credentials, rules, allow-all)", "sessions", ANY_OBJECT,
                       request=body(ref("NewSession")), errors=(400, 415, 503)),
        },
        "/api/sessions/{session_id}/heartbeat": {"post": op(
            "Extend a session by its TTL", "sessions", obj({"session_id": STR, "expires_at": TIME}), params=[sid],
            errors=(400, 404))},
        "/api/sessions/{session_id}": {"delete": op("End a session (its rules and connections go too)", "sessions",
                                                    obj({"session_id": STR, "deleted": BOOL}), params=[sid],
                                                    errors=(400, 404))},
        "/api/credentials": {
            "get": op("Global credentials (values never shown)", "sessions", arr(ref("Credential"))),
            "post": op("Store a global credential", "sessions", ref("Credential"), errors=(400, 409, 415, 503),
                       request=body(obj({"label": STR, "value": STR, "hosts": arr(STR), "containers": arr(STR)},
                                         ("label", "value")))),
        },
        "/api/credentials/{credential_id}": {"delete": op(
            "Delete a global credential", "sessions", obj({"id": STR, "deleted": BOOL}),
            params=[path_param("credential_id", KEY)], errors=(400, 404))},
        "/api/conversations": {"get": op(
            "LLM conversations assembled from captured traffic (top-level ones, newest first)", "conversations",
            page_of("Conversation"), errors=(400,),
            params=[query("container", STR), query("model", STR), query("provider", STR), *PAGING])},
        "/api/conversations/{conversation_id}": {"get": op(
            "One conversation with its turns", "conversations", ref("Conversation"),
            params=[path_param("conversation_id", s("string"))], errors=(404,))},
        "/api/conversations/{conversation_id}/subagents": {"get": op(
            "Conversations of the subagents it started", "conversations", obj({"items": arr(ref("Conversation"))}),
            params=[path_param("conversation_id", s("string"))], errors=(404,))},
        "/api/maintenance/rebuild-conversations": {"post": op(
            "Assemble every conversation again from the first transaction", "maintenance",
            obj({"status": STR}), errors=(503,))},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "greyproxy control API",
            "version": __version__,
            "description": "Rules, pending requests, logs, captured traffic, sessions and settings of a "
                           "greyproxy instance. Every route needs `Authorization: Bearer <token>` (the "
                           "token is in <data>/api-token) except GET /api/health.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in ("rules", "pending", "logs", "modes", "settings", "events", "transactions",
                                       "cert", "maintenance", "sessions", "middleware", "conversations",
                                       "operations")],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "responses": {f"E{code}": {"description": text, "content": {JSON: {"schema": ref("Error")}}}
                          for code, text in ERROR_TEXT.items()},
        },
    }


_SPEC = build_spec()
METHODS = ("get", "put", "post", "delete", "patch")


def spec() -> dict[str, Any]:
    return copy.deepcopy(_SPEC)


@bp.get("/api/openapi.json")
def openapi_json() -> Any:
    return spec()


@bp.get("/docs")
def reference() -> Any:
    """A readable list of every route, from the same document (server-rendered, no script)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, item in _SPEC["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                groups.setdefault(operation["tags"][0], []).append({
                    "method": method.upper(), "path": path, "summary": operation["summary"],
                    "public": operation.get("security") == [],
                    "params": [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"],
                    "statuses": sorted(operation["responses"]),
                })
    html = render_template("api_reference.html", groups=groups, pages=PAGES, page=None, title="API reference",
                           theme=settings_store().values()["theme"], version=runtime().version)
    return _secured(make_response(html))
