"""Sessions and global credentials (docs/sessions.md): the sandbox launcher's protocol."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import (
    bool_field,
    checked_str,
    choice,
    int_field,
    json_object,
    key_field,
    path_key,
    str_field,
)
from greyproxy.credentials.placeholders import PREFIX, is_placeholder
from greyproxy.policy.patterns import (
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
)
from greyproxy.services.credentials import CredentialsUnavailable, UnknownCredentials
from greyproxy.services.rules import NewRule, NotFound
from greyproxy.services.sessions import Mapping, SessionSpec

bp = Blueprint("sessions", __name__)

MIN_PROXY_TOKEN = 16
MAX_CONTAINER_NAME = 256  # as a container pattern (policy/patterns.py)
MAX_SECRET = 1024 * 1024  # a credential value: certificates and service-account JSON are long
MAX_ENTRIES = 1000  # mappings, metadata, labels, network rules, hosts: per session or credential


def _string_map(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"'{name}' must be an object")
    _at_most(value, name)
    for key in value:
        checked_str(key, f"a key of '{name}'", max_length=1024)
    return value


def _at_most(value: dict[str, Any] | list[Any], name: str) -> None:
    if len(value) > MAX_ENTRIES:
        raise ApiError(400, f"'{name}' may hold at most {MAX_ENTRIES} entries")


def _container_name(body: dict[str, Any]) -> str:
    name = (str_field(body, "container_name", max_length=MAX_CONTAINER_NAME) or "").strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ApiError(400, "'container_name' must not contain control characters")
    return name


def _hosts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise ApiError(400, f"'{where}.hosts' must be a list of destination patterns")
    _at_most(value, f"{where}.hosts")
    return tuple(normalize_destination_pattern(h) for h in value)


def _containers(value: Any) -> tuple[str, ...]:
    """`containers` of a global credential: container patterns, validated like a rule's."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ApiError(400, "'containers' must be a list of container patterns")
    _at_most(value, "containers")
    return tuple(dict.fromkeys(normalize_container_pattern(c) for c in value))


def _mappings(body: dict[str, Any]) -> tuple[Mapping, ...]:
    labels = _string_map(body, "labels")
    out = []
    for placeholder, real in _string_map(body, "mappings").items():
        if not is_placeholder(placeholder):
            raise ApiError(400, f"mapping key {placeholder[:80]!r} is not a placeholder ({PREFIX}v1:<scope>:<32 hex>)")
        hosts: tuple[str, ...] = ()
        if isinstance(real, dict):  # {"value": ..., "hosts": [...]} binds the secret to destinations
            hosts = _hosts(real.get("hosts"), f"mappings[{placeholder}]")
            real = real.get("value")
        if not isinstance(real, str) or not real:
            raise ApiError(400, f"mapping for {placeholder[:80]!r} must be a non-empty string value")
        checked_str(real, f"mapping for {placeholder[:80]!r}", max_length=MAX_SECRET)
        label = labels.get(placeholder)
        if label is not None:
            checked_str(label, "'labels' values", max_length=256)
        out.append(Mapping(placeholder, real, label, hosts))
    return tuple(out)


def _network_rules(body: dict[str, Any]) -> tuple[NewRule, ...]:
    items = body.get("network_rules")
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ApiError(400, "'network_rules' must be a list")
    _at_most(items, "network_rules")
    rules = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"'network_rules[{i}]' must be an object")
        rules.append(NewRule(
            container_pattern="*",  # replaced by the session's container_name
            destination_pattern=normalize_destination_pattern(str_field(item, "destination_pattern", required=True)),
            port_pattern=normalize_port_pattern(str_field(item, "port_pattern", default="*")),
            action=choice(str_field(item, "action", default="allow"), f"network_rules[{i}].action", ("allow", "deny")),
            notes=str_field(item, "notes"),
        ))
    return tuple(rules)


def session_spec(body: dict[str, Any]) -> SessionSpec:
    container = _container_name(body)
    if not (str_field(body, "session_id", max_length=4096) or "").strip() or not container:
        raise ApiError(400, "session_id and container_name are required")
    # An id with '/' could never be addressed by heartbeat or DELETE again: one charset for all.
    session_id = key_field(body, "session_id") or ""
    metadata = _string_map(body, "metadata")
    for value in metadata.values():
        checked_str(value, "'metadata' values")
    globals_ = body.get("global_credentials")
    globals_ = [] if globals_ is None else globals_
    if not isinstance(globals_, list) or not all(isinstance(g, str) for g in globals_):
        raise ApiError(400, "'global_credentials' must be a list of labels")
    _at_most(globals_, "global_credentials")
    for label in globals_:
        checked_str(label, "'global_credentials' labels", max_length=256)
    token = str_field(body, "proxy_token", max_length=1024)
    if token is not None and len(token) < MIN_PROXY_TOKEN:
        raise ApiError(400, f"'proxy_token' must be at least {MIN_PROXY_TOKEN} characters")
    spec = SessionSpec(
        session_id=session_id,
        container_name=container,
        mappings=_mappings(body),
        metadata=metadata,
        ttl_seconds=int_field(body, "ttl_seconds", minimum=-(2**31), maximum=2**31, default=0),
        global_credentials=tuple(globals_),
        network_rules=_network_rules(body),
        allow_all=bool(bool_field(body, "allow_all", default=False)),
        proxy_token=token,
    )
    if not (spec.mappings or spec.global_credentials or spec.network_rules or spec.allow_all):
        raise ApiError(400, "at least one of mappings, global_credentials, network_rules or allow_all is required")
    return spec


def _unavailable(exc: CredentialsUnavailable) -> ApiError:
    return ApiError(503, f"credential support is unavailable: {exc}")


@bp.post("/api/sessions")
def create_session() -> Any:
    spec = session_spec(json_object())
    try:
        return runtime().sessions.create(spec)
    except UnknownCredentials as exc:
        raise ApiError(400, str(exc)) from None
    except CredentialsUnavailable as exc:
        raise _unavailable(exc) from None


@bp.get("/api/sessions")
def list_sessions() -> Any:
    return runtime().sessions.list()


@bp.post("/api/sessions/<session_id>/heartbeat")
def heartbeat(session_id: str) -> Any:
    return runtime().sessions.heartbeat(path_key(session_id, "session id"))


@bp.delete("/api/sessions/<session_id>")
def delete_session(session_id: str) -> Any:
    if not runtime().sessions.delete(path_key(session_id, "session id")):
        raise NotFound(f"session {session_id} not found")
    return {"session_id": session_id, "deleted": True}


@bp.get("/api/credentials")
def list_credentials() -> Any:
    return runtime().credentials.list()


@bp.post("/api/credentials")
def create_credential() -> Any:
    body = json_object()
    label = (str_field(body, "label", max_length=256) or "").strip()
    value = str_field(body, "value", max_length=MAX_SECRET) or ""
    if not label or not value:
        raise ApiError(400, "label and value are required")
    try:
        return runtime().credentials.create(label, value, _hosts(body.get("hosts"), "credential"),
                                            _containers(body.get("containers")))
    except CredentialsUnavailable as exc:
        raise _unavailable(exc) from None


@bp.delete("/api/credentials/<credential_id>")
def delete_credential(credential_id: str) -> Any:
    runtime().credentials.delete(path_key(credential_id, "credential id"))
    return {"id": credential_id, "deleted": True}
