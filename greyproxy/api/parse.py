"""Request parsing shared by every route: JSON bodies, typed fields, query arguments, ids.

Each helper raises ApiError(400, message naming the field) on bad input, so a handler reads
as a list of the values it needs.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from array import array
from collections.abc import Collection, Mapping
from itertools import accumulate
from typing import Any

from flask import g, request

from greyproxy.api.errors import ApiError
from greyproxy.offhub import in_worker
from greyproxy.timeutil import parse_iso

_MISSING: Any = object()
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_MAX_ID = 2**63 - 1  # SQL INTEGER; a larger number would overflow the driver
_MAX_ID_DIGITS = 19  # len(str(_MAX_ID)); checked before int() so 5,000 digits cost nothing
MAX_JSON_DEPTH = 32  # our documents nest 4 deep; deeper is an attack on recursive code, not data
MAX_STRING = 64 * 1024  # default cap of one string field (credential values get their own)
# A string key: session, credential and conversation ids. No '/' (it could never be addressed
# in a path again), no ':' or '@' (a session id is also a proxy username in a URL), no spaces.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class _Refused(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def decode_json(raw: str | bytes) -> Any:
    """Parse untrusted JSON or raise ApiError(400): the one reader for every body (and /ws).

    Beyond json.loads: nesting deeper than MAX_JSON_DEPTH, lone UTF-16 surrogates (they cannot be
    encoded as UTF-8, so SQLite, logs and responses would fail on them later) and NaN/Infinity
    are refused here, once, so no route or service ever sees them. Every step runs in C (regex,
    translate, accumulate, the json codec).

    A body over OFF_HUB_BYTES is read in a worker thread, differently: one long C call holds the
    GIL (the string-stripping regex alone takes seconds on 8 MB), which would stop every
    connection however it is threaded. There the codec calls back into Python for each object
    (where the hub gets its turn), and the depth is measured by walking the result.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"invalid JSON body: {_LONE}") from None
    if len(raw) > OFF_HUB_BYTES:
        return in_worker(_decode_big_json, raw)
    return _decode_json(raw)


OFF_HUB_BYTES = 256 * 1024


def _decode_big_json(raw: bytes) -> Any:
    try:
        value = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_object)
    except RecursionError:
        raise ApiError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # includes UnicodeDecodeError and over-long integers
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    if _nesting(value) > MAX_JSON_DEPTH:
        raise ApiError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    _refuse_lone_surrogates(raw, value)
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(pairs)  # Python code on purpose: the hub takes the GIL here (see decode_json)


def _nesting(value: Any) -> int:
    """How deep arrays and objects nest in a parsed value (stops counting past the limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _refuse_lone_surrogates(raw: bytes, value: Any) -> None:
    if _SURROGATE_ESCAPE.search(raw):  # only a \uD800-\uDFFF escape makes one; pairs are fine
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"invalid JSON body: {_LONE}") from None


def _decode_json(raw: bytes) -> Any:
    if _depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # includes UnicodeDecodeError and over-long integers
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    _refuse_lone_surrogates(raw, value)
    return value


_LONE = "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string, escapes included (unambiguous: linear)
# Brackets become +1 / -1 (0xFF read as a signed byte); every other byte is dropped.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects outside strings (of valid JSON; for anything
    else a figure json.loads refuses anyway)."""
    steps = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0)


def json_body(empty: Any = _MISSING) -> Any:
    """The parsed JSON body; `empty` is returned for an empty body (else it is a 400).

    The Content-Type check (415) happens once for all routes in the request guard (auth.py);
    the size cap (413) is the app's MAX_CONTENT_LENGTH.
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        if empty is _MISSING:
            raise ApiError(400, "request body is required (JSON)")
        return empty
    if "json_body" in g:  # already read (and checked) by the request guard
        return g.json_body
    return decode_json(raw)


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
def str_field(body: Mapping[str, Any], name: str, default: Any = None, required: bool = False,
              max_length: int = MAX_STRING, nul: bool = False) -> Any:
    """A string field; null or absent gives `default` (or a 400 when required).

    Every string has a length cap, and NUL is refused unless `nul` (C code, SQLite LIKE and
    log lines cut a string at NUL, so what is checked would differ from what is used)."""
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"'{name}' is required")
        return default
    return checked_str(value, f"'{name}'", max_length, nul)


def checked_str(value: Any, what: str, max_length: int = MAX_STRING, nul: bool = False) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{what} must be a string")
    if len(value) > max_length:
        raise ApiError(400, f"{what} is longer than {max_length} characters")
    if not nul and "\x00" in value:
        raise ApiError(400, f"{what} must not contain a NUL character")
    return value


def key_field(body: Mapping[str, Any], name: str) -> str | None:
    """A string id chosen by the client (a session id): KEY_PATTERN, else a 400."""
    value = str_field(body, name, max_length=4096)
    if value is None:
        return None
    return valid_key(value.strip(), f"'{name}'")


def valid_key(text: str, what: str) -> str:
    if not KEY_PATTERN.fullmatch(text):
        raise ApiError(400, f"{what} must be 1-128 characters of letters, digits, '.', '_' and '-' "
                            "(not starting with '.' or '-')")
    return text


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
    # Length first: int() of thousands of digits is slow and over 4,300 raises ValueError.
    if len(text) > _MAX_ID_DIGITS or not text.isascii() or not text.isdigit() or not _is_id(int(text)):
        raise ApiError(400, f"invalid id {_shown(text)}: must be a positive integer")
    return int(text)


def path_key(text: str, what: str = "id") -> str:
    """A string id from the URL path (session, credential): the KEY_PATTERN, else a 400."""
    if not KEY_PATTERN.fullmatch(text):
        raise ApiError(400, f"invalid {what} {_shown(text)}: letters, digits, '.', '_' and '-' only, "
                            "at most 128")
    return text


def _shown(text: str) -> str:
    return repr(text[:40] + ("…" if len(text) > 40 else ""))
