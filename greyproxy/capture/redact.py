"""Redaction of captured traffic (docs/decisions.md#audit-observability-traffic-tools): sensitive header values and query-string values are
replaced before anything reaches the database, so no stored row, API answer, HAR file or curl
command ever holds them.

Header patterns (case-insensitive on the name): `*x*` contains, `x*` prefix, `*x` suffix, a
plain name is exact, a lone `*` is every header. A `*` elsewhere matches any run of characters.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
DEFAULT_REDACTED_HEADERS = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "*api-key*",
    "*token*",
    "*secret*",
)
PART_MIN = 8  # a cookie's value or an auth header's token part shorter than this is not scrubbed
SENSITIVE_QUERY_KEYS = ("token", "access_token", "refresh_token", "api_key", "apikey", "password", "secret")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A header-name pattern as an anchored, case-insensitive regex (`*` = any run of characters)."""
    parts = (re.escape(p) for p in pattern.strip().split("*"))
    return re.compile("^" + ".*".join(parts) + "$", re.IGNORECASE | re.DOTALL)


class Redactor:
    """Immutable once built; the runtime builds a new one when the custom patterns change."""

    def __init__(self, extra_header_patterns: Sequence[str] = (), extra_query_keys: Sequence[str] = ()) -> None:
        patterns = [p for p in (*DEFAULT_REDACTED_HEADERS, *extra_header_patterns) if p and p.strip()]
        self.header_patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        self._regexes = tuple(compile_pattern(p) for p in self.header_patterns)
        self.query_keys = frozenset(k.strip().lower() for k in (*SENSITIVE_QUERY_KEYS, *extra_query_keys) if k.strip())
        self._verdicts: dict[str, bool] = {}

    def header_redacted(self, name: str) -> bool:
        key = name.lower()
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = any(rx.match(key) for rx in self._regexes)
            # Header names repeat endlessly; a bounded memo keeps the per-request cost at a dict lookup.
            if len(self._verdicts) < 4096:
                self._verdicts[key] = verdict
        return verdict

    def headers(self, pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        """Header lines as `{Name: [values]}`: names grouped case-insensitively under their first
        spelling, in order of first appearance; a redacted header keeps its name and gets the
        single value `[REDACTED]` however many lines it had."""
        out: dict[str, list[str]] = {}
        spelling: dict[str, str] = {}
        for name, value in pairs:
            key = spelling.setdefault(name.lower(), name)
            if self.header_redacted(name):
                out[key] = [REDACTED]
            else:
                out.setdefault(key, []).append(value)
        return out

    def header_map(self, stored: Mapping[str, object]) -> dict[str, list[str]]:
        """Redact an already stored `{Name: [values]}` map (the retro-active job); idempotent."""
        out: dict[str, list[str]] = {}
        for name, values in stored.items():
            if self.header_redacted(str(name)):
                out[str(name)] = [REDACTED]
            elif isinstance(values, list):
                out[str(name)] = [str(v) for v in values]
            else:
                out[str(name)] = [str(values)]
        return out

    def redacted_values(self, pairs: Iterable[tuple[str, str]], url: str = "") -> list[str]:
        """The raw values `headers` and `url` would replace with `[REDACTED]` in this request, and
        the usable parts of each (the token after an auth scheme, a Basic password, each cookie's
        value), so that a response echoing one of them is scrubbed before it is stored."""
        out: dict[str, None] = {}

        def add(value: str, minimum: int = 1) -> None:
            value = value.strip()
            if len(value) >= minimum and value != REDACTED:
                out[value] = None

        for name, value in pairs:
            if not self.header_redacted(name):
                continue
            add(value)
            lower = name.lower()
            # Parts count from PART_MIN characters: `theme=dark` is no credential, and scrubbing
            # "dark" from the stored response would only shred it.
            if lower in ("cookie", "set-cookie"):
                for part in value.split(";"):
                    add(part.partition("=")[2], PART_MIN)
                continue
            scheme, sep, rest = value.strip().partition(" ")
            if sep:
                add(rest, PART_MIN)
                if scheme.lower() == "basic":
                    try:
                        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
                    except (binascii.Error, ValueError):
                        decoded = ""
                    if decoded:
                        add(decoded, PART_MIN)
                        add(decoded.partition(":")[2], PART_MIN)
        q = url.find("?")
        if q >= 0:
            h = url.find("#", q)
            for piece in url[q + 1 : len(url) if h < 0 else h].split("&"):
                name, eq, value = piece.partition("=")
                if eq and value and unquote_plus(name).strip().lower() in self.query_keys:
                    add(value)
                    add(unquote_plus(value))
        return list(out)

    def url(self, url: str) -> str:
        """Replace the values of sensitive query keys with `[REDACTED]`; everything else in the
        URL (order, encoding, other parameters, fragment) stays byte-identical."""
        q = url.find("?")
        if q < 0:
            return url
        h = url.find("#", q)
        end = len(url) if h < 0 else h
        query = url[q + 1 : end]
        if not query:
            return url
        changed = False
        pieces = query.split("&")
        for i, piece in enumerate(pieces):
            name, eq, value = piece.partition("=")
            if eq and value and value != REDACTED and unquote_plus(name).strip().lower() in self.query_keys:
                pieces[i] = f"{name}={REDACTED}"
                changed = True
        if not changed:
            return url
        return url[: q + 1] + "&".join(pieces) + url[end:]
