"""Canonical destinations (docs/decisions.md#rules): one spelling per address and per name, decided once.

Everything the proxy matches, logs or dials goes through `canonical_host` first, and rules are
stored in the same form, so a deny rule cannot be walked around by spelling the destination
another way. The spellings that reach the same machine and their one canonical form:

* IPv4 in every form `inet_aton` (and so curl, getaddrinfo and browsers, per the WHATWG URL
  host parser) accepts: 1 to 4 parts, each decimal, octal (leading ``0``) or hex (``0x``), the
  last part filling the remaining bytes: ``2130706444``, ``0x7f00000c``, ``127.12``,
  ``0177.0.0.014`` are all ``127.0.0.12``. A name whose last label is a number (decimal, or
  ``0x`` hex) *is* an IPv4 address; if it is not a valid one (``1.2.3.4.5``, ``127.0.0.256``,
  ``08.1``) it is refused, never looked up as a name.
* IPv6 with or without brackets, upper case, leading zeros, embedded dotted quads: compressed
  lower case (``str(IPv6Address)``). A zone id (``fe80::1%eth0``) is validated and dropped: rules
  name addresses, not interfaces.
* IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is the IPv4 address ``a.b.c.d``: the kernel sends it
  as IPv4 to that address, so an IPv4 rule must apply to it. Other IPv6 forms that embed an
  IPv4 (IPv4-compatible ``::a.b.c.d``, NAT64, 6to4, Teredo) reach a gateway or nothing, not the
  IPv4 host directly; they stay IPv6 here and the private-range guard judges what they embed
  (policy/addresses.py).
* Names: UTS 46 mapping (case folding, full-width forms, ideographic full stops), then each
  label as its IDNA 2008 A-label (punycode), so ``gіthub.com`` (Cyrillic і) and its
  ``xn--gthub-n2e.com`` are one destination, and never ``github.com``. A punycode label must
  decode to a valid U-label and re-encode to itself. ASCII labels may hold letters, digits,
  ``-`` and ``_`` (container and service names use ``_``); anything else (control characters,
  spaces, ``%``, ``*`` ...) is refused. One trailing root dot is dropped; names are at most 253
  characters, labels at most 63.

Refused spellings raise `BadDestination` (a `PatternError`): the proxy answers them with reason
``bad_destination`` and logs `printable()` of what was asked, the API with a 400.

Pure module: no gevent, no sockets, no database.
"""

from __future__ import annotations

import functools
import ipaddress
import unicodedata

import idna

__all__ = [
    "PatternError",
    "BadDestination",
    "MAX_NAME",
    "canonical_destination",
    "canonical_host",
    "try_canonical_host",
    "canonical_ip",
    "is_ip_literal",
    "canonical_label",
    "mapped_name",
    "MAX_INPUT",
    "printable",
    "to_unicode",
    "mixed_script",
    "display_fields",
]

MAX_NAME = 253  # RFC 1035, in text form without the root dot
MAX_LABEL = 63
MAX_INPUT = 1024  # longer input is refused before any parsing work
MAX_ZONE = 64

_DEC = frozenset("0123456789")
_OCT = frozenset("01234567")
_HEX = frozenset("0123456789abcdef")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_ZONE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-")
_OUTER_SPACE = " \t\r\n"


class PatternError(ValueError):
    """A rule pattern is malformed; the message says which field and what is wrong."""


class BadDestination(PatternError):
    """A destination no canonical spelling exists for; `display` is safe to log and show,
    `reason` says what is wrong with it."""

    def __init__(self, display: str, reason: str) -> None:
        super().__init__(f"destination {display!r}: {reason}")
        self.display = display
        self.reason = reason


def printable(text: str, limit: int = MAX_NAME, spaces: bool = False) -> str:
    """`text` with everything but printable ASCII escaped (never a control character, never a
    look-alike letter), cut to about `limit` characters: what a refused destination is logged
    as. `spaces` keeps ' ' as it is (for messages); in a destination it is escaped too."""
    out: list[str] = []
    low = 0x20 if spaces else 0x21
    for ch in text[:limit]:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif low <= o < 0x7F:
            out.append(ch)
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    if len(text) > limit:
        out.append("...")
    return "".join(out)


