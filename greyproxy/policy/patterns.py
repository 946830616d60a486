"""Rule pattern dialects: validation, matching and specificity (§3.2, §3.4, D3).

Three dialects exist:

* container patterns: shell globs, case-sensitive (``*`` also matches the empty name);
* destination patterns: ``*``, CIDR, ``**.x`` (apex + any depth), ``*.x`` (any depth, not the
  apex), label globs (``api.*``, ``*.*.npmjs.org``, ``foo*.example.com``), IP literals and
  hostnames, all case-insensitive;
* port patterns: ``*`` or a comma list of ports and inclusive ``lo-hi`` ranges.

Validation (``normalize_*``) is strict and used on write.  The matchers are lenient: a pattern
that slipped past validation (old database rows) never matches instead of raising, so a bad row
cannot take the proxy down.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "PatternError",
    "normalize_container_pattern",
    "normalize_destination_pattern",
    "normalize_port_pattern",
    "container_matcher",
    "destination_matcher",
    "port_matcher",
    "specificity",
    "canonical_host",
    "DestinationKind",
    "ParsedDestination",
    "parse_destination",
    "parsed_matcher",
    "glob_labels_match",
    "glob_labels_regex",
    "parse_port_ranges",
    "container_specificity",
]

_GLOB_CHARS = frozenset("*?[")
# One hostname label: word characters (incl. IDN letters), '-', and the two glob wildcards.
_LABEL_RE = re.compile(r"^[\w\-*?]+$")
_PORT_ITEM_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$", re.ASCII)
_MAX_PORT = 65535


class PatternError(ValueError):
    """A rule pattern is malformed; the message says which field and what is wrong."""


def _has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


# --------------------------------------------------------------------------- container


def _unclosed_bracket(pattern: str) -> int | None:
    """Index of a '[' that fnmatch would not close, or None if all brackets are balanced."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            # fnmatch: a leading '!' negates and a ']' right after '[' / '[!' is a literal member.
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return i
            i = close
        i += 1
    return None


def normalize_container_pattern(p: str) -> str:
    p = (p or "").strip()
    if not p:
        raise PatternError("container_pattern is required")
    pos = _unclosed_bracket(p)
    if pos is not None:
        raise PatternError(f"container_pattern: unclosed '[' at position {pos} in {p!r}")
    return p


def _always(_: object) -> bool:
    return True


def _never(_: object) -> bool:
    return False


@lru_cache(maxsize=4096)
def container_matcher(pattern: str) -> Callable[[str], bool]:
    """Return a predicate for container names (cached: the same pattern recurs constantly)."""
    if pattern == "*":
        return _always
    if not pattern:
        return _never
    if not _has_glob(pattern):
        return lambda name: name == pattern  # exact names are the common case; skip the regex
    regex = re.compile(fnmatch.translate(pattern))
    return lambda name: regex.match(name) is not None


# --------------------------------------------------------------------------- destination


