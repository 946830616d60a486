"""Runtime settings (docs/configuration.md): `GET/PUT /api/settings`.

The store itself (services/settings.py) belongs to the runtime, which applies changes to the
proxy at once; this module validates the nested JSON shape and hands the changes over.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint

from greyproxy.api.context import claims, settings_store
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_field, choice, json_object, no_unknown_keys, str_field
from greyproxy.capture.redact import DEFAULT_REDACTED_HEADERS
from greyproxy.services.settings import SettingsStore, settings_to_json

__all__ = ["SettingsStore", "bp", "settings_to_json"]

bp = Blueprint("settings", __name__)

THEMES = ("system", "light", "dark")
MAX_PATTERNS = 200
MAX_PATTERN_LENGTH = 200
# Header-name token characters (RFC 9110 tchar) plus `*`, the pattern wildcard.
_HEADER_PATTERN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Host names, IP literals and `*` globs, as the bypass list matches them.
_BYPASS_PATTERN = re.compile(r"^[a-z0-9*._\-:\[\]]+$")


def _section(body: dict[str, Any], section: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    value = body.get(section)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"'{section}' must be an object like {{\"enabled\": true}}")
    no_unknown_keys(value, keys)
    return value


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"'{name}' must be an array of strings")
    if len(value) > MAX_PATTERNS:
        raise ApiError(400, f"'{name}' may hold at most {MAX_PATTERNS} entries")
    out: list[str] = []
    for raw in value:
        item = raw.strip()
        if not item:
            raise ApiError(400, f"'{name}' entries must not be empty")
        if len(item) > MAX_PATTERN_LENGTH:
            raise ApiError(400, f"'{name}' entries must be at most {MAX_PATTERN_LENGTH} characters")
        out.append(item)
    return out


def redacted_headers_field(value: Any) -> list[str]:
    """The custom patterns to store: defaults and duplicates dropped (case-insensitively), so a
    client may send back what GET showed it."""
    patterns = _string_list(value, "redactedHeaders")
    builtin = {p.lower() for p in DEFAULT_REDACTED_HEADERS}
    custom: dict[str, str] = {}
    for pattern in patterns:
        if not _HEADER_PATTERN.match(pattern):
            raise ApiError(400, f"'redactedHeaders': {pattern!r} is not a header name or a pattern with '*'")
        if pattern.lower() not in builtin:
            custom.setdefault(pattern.lower(), pattern)
    return list(custom.values())


def bypass_field(value: Any) -> list[str]:
    hosts = [h.lower().rstrip(".") for h in _string_list(value, "mitm.bypass")]
    for host in hosts:
        if not _BYPASS_PATTERN.match(host):
            raise ApiError(400, f"'mitm.bypass': {host!r} is not a host name, IP or '*' pattern")
    return list(dict.fromkeys(hosts))


def _current() -> dict[str, Any]:
    return settings_store().to_json(claims().active)


@bp.get("/api/settings")
def get_settings() -> Any:
    return _current()


# The seed's flat spellings (what settings.json stores) beside the nested sections.
FLAT_KEYS = {"notificationsEnabled": "notifications", "mitmEnabled": "mitm", "conversationsEnabled": "conversations"}
KEYS = ("theme", "notifications", "mitm", "conversations", "redactedHeaders", *FLAT_KEYS)


@bp.put("/api/settings")
def put_settings() -> Any:
    body = json_object()
    # Unknown keys are refused, naming them (greyproxy silently ignored what it did not know).
    no_unknown_keys(body, KEYS)
    changes: dict[str, Any] = {}
    theme = choice(str_field(body, "theme", max_length=16), "theme", THEMES)
    if theme is not None:
        changes["theme"] = theme
    for flat, section_name in FLAT_KEYS.items():
        section = _section(body, section_name, ("enabled", "bypass") if section_name == "mitm" else ("enabled",))
        nested = bool_field(section, "enabled") if section is not None else None
        flag = bool_field(body, flat)
        if flag is not None and nested is not None and flag != nested:
            raise ApiError(400, f"'{flat}' and '{section_name}.enabled' disagree")
        value = flag if flag is not None else nested
        if value is not None:
            changes[flat] = value
        if section_name == "mitm" and section is not None and section.get("bypass") is not None:
            changes["mitmBypass"] = bypass_field(section["bypass"])
    if body.get("redactedHeaders") is not None:
        changes["redactedHeaders"] = redacted_headers_field(body["redactedHeaders"])
    settings_store().update(changes)
    return _current()