# --------------------------------------------------------------------------- IPv4 (inet_aton)


def _ipv4_part(part: str) -> int | None:
    if part[:2] == "0x":
        digits = part[2:]
        if not digits:
            return 0  # '0x' alone is 0 for inet_aton and for the WHATWG parser
        return int(digits, 16) if all(c in _HEX for c in digits) else None
    if not part or not all(c in _DEC for c in part):
        return None
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if all(c in _OCT for c in part) else None
    return int(part)


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    if last and all(c in _DEC for c in last):
        return True
    return last[:2] == "0x" and all(c in _HEX for c in last[2:])


def _parse_ipv4(labels: list[str]) -> ipaddress.IPv4Address | None:
    if not 1 <= len(labels) <= 4:
        return None
    numbers: list[int] = []
    for part in labels:
        n = _ipv4_part(part)
        if n is None:
            return None
        numbers.append(n)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


# --------------------------------------------------------------------------- IPv6


def _parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    addr, sep, zone = text.partition("%")
    if sep and not (0 < len(zone) <= MAX_ZONE and all(c in _ZONE_CHARS for c in zone)):
        return None
    if not addr or not all(c in _IPV6_CHARS for c in addr):
        return None
    try:
        return ipaddress.IPv6Address(addr)
    except ValueError:
        return None


def _ip_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# --------------------------------------------------------------------------- names


def canonical_label(label: str) -> str:
    """One label (already UTS 46 mapped) as its canonical A-label; raises ValueError."""
    if not label:
        raise ValueError("empty label")
    if label.isascii():
        if not all(c in _NAME_CHARS for c in label):
            raise ValueError("invalid character")
        if len(label) > MAX_LABEL:
            raise ValueError(f"label longer than {MAX_LABEL} characters")
        if label.startswith("xn--"):
            try:
                ulabel = idna.ulabel(label)
                again = idna.alabel(ulabel).decode("ascii")
            except (idna.IDNAError, UnicodeError, ValueError) as exc:
                raise ValueError(f"invalid punycode label {label!r} ({printable(str(exc), 160, spaces=True)})") from None
            if again != label:
                raise ValueError(f"punycode label {label!r} is not in canonical form ({again!r})")
        return label
    try:
        return idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise ValueError(f"invalid internationalised label ({printable(str(exc), 160, spaces=True)})") from None


