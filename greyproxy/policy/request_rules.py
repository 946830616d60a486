"""Request-level rules (docs/request-rules.md): a rule with a `method_pattern` and/or a
`path_pattern` judges single HTTP requests on a connection its host rules already allowed.

The agent controls every byte of the request, so a path is brought to one canonical form
before it is matched, and patterns are stored in that same form: a deny or hold on
`/repos/*/delete` cannot be walked around by spelling the path another way (`//`, `/./`,
`%2F`, `%2e%2e`, `\\`, `;jsessionid=…`, upper case, a query string). Matching is therefore
broader than a byte comparison, on purpose: for the actions that restrict (deny, hold) a false
match is the safe error.

Precedence among the request rules that match (smaller wins, so the outcome never depends
on insertion order): higher layer, more specific container/destination/port (the host-rule
score), more specific method, more specific path (exact, then longer literal text), then
deny before allow before hold (a hold is "ask unless told", so an equally specific answer a
human gave wins over it), then the lower id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from .canonical import PatternError, printable
from .patterns import (
    DestinationKind,
    container_matcher,
    destination_matcher,
    parse_destination,
    port_matcher,
    specificity,
    try_canonical_host,
)

if TYPE_CHECKING:
    from .index import RuleSpec

REQUEST_ACTIONS = ("allow", "deny", "hold")
_ACTION_RANK = {"deny": 0, "allow": 1, "hold": 2}
MAX_METHOD_PATTERN = 256
MAX_PATH_PATTERN = 2048
MAX_DECODE_ROUNDS = 3  # '%252e' is '%2e' to an origin that decodes twice; enough for any real stack
# RFC 9110 token characters: what a method may be made of.
_ABSOLUTE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


# --------------------------------------------------------------------------- method


def normalize_method_pattern(p: str | None) -> str:
    """'' (any method: the rule is not request-level by its method), '*', or a comma list of
    method names, upper-cased, sorted and de-duplicated ('post, put' → 'POST,PUT')."""
    text = (p or "").strip()
    if not text:
        return ""
    if len(text) > MAX_METHOD_PATTERN:
        raise PatternError(f"method_pattern: longer than {MAX_METHOD_PATTERN} characters")
    if text == "*":
        return "*"
    methods = set()
    for item in text.split(","):
        name = item.strip()
        if not name or not _TOKEN_RE.match(name) or name == "*":
            raise PatternError(f"method_pattern: {printable(name or item)!r} is not a method name "
                               "(use '*' or a comma list such as 'POST,PUT')")
        methods.add(name.upper())
    return ",".join(sorted(methods))


def method_matcher(pattern: str) -> Callable[[str], bool]:
    if pattern in ("", "*"):
        return lambda _m: True
    allowed = frozenset(pattern.split(","))
    return lambda method: method.upper() in allowed


def method_specificity(pattern: str) -> int:
    if pattern in ("", "*"):
        return 0
    return 2 if "," not in pattern else 1


# --------------------------------------------------------------------------- path


def _decoded(text: str) -> str:
    """Percent-decoding until nothing changes (bounded), as latin-1 so every byte is one char."""
    for _ in range(MAX_DECODE_ROUNDS):
        if "%" not in text:
            break
        decoded = unquote_to_bytes(text).decode("latin-1")
        if decoded == text:
            break
        text = decoded
    return text


def canonical_path(target: str) -> str:
    """The path of a request target (origin form or absolute URI) in the form rules match:
    query and fragment dropped, percent-decoded, `\\` as `/`, `;params` dropped from each
    segment, empty and `.` segments dropped, `..` applied, lower case, one leading `/` and
    no trailing one."""
    path = target
    if _ABSOLUTE_RE.match(path):
        # absolute form: scheme://authority/path (the authority was checked elsewhere)
        rest = path.split("://", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    path = _decoded(path)
    # a '?' or '#' that was percent-encoded is part of the path to the origin: keep it
    path = path.replace("\\", "/")
    segments: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    # no trailing '/': '/admin/' and '/admin' are one resource to most origins
    return ("/" + "/".join(segments)).lower()


def normalize_path_pattern(p: str | None) -> str:
    """'' (any path), '*', or a pattern starting with '/' where '*' matches any run of
    characters ('/' included); stored in the canonical form paths are matched in."""
    text = (p or "").strip()
    if not text:
        return ""
    if len(text) > MAX_PATH_PATTERN:
        raise PatternError(f"path_pattern: longer than {MAX_PATH_PATTERN} characters")
    if text == "*":
        return "*"
    if not text.startswith("/"):
        raise PatternError(f"path_pattern: {printable(text)!r} must start with '/' (or be '*')")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c.isspace() for c in text):
        raise PatternError(f"path_pattern: control character or whitespace in {printable(text)!r}")
    if "?" in text or "#" in text:
        raise PatternError(f"path_pattern: {printable(text)!r} holds a query or fragment; rules match the path only")
    # Canonicalise the literal parts, keeping each '*' (a '*' segment is kept by canonical_path).
    out = canonical_path(text)
    if text.endswith("*") and not out.endswith("*"):
        out += "*"
    return out


@lru_cache(maxsize=4096)
def path_matcher(pattern: str) -> Callable[[str], bool]:
    """A predicate on canonical paths (cached: patterns recur)."""
    if pattern in ("", "*"):
        return lambda _p: True
    if "*" not in pattern:
        return lambda path: path == pattern
    regex = re.compile("".join(".*" if part == "*" else re.escape(part)
                               for part in re.split(r"(\*)", pattern)) + r"\Z", re.DOTALL)
    return lambda path: regex.match(path) is not None


def path_specificity(pattern: str) -> tuple[int, int]:
    if pattern in ("", "*"):
        return (0, 0)
    if "*" not in pattern:
        return (2, len(pattern))
    return (1, len(pattern.replace("*", "")))


# --------------------------------------------------------------------------- rules


def is_request_rule(method_pattern: str | None, path_pattern: str | None) -> bool:
    return bool(method_pattern) or bool(path_pattern)


@dataclass(frozen=True, slots=True)
class RequestQuery:
    container: str
    host: str
    port: int
    method: str
    path: str  # canonical_path() of the target
    resolved_hostname: str | None = None


class RequestEntry:
    """A compiled request rule."""

    __slots__ = ("spec", "key", "container_match", "destination_match", "port_match", "method_match",
                 "path_match", "exact_host")

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        path_rank, path_len = path_specificity(spec.path_pattern)
        self.key = (-spec.layer, -specificity(spec.container_pattern, spec.destination_pattern, spec.port_pattern),
                    -method_specificity(spec.method_pattern), -path_rank, -path_len,
                    _ACTION_RANK.get(spec.action, 9), spec.id)
        self.container_match = container_matcher(spec.container_pattern)
        self.destination_match = destination_matcher(spec.destination_pattern)
        self.port_match = port_matcher(spec.port_pattern)
        self.method_match = method_matcher(spec.method_pattern)
        self.path_match = path_matcher(spec.path_pattern)
        try:  # an exact destination: the index files the rule under that host
            parsed = parse_destination(spec.destination_pattern)
            self.exact_host: str | None = parsed.value if parsed.kind == DestinationKind.EXACT else None
        except PatternError:
            self.exact_host = None

    def matches(self, q: RequestQuery, hosts: Iterable[str], now: float, session: str | None) -> bool:
        spec = self.spec
        if spec.expires_at is not None and spec.expires_at <= now:
            return False
        if spec.session_id is not None and spec.session_id != session:
            return False
        return (self.port_match(q.port) and self.container_match(q.container) and self.method_match(q.method)
                and self.path_match(q.path) and any(self.destination_match(h) for h in hosts))


def best_request_rule(entries: Iterable[RequestEntry], q: RequestQuery, now: float,
                      session: str | None) -> RuleSpec | None:
    """The winning request rule for `q` (see the module docstring), or None."""
    first = try_canonical_host(q.host)
    if first is None:
        return None
    hosts = [first]
    if q.resolved_hostname:
        resolved = try_canonical_host(q.resolved_hostname)
        if resolved is not None and resolved != first:
            hosts.append(resolved)
    best: RequestEntry | None = None
    for entry in entries:
        if best is not None and entry.key >= best.key:
            continue
        if entry.matches(q, hosts, now, session):
            best = entry
    return best.spec if best is not None else None
