"""Rule pattern dialects: validation, matching and specificity (docs/user-guide.md#rules-pending-requests-and-holds).

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
import ipaddress
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .canonical import (
    MAX_INPUT,
    MAX_NAME,
    BadDestination,
    PatternError,
    canonical_destination,
    canonical_host,
    canonical_label,
    is_ip_literal,
    mapped_name,
    printable,
    try_canonical_host,
)

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
    "canonical_destination",
    "try_canonical_host",
    "is_ip_literal",
    "BadDestination",
    "MAX_CONTAINER_PATTERN",
    "MAX_DESTINATION_NAME",
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
# A label of a glob pattern, once mapped: what a canonical ASCII label may hold, plus '*' and '?'.
_GLOB_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_*?")
_CIDR_CHARS = frozenset("0123456789abcdefABCDEF:./")
_PORT_ITEM_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$", re.ASCII)
_MAX_PORT = 65535
MAX_CONTAINER_PATTERN = 256
MAX_DESTINATION_NAME = MAX_NAME  # the name part, after a leading '*.' or '**.'
MAX_PORT_PATTERN = 1024
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _control_char(text: str, categories: tuple[str, ...] = ("Cc", "Cs", "Co")) -> str | None:
    """The first control (or lone surrogate, or private-use) character in `text`, if any.
    Container patterns also refuse format characters (Cf: bidi overrides, zero-width marks),
    which would make the dashboard show a pattern other than the one matched."""
    for ch in text:
        if unicodedata.category(ch) in categories:
            return ch
    return None


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
    if len(p) > MAX_CONTAINER_PATTERN:
        raise PatternError(f"container_pattern: longer than {MAX_CONTAINER_PATTERN} characters")
    bad = _control_char(p, ("Cc", "Cs", "Co", "Cf"))
    if bad is not None:
        raise PatternError(f"container_pattern: control character {printable(bad)!r} in {printable(p)!r}")
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


def _canonical_labels(field_value: str, labels: list[str], allow_glob: bool) -> tuple[str, ...]:
    """Each label in its canonical form (A-label); a label holding a wildcard stays as written
    (ASCII only: a glob over Unicode has no punycode form)."""
    out = []
    shown = printable(field_value)
    for label in labels:
        if not label:
            raise PatternError(f"destination_pattern: empty label in {shown!r}")
        if "**" in label:
            raise PatternError(
                f"destination_pattern: '**' is only allowed as a whole leading label ('**.example.com') "
                f"in {shown!r}"
            )
        if "*" in label or "?" in label:
            if not allow_glob:
                raise PatternError(
                    f"destination_pattern: wildcards are not allowed after the leading '*.' or '**.' "
                    f"in {shown!r}"
                )
            if not all(c in _GLOB_LABEL_CHARS for c in label):
                raise PatternError(
                    f"destination_pattern: invalid character in {shown!r} (a label with a wildcard "
                    "may hold only ASCII letters, digits, '-', '_', '*' and '?')"
                )
            out.append(label)
            continue
        try:
            out.append(canonical_label(label))
        except ValueError as exc:
            raise PatternError(f"destination_pattern: {exc} in {shown!r}") from None
    name = ".".join(out)
    if len(name) > MAX_DESTINATION_NAME:
        raise PatternError(f"destination_pattern: longer than {MAX_DESTINATION_NAME} characters (the longest DNS name)")
    return tuple(out)


def _parse_cidr(p: str) -> ParsedDestination:
    if not all(c in _CIDR_CHARS for c in p):
        raise PatternError(f"destination_pattern: {p!r} is not a valid CIDR range (invalid character)")
    try:
        net = ipaddress.ip_network(p, strict=False)
    except ValueError as exc:
        raise PatternError(f"destination_pattern: {p!r} is not a valid CIDR range ({exc})") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_IPV4_MAPPED):
        # Hosts are matched in canonical form, where an IPv4-mapped address is its IPv4 address.
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return ParsedDestination(DestinationKind.CIDR, network=net)


def _parse_plain(p: str) -> ParsedDestination:
    """An IP literal (any spelling) or a hostname without wildcards."""
    try:
        return ParsedDestination(DestinationKind.EXACT, value=canonical_destination(p))
    except BadDestination as exc:
        raise PatternError(f"destination_pattern: {exc.reason} in {exc.display!r}") from None


def parse_destination(pattern: str) -> ParsedDestination:
    """Validate and classify a destination pattern; raises PatternError (and nothing else).

    Names are UTS 46 mapped and their labels stored as A-labels (punycode), IP literals in their
    canonical spelling (policy/canonical.py), so a rule written as ``bücher.example``
    matches the destination ``xn--bcher-kva.example`` and ``2130706444`` is ``127.0.0.12``."""
    raw = (pattern or "").strip()
    if not raw:
        raise PatternError("destination_pattern is required")
    if len(raw) > MAX_INPUT:
        raise PatternError(f"destination_pattern: longer than {MAX_INPUT} characters")
    if any(c.isspace() for c in raw):
        raise PatternError(f"destination_pattern: whitespace is not allowed in {printable(raw)!r}")
    bad = _control_char(raw)
    if bad is not None:
        raise PatternError(f"destination_pattern: control character {printable(bad)!r} in {printable(raw)!r}")
    try:
        p = mapped_name(raw)  # lower case; full-width forms and ideographic dots mapped (UTS 46)
    except ValueError as exc:
        raise PatternError(f"destination_pattern: {exc} in {printable(raw)!r}") from None
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
            raise PatternError(f"destination_pattern: {raw!r} names no domain")
    if p.startswith("**."):
        rest = _canonical_labels(p, p[3:].split("."), allow_glob=False)
        return ParsedDestination(DestinationKind.APEX_SUFFIX, value=".".join(rest))
    if "**" in p:
        raise PatternError(
            f"destination_pattern: '**' is only allowed as a whole leading label ('**.example.com') in {p!r}"
        )
    if p.startswith("*.") and not _has_glob(p[2:]):
        rest = _canonical_labels(p, p[2:].split("."), allow_glob=False)
        return ParsedDestination(DestinationKind.SUFFIX, value=".".join(rest))
    if _has_glob(p):
        return ParsedDestination(DestinationKind.GLOB, labels=_canonical_labels(p, p.split("."), allow_glob=True))
    return _parse_plain(p)


def normalize_destination_pattern(p: str) -> str:
    """Validate a destination pattern and return its stored form (idempotent).

    Stored form: an IP literal in its canonical spelling (compressed IPv6 without brackets or
    zone, IPv4-mapped as IPv4, every IPv4 spelling as a dotted quad); a name UTS 46 mapped with
    A-label (punycode) labels and no trailing root dot; a CIDR as its network; wildcards as written.
    """
    parsed = parse_destination(p)
    kind = parsed.kind
    if kind == DestinationKind.ANY:
        return "*"
    if kind == DestinationKind.EXACT:
        return parsed.value
    if kind == DestinationKind.CIDR:
        return str(parsed.network)
    if kind == DestinationKind.APEX_SUFFIX:
        return "**." + parsed.value
    if kind == DestinationKind.SUFFIX:
        return "*." + parsed.value
    return ".".join(parsed.labels)


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

    def matches(host: str) -> bool:
        canonical = try_canonical_host(host)
        return canonical is not None and inner(canonical)

    return matches


# --------------------------------------------------------------------------- ports


def parse_port_ranges(p: str | None) -> tuple[tuple[int, int], ...] | None:
    """Inclusive ranges for a port pattern, or None for '*'; raises PatternError."""
    text = (p or "").strip()
    if text in ("", "*"):
        return None
    if len(text) > MAX_PORT_PATTERN:
        raise PatternError(f"port_pattern: longer than {MAX_PORT_PATTERN} characters")
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
    """Specificity score: container 0/100/200, destination 0/10/20, port 0/1."""
    score = container_specificity(container_pattern)
    if destination_pattern != "*":
        score += 10 if _has_glob(destination_pattern) else 20
    if port_pattern not in ("*", ""):
        score += 1
    return score
