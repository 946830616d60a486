"""Request parsing shared by every route: JSON bodies, typed fields, query arguments, ids.

Each helper raises ApiError(400, message naming the field) on bad input, so a handler reads
as a list of the values it needs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Mapping
from typing import Any

from flask import request

from greyproxy.api.errors import ApiError
from greyproxy.timeutil import parse_iso

_MISSING: Any = object()
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_MAX_ID = 2**63 - 1  # SQL INTEGER; a larger number would overflow the driver


def json_body(empty: Any = _MISSING) -> Any:
    """The parsed JSON body; `empty` is returned for an empty body (else it is a 400).

    The Content-Type check (415) happens once for all routes in the request guard (auth.py).
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        if empty is _MISSING:
            raise ApiError(400, "request body is required (JSON)")
        return empty
    try:
        return json.loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise ApiError(400, f"invalid JSON body: {exc}") from None


def json_object(optional: bool = False) -> dict[str, Any]:
    body = json_body({} if optional else _MISSING)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def json_array() -> list[Any]:
    body = json_body()
    if not isinstance(body, list):
        raise ApiError(400, "request body must be a JSON array")
    return body


# -- fields of a JSON object ------------------------------------------------------------------
def str_field(body: Mapping[str, Any], name: str, default: Any = None, required: bool = False) -> Any:
    """A string field; null or absent gives `default` (or a 400 when required)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"'{name}' is required")
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a string")
    return value


def int_field(body: Mapping[str, Any], name: str, minimum: int, maximum: int, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int subclass in Python; `true` is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer")
    if not minimum <= value <= maximum:
        raise ApiError(400, f"'{name}' must be between {minimum} and {maximum}")
    return value


def bool_field(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be true or false")
    return value


def choice(value: Any, name: str, options: Collection[str]) -> Any:
    """`value` unchanged if None or one of `options`."""
    if value is not None and value not in options:
        raise ApiError(400, f"'{name}' must be one of {', '.join(options)} (got {value!r})")
    return value


def id_list(body: Mapping[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if not isinstance(value, list) or not all(_is_id(v) for v in value):
        raise ApiError(400, f"'{name}' must be an array of positive integers")
    return value


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_ID


def no_unknown_keys(body: Mapping[str, Any], known: Collection[str]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")


# -- query string and path --------------------------------------------------------------------
def str_arg(name: str) -> str | None:
    value = request.args.get(name, "").strip()
    return value or None


def int_arg(name: str, default: int, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
    text = request.args.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"query parameter '{name}' must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"query parameter '{name}' must be between {minimum} and {maximum}")
    return value


def bool_arg(name: str, default: bool = False) -> bool:
    text = request.args.get(name)
    if text is None:
        return default
    text = text.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(400, f"query parameter '{name}' must be true or false")


def time_arg(name: str) -> dt.datetime | None:
    """An RFC 3339 (or `YYYY-MM-DDTHH:MM`) query parameter as naive UTC."""
    text = str_arg(name)
    if text is None:
        return None
    return rfc3339(text, f"query parameter '{name}'")


def rfc3339(text: str, what: str) -> dt.datetime:
    """Parse an RFC 3339 time to naive UTC, or a 400 naming `what`."""
    try:
        return parse_iso(text)
    except (ValueError, OverflowError):  # OverflowError: a zone offset pushing past year 9999
        raise ApiError(400, f"{what} must be an RFC 3339 time such as 2030-01-01T12:00:00Z") from None


def choice_arg(name: str, options: Collection[str], default: str | None = None) -> str | None:
    value = str_arg(name)
    if value is None:
        return default
    if value not in options:
        raise ApiError(400, f"query parameter '{name}' must be one of {', '.join(options)}")
    return value


def path_id(text: str) -> int:
    """An id from the URL path; ours are positive integers, anything else is a 400, not a 404."""
    if not text.isascii() or not text.isdigit() or not _is_id(int(text)):
        raise ApiError(400, f"invalid id {text!r}: must be a positive integer")
    return int(text)