def mapped_name(text: str) -> str:
    """UTS 46 mapping (non-transitional, STD3 off so '_' survives); ASCII only needs lower()."""
    if text.isascii():
        return text.lower()
    try:
        return idna.uts46_remap(text, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise ValueError(f"not a valid internationalised name ({printable(str(exc), 160, spaces=True)})") from None


# Result of one canonicalisation: (canonical text or None, is an IP, error message or None).
_Result = tuple[str | None, bool, str | None]


def _canonicalize(text: str) -> _Result:
    if len(text) > MAX_INPUT:
        return None, False, f"longer than {MAX_INPUT} characters"
    h = text.strip(_OUTER_SPACE)
    if not h:
        return None, False, "empty destination"
    if h[0] == "[" or h[-1] == "]":
        ip6 = _parse_ipv6(h[1:-1]) if h[0] == "[" and h[-1] == "]" else None
        if ip6 is None:
            return None, False, "brackets hold no valid IPv6 address"
        return _ip_text(ip6), True, None
    if ":" in h:
        ip6 = _parse_ipv6(h)
        if ip6 is None:
            return None, False, "not a hostname or IP (a port belongs in port_pattern, not in the destination)"
        return _ip_text(ip6), True, None
    try:
        m = mapped_name(h)
    except ValueError as exc:
        return None, False, str(exc)
    if m.endswith("."):
        m = m[:-1]  # the root: 'example.com.' is 'example.com'
    if not m:
        return None, False, "names no domain"
    labels = m.split(".")
    if _ends_in_number(labels):
        ip4 = _parse_ipv4(labels)
        if ip4 is None:
            return None, False, "ends in a number but is not a valid IPv4 address"
        return str(ip4), True, None
    try:
        name = ".".join(canonical_label(label) for label in labels)
    except ValueError as exc:
        return None, False, str(exc)
    if len(name) > MAX_NAME:
        return None, False, f"name longer than {MAX_NAME} characters"
    return name, False, None


# On the connection path for every admission, mostly for hosts seen before; bounded in entries
# and, since only short keys are kept, in memory (an agent sending long junk hosts cannot pin
# megabytes here: no valid destination is longer than this anyway).
MAX_CACHED_KEY = 300


@functools.lru_cache(maxsize=8192)
def _cached_short(text: str) -> _Result:
    return _canonicalize(text)


def _cached(text: str) -> _Result:
    return _cached_short(text) if len(text) <= MAX_CACHED_KEY else _canonicalize(text)


def canonical_destination(host: str) -> str:
    """The one spelling of a destination (IP or name) that is matched, logged and dialled;
    raises BadDestination when `host` has none (invalid IDNA, control characters, bad IP
    spellings...). Idempotent on what it returns."""
    value, _, error = _cached(host)
    if value is None:
        raise BadDestination(printable(host), error or "invalid")
    return value


def canonical_host(host: str) -> str:
    """canonical_destination for the connection path, where nothing may raise: a destination
    with no canonical spelling comes back as its `printable()` escape instead. That text is
    never a valid destination itself (an escape adds a backslash, a cut adds '...', and text
    left as it was is the invalid input), so `decide()` refuses it as ``bad_destination``, no
    rule matches it, and it is safe to log and show."""
    value = _cached(host)[0]
    return value if value is not None else printable(host)


def try_canonical_host(host: str) -> str | None:
    """The canonical spelling, or None when `host` has none."""
    return _cached(host)[0]


def canonical_ip(text: str) -> str | None:
    """Canonical text of an IP address in any accepted spelling, or None when `text` is not one."""
    value, is_ip, _ = _cached(text)
    return value if is_ip else None


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address in any spelling canonical_host accepts, not a name."""
    return _cached(host)[1]


# --------------------------------------------------------------------------- display


def to_unicode(host: str) -> str:
    """The Unicode form of a canonical name, for display next to the punycode (never for
    matching); an IP or an undecodable label is returned as it is."""
    if "xn--" not in host:
        return host
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            try:
                label = idna.ulabel(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                pass
        labels.append(label)
    return ".".join(labels)


# Scripts that are written together: a Japanese label mixes Han and kana, a Korean one Han and
# Hangul. Latin digits and '-' belong to no script and never count.
_SCRIPT_GROUPS = {"HIRAGANA": "JAPANESE", "KATAKANA": "JAPANESE", "KATAKANA-HIRAGANA": "JAPANESE"}


def _script(ch: str) -> str | None:
    if not unicodedata.category(ch).startswith("L"):
        return None  # digits, marks (they inherit), '-', '_'
    name = unicodedata.name(ch, "")
    word = name.split(" ", 1)[0] if name else "UNKNOWN"
    if word == "CJK":
        return "HAN"
    return _SCRIPT_GROUPS.get(word, word)


def _label_mixes(label: str) -> bool:
    scripts = {s for s in map(_script, label) if s is not None}
    if len(scripts) <= 1:
        return False
    # Han with Japanese kana, or Han with Hangul, is ordinary writing.
    return not (scripts <= {"HAN", "JAPANESE"} or scripts <= {"HAN", "HANGUL"})


def mixed_script(host: str) -> bool:
    """Some label of the name mixes letters of different scripts (Latin with Cyrillic, ...): the
    usual shape of a look-alike (homograph) name. Works on the punycode or the Unicode form."""
    unicode_form = to_unicode(host)
    if unicode_form.isascii():
        return False
    return any(_label_mixes(label) for label in unicode_form.split("."))


def display_fields(host: str | None) -> dict[str, object]:
    """What the API adds next to a destination (name, pattern or IP) for the humans deciding:
    its Unicode form (only when it differs from the punycode) and whether a label mixes scripts."""
    if not host or "xn--" not in host:
        return {"destination_unicode": None, "mixed_script": False}
    unicode_form = to_unicode(host)
    return {
        "destination_unicode": unicode_form if unicode_form != host else None,
        "mixed_script": mixed_script(unicode_form),
    }