# Both run for every connection, mostly on hosts seen before: parsing an address with
# ipaddress costs more than the rest of the decision. Bounded caches of pure functions.
@functools.lru_cache(maxsize=8192)
def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 literal (brackets and an IPv6 zone allowed), not a name."""
    try:
        ipaddress.ip_address(host.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=8192)
def canonical_host(host: str) -> str:
    """Canonical form of a destination host for matching.

    Lowercase, no surrounding whitespace, no trailing root dot, no IPv6 brackets; IP literals in
    their compressed form, and IPv4-mapped IPv6 addresses as plain IPv4 (they reach the same
    machine, so a rule on the IPv4 must apply to them too).
    """
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith(".") and h != ".":
        h = h[:-1]
    if h and (":" in h or h[0].isdigit()):
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            return h
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped if mapped is not None else ip)
    return h


class DestinationKind:
    ANY = "any"
    CIDR = "cidr"
    APEX_SUFFIX = "apex_suffix"  # '**.x'
    SUFFIX = "suffix"  # '*.x'
    GLOB = "glob"  # label-wise glob
    EXACT = "exact"


@dataclass(frozen=True, slots=True)
class ParsedDestination:
    kind: str
    value: str = ""  # canonical host (EXACT) or suffix (SUFFIX / APEX_SUFFIX)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    labels: tuple[str, ...] = ()  # GLOB: one glob per label (only * and ?)


def _check_labels(field_value: str, labels: list[str], allow_glob: bool) -> None:
    for label in labels:
        if not label:
            raise PatternError(f"destination_pattern: empty label in {field_value!r}")
        if not _LABEL_RE.match(label):
            raise PatternError(f"destination_pattern: invalid character in {field_value!r}")
        if not allow_glob and ("*" in label or "?" in label):
            raise PatternError(
                f"destination_pattern: wildcards are not allowed after the leading '*.' or '**.' "
                f"in {field_value!r}"
            )
        if "**" in label:
            raise PatternError(
                f"destination_pattern: '**' is only allowed as a whole leading label ('**.example.com') "
                f"in {field_value!r}"
            )


def _parse_cidr(p: str) -> ParsedDestination:
    try:
        net = ipaddress.ip_network(p, strict=False)
    except ValueError as exc:
        raise PatternError(f"destination_pattern: {p!r} is not a valid CIDR range ({exc})") from None
    return ParsedDestination(DestinationKind.CIDR, network=net)


def _parse_plain(p: str) -> ParsedDestination:
    """An IP literal or a hostname without wildcards."""
    canon = canonical_host(p)
    if ":" in canon:
        try:
            ipaddress.ip_address(canon)
        except ValueError:
            raise PatternError(
                f"destination_pattern: {p!r} is not a hostname or IP "
                "(a port belongs in port_pattern, not in the destination)"
            ) from None
        return ParsedDestination(DestinationKind.EXACT, value=canon)
    _check_labels(p, canon.split("."), allow_glob=False)
    return ParsedDestination(DestinationKind.EXACT, value=canon)


def parse_destination(pattern: str) -> ParsedDestination:
    """Validate and classify a destination pattern; raises PatternError."""
    p = (pattern or "").strip().lower()
    if not p:
        raise PatternError("destination_pattern is required")
    if any(c.isspace() for c in p):
        raise PatternError(f"destination_pattern: whitespace is not allowed in {p!r}")
    if p == "*":
        return ParsedDestination(DestinationKind.ANY)
    if "://" in p:
        raise PatternError(f"destination_pattern: {p!r} is a URL; give only the host (e.g. example.com)")
    if "/" in p:
        return _parse_cidr(p)
    if p.startswith("[") and p.endswith("]") and ":" in p:
        return _parse_plain(p)  # bracketed IPv6 literal
    if "[" in p or "]" in p:
        raise PatternError(f"destination_pattern: '[' and ']' are not supported in {p!r}")
    if p.endswith("."):
        p = p[:-1]  # root dot: 'example.com.' is 'example.com'
        if p in ("", "*", "**"):
            raise PatternError(f"destination_pattern: {pattern.strip()!r} names no domain")
    if p.startswith("**."):
        rest = p[3:]
        _check_labels(p, rest.split("."), allow_glob=False)
        return ParsedDestination(DestinationKind.APEX_SUFFIX, value=rest)
    if "**" in p:
        raise PatternError(
            f"destination_pattern: '**' is only allowed as a whole leading label ('**.example.com') in {p!r}"
        )
    if p.startswith("*.") and not _has_glob(p[2:]):
        rest = p[2:]
        _check_labels(p, rest.split("."), allow_glob=False)
        return ParsedDestination(DestinationKind.SUFFIX, value=rest)
    if _has_glob(p):
        labels = p.split(".")
        _check_labels(p, labels, allow_glob=True)
        return ParsedDestination(DestinationKind.GLOB, labels=tuple(labels))
    return _parse_plain(p)


def normalize_destination_pattern(p: str) -> str:
    """Validate a destination pattern and return its stored form.

    Stored form: stripped, lowercase, without a trailing root dot; a bracketed IPv6 literal is
    stored bare so that it scores and matches like any other IP.
    """
    parsed = parse_destination(p)
    if parsed.kind == DestinationKind.EXACT:
        return parsed.value  # canonical host: compressed IPv6, no brackets, no root dot
    text = p.strip().lower()
    if parsed.kind != DestinationKind.CIDR and text.endswith("."):
        text = text[:-1]
    return text


def _ip_in(network: ipaddress.IPv4Network | ipaddress.IPv6Network, host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.version == network.version and ip in network


def _label_regex(label: str) -> str:
    # Within a label '*' and '?' never cross a dot, so the label count is preserved.
    return "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in label)


@lru_cache(maxsize=4096)
def glob_labels_regex(labels: tuple[str, ...]) -> re.Pattern[str]:
    """Label-wise glob as one regex: same number of labels, each glob confined to its label."""
    return re.compile(r"\.".join(_label_regex(lab) for lab in labels))


def glob_labels_match(labels: tuple[str, ...], host: str) -> bool:
    return glob_labels_regex(labels).fullmatch(host) is not None


def parsed_matcher(parsed: ParsedDestination) -> Callable[[str], bool]:
    """Predicate over a host that is already in canonical_host() form."""
    kind = parsed.kind
    if kind == DestinationKind.ANY:
        return _always
    if kind == DestinationKind.CIDR:
        net = parsed.network
        assert net is not None
        return lambda h: _ip_in(net, h)
    if kind == DestinationKind.APEX_SUFFIX:
        apex, dotted = parsed.value, "." + parsed.value
        return lambda h: h == apex or h.endswith(dotted)
    if kind == DestinationKind.SUFFIX:
        dotted = "." + parsed.value
        return lambda h: h.endswith(dotted)
    if kind == DestinationKind.GLOB:
        regex = glob_labels_regex(parsed.labels)
        return lambda h: regex.fullmatch(h) is not None
    exact = parsed.value
    return lambda h: h == exact


def destination_matcher(pattern: str) -> Callable[[str], bool]:
    """Case-insensitive predicate over raw hosts; an invalid pattern matches nothing."""
    try:
        parsed = parse_destination(pattern)
    except PatternError:
        return _never
    if parsed.kind == DestinationKind.ANY:
        return _always
    inner = parsed_matcher(parsed)
    return lambda host: inner(canonical_host(host))


# --------------------------------------------------------------------------- ports


def parse_port_ranges(p: str | None) -> tuple[tuple[int, int], ...] | None:
    """Inclusive ranges for a port pattern, or None for '*'; raises PatternError."""
    text = (p or "").strip()
    if text in ("", "*"):
        return None
    ranges: list[tuple[int, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise PatternError(f"port_pattern: empty item in {text!r}")
        if item == "*":
            raise PatternError(f"port_pattern: '*' cannot be combined with other ports in {text!r}")
        m = _PORT_ITEM_RE.match(item)
        if not m:
            raise PatternError(
                f"port_pattern: {item!r} is not a port or range (expected e.g. 443, 80,443 or 8000-9000)"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        for port in (lo, hi):
            if not 1 <= port <= _MAX_PORT:
                raise PatternError(f"port_pattern: '{port}' is out of range 1-{_MAX_PORT}")
        if lo > hi:
            raise PatternError(f"port_pattern: range '{item}' has its start after its end")
        ranges.append((lo, hi))
    return tuple(ranges)


def _format_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def normalize_port_pattern(p: str | None) -> str:
    ranges = parse_port_ranges(p)
    if ranges is None:
        return "*"
    return ",".join(_format_range(lo, hi) for lo, hi in ranges)


@lru_cache(maxsize=4096)
def port_matcher(pattern: str) -> Callable[[int], bool]:
    """Predicate over ports; an invalid pattern matches nothing (as greyproxy does)."""
    try:
        ranges = parse_port_ranges(pattern)
    except PatternError:
        return _never
    if ranges is None:
        return _always
    if all(lo == hi for lo, hi in ranges):
        ports = frozenset(lo for lo, _ in ranges)
        return ports.__contains__
    return lambda port: any(lo <= port <= hi for lo, hi in ranges)


# --------------------------------------------------------------------------- specificity


def container_specificity(container_pattern: str) -> int:
    if container_pattern == "*":
        return 0
    return 100 if _has_glob(container_pattern) else 200


def specificity(container_pattern: str, destination_pattern: str, port_pattern: str) -> int:
    """§3.4 score: container 0/100/200, destination 0/10/20, port 0/1."""
    score = container_specificity(container_pattern)
    if destination_pattern != "*":
        score += 10 if _has_glob(destination_pattern) else 20
    if port_pattern not in ("*", ""):
        score += 1
    return score
