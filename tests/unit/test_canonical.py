"""Canonical destinations (docs/decisions.md#rules): one spelling per address and per name, for matching, logging,
dialling and storing rules. Property-based where the space of spellings is large."""

from __future__ import annotations

import ipaddress
import unicodedata

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from greyproxy.policy.canonical import (
    BadDestination,
    canonical_destination,
    canonical_host,
    canonical_ip,
    display_fields,
    is_ip_literal,
    mixed_script,
    printable,
    to_unicode,
    try_canonical_host,
)
from greyproxy.policy.decide import ConnectionRequest, PolicyState, Verdict, decide
from greyproxy.policy.index import RuleIndex, RuleSpec
from greyproxy.policy.patterns import (
    PatternError,
    destination_matcher,
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
)
from greyproxy.policy.scopes import patterns_for_scope
from greyproxy.services.rules import NewRule, validated

# Health checks are about how fast examples are made (a loaded CI box, names assume() rejects),
# not about what is asserted.
PROPS = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _controls(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Co")]


# --------------------------------------------------------------------------- IPv4 spellings


def _octal(n: int) -> str:
    return "0" + format(n, "o")


def _hex(n: int, upper: bool = False) -> str:
    text = "0x" + format(n, "x")
    return text.upper() if upper else text


def _part(n: int, base: str) -> str:
    return {"dec": str(n), "oct": _octal(n), "hex": _hex(n), "HEX": _hex(n, upper=True)}[base]


BASES = st.sampled_from(["dec", "oct", "hex", "HEX"])


@st.composite
def ipv4_spelling(draw: st.DrawFn) -> tuple[int, str]:
    """(address as an int, one of the spellings inet_aton / getaddrinfo / curl accept for it)."""
    n = draw(st.integers(min_value=0, max_value=2**32 - 1))
    a, b, c, d = n.to_bytes(4, "big")
    form = draw(st.sampled_from(["int", "2part", "3part", "4part", "mapped", "mapped_hex", "bracketed_mapped"]))
    if form == "int":
        text = _part(n, draw(BASES))
    elif form == "2part":
        text = f"{_part(a, draw(BASES))}.{_part(n & 0xFFFFFF, draw(BASES))}"
    elif form == "3part":
        text = f"{_part(a, draw(BASES))}.{_part(b, draw(BASES))}.{_part(n & 0xFFFF, draw(BASES))}"
    elif form == "4part":
        text = ".".join(_part(x, draw(BASES)) for x in (a, b, c, d))
    elif form == "mapped":
        text = f"::ffff:{a}.{b}.{c}.{d}"
    elif form == "mapped_hex":
        text = f"0:0:0:0:0:ffff:{n >> 16:04x}:{n & 0xFFFF:x}"
    else:
        text = f"[::FFFF:{n >> 16:X}:{n & 0xFFFF:04X}]"
    if form in ("int", "2part", "3part", "4part") and draw(st.booleans()):
        text += "."  # the root dot
    if draw(st.booleans()):
        text = f" {text}\t"
    return n, text


@PROPS
@given(ipv4_spelling())
@example((0x7F00000C, "2130706444"))
@example((0x7F00000C, "0x7f00000c"))
@example((0x7F00000C, "127.12"))
@example((0x7F00000C, "0177.0.0.014"))
@example((0x7F00000C, "::ffff:127.0.0.12"))
@example((0x7F00000C, "[::ffff:7f00:c]"))
def test_every_ipv4_spelling_is_one_address(case: tuple[int, str]) -> None:
    n, text = case
    expected = str(ipaddress.IPv4Address(n))
    assert canonical_host(text) == expected
    assert canonical_ip(text) == expected
    assert is_ip_literal(text)


@PROPS
@given(st.integers(min_value=0, max_value=2**128 - 1), st.sampled_from(["compressed", "exploded", "upper", "bracket"]),
       st.sampled_from(["", "%eth0", "%1"]))
def test_every_ipv6_spelling_is_one_address(n: int, form: str, zone: str) -> None:
    ip = ipaddress.IPv6Address(n)
    text = {"compressed": ip.compressed, "exploded": ip.exploded, "upper": ip.exploded.upper(),
            "bracket": f"[{ip.exploded}]"}[form]
    if zone:
        text = f"[{text.strip('[]')}{zone}]" if form == "bracket" else text + zone
    expected = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else ip.compressed
    assert canonical_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4.5",  # five parts: ends in a number, but no address
        "127.0.0.256",
        "256.1",
        "4294967296",
        "08.1",  # '08' is no octal number
        "0x1g.2",  # ok as a name? no: the last label '2' is a number, so all must parse
        "[1.2.3.4]",  # brackets are for IPv6
        "[::1%\x00x]",  # a zone id with a NUL
        "[::1%]",
        "::1%eth 0",
        "::ffff:127.000.0.1",  # leading zeros inside a dotted quad are not accepted
        "[::1",
        "::1]",
        "1::2::3",
    ],
)
def test_bad_ip_spellings_are_refused(text: str) -> None:
    with pytest.raises(BadDestination) as info:
        canonical_destination(text)
    assert not _controls(info.value.display)
    assert try_canonical_host(text) is None
    assert canonical_ip(text) is None
    # The connection path's form: the escape, itself no destination, so no rule can match it.
    assert canonical_host(text) == info.value.display
    assert try_canonical_host(canonical_host(text)) is None


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GitHub.COM.", "github.com"),
        ("gіthub.com", "xn--gthub-n2e.com"),  # Cyrillic і
        ("xn--gthub-n2e.com", "xn--gthub-n2e.com"),
        ("XN--GTHUB-N2E.COM", "xn--gthub-n2e.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("ｇｉｔｈｕｂ．ｃｏｍ", "github.com"),  # full-width letters and dot (UTS 46 mapping)
        ("例え。jp", "xn--r8jz45g.jp"),  # ideographic full stop
        ("straße.de", "xn--strae-oqa.de"),  # non-transitional: ß is kept
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("web_1", "web_1"),
        ("0x7f.com", "0x7f.com"),  # only a numeric *last* label makes an address
        ("１２７．０．０．１２", "127.0.0.12"),
    ],
)
def test_names_canonical(text: str, expected: str) -> None:
    assert canonical_host(text) == expected
    assert canonical_host(expected) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a.test\x00",
        "a\x01b.example",
        "exa mple.com",
        "a.test:451:00",
        "xn--zz.example",  # not punycode
        "xn--abc-.example",
        "xn--.example",
        "a..b",
        ".a",
        ".",
        "",
        "   ",
        "a*.example",
        "a%2e.example",
        "user@host",
        "a/b",
        "i❤.ws",  # not valid IDNA 2008
        "a" * 64 + ".example",
        ".".join(["a" * 60] * 5),  # 304 characters
        "x" * 5000,
        "a\udcff.example",  # an undecodable byte from SOCKS5 (surrogateescape)
    ],
)
def test_bad_names_are_refused_cleanly(text: str) -> None:
    with pytest.raises(BadDestination) as info:
        canonical_destination(text)
    assert isinstance(info.value, PatternError)
    assert not _controls(info.value.display) and info.value.display.isascii()
    assert len(info.value.display) < 300
    assert not _controls(str(info.value))
    assert try_canonical_host(canonical_host(text)) is None  # the escape never becomes a destination


@PROPS
@given(st.text(max_size=80))
@example("[::1%\x00x]")
@example("0x")
@example("xn--")
def test_canonical_host_total_and_idempotent(text: str) -> None:
    """Any text either has a canonical form, which is its own canonical form, or is refused
    with BadDestination; never another exception. canonical_host never raises, and what it
    returns for refused text is never a valid destination (so it can never match a rule)."""
    shown = canonical_host(text)
    assert not _controls(shown) and shown.isascii()
    try:
        canon = canonical_destination(text)
    except BadDestination as exc:
        assert not _controls(exc.display)
        assert shown == exc.display and try_canonical_host(shown) is None
        return
    assert shown == canon
    assert canonical_destination(canon) == canon
    assert canon.isascii() and not _controls(canon)
    assert 0 < len(canon) <= 253
    assert canon == canon.lower()


LABEL_ALPHABET = st.sampled_from(list("abcxyz019-_") + ["ü", "і", "ß", "é", "例", "ж", "α", "Ａ", "。", ".", "\u200d"])


@PROPS
@given(st.lists(st.text(LABEL_ALPHABET, min_size=1, max_size=12), min_size=1, max_size=4))
def test_unicode_names_idempotent(labels: list[str]) -> None:
    name = ".".join(labels)
    canon = try_canonical_host(name)
    assume(canon is not None)
    assert canonical_host(canon) == canon
    assert canon.isascii()
    # The Unicode form maps back to the same destination (what the dashboard shows is what is matched).
    assert canonical_host(to_unicode(canon)) == canon


# --------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("**.BÜCHER.example", "**.xn--bcher-kva.example"),
        ("api.*.bücher.example", "api.*.xn--bcher-kva.example"),
        ("2130706444", "127.0.0.12"),
        ("0177.0.0.014", "127.0.0.12"),
        ("::ffff:127.0.0.12", "127.0.0.12"),
        ("[::FFFF:7f00:c]", "127.0.0.12"),
        ("[fe80::1%eth0]", "fe80::1"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("xn--gthub-n2e.com", "xn--gthub-n2e.com"),
    ],
)
def test_patterns_stored_canonical(raw: str, stored: str) -> None:
    assert normalize_destination_pattern(raw) == stored
    assert normalize_destination_pattern(stored) == stored


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[::1%\x00x]", "control character"),
        ("a.test\x00", "control character"),
        ("a.test:451:00", "port belongs in port_pattern"),
        ("xn--zz.example", "invalid punycode"),
        ("bü*.example", "wildcard"),
        ("1.2.3.4.5", "not a valid IPv4"),
        ("a" * 254, "longer than"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("x" * 2000, "longer than"),
        ("a\u202eb.example", "internationalised"),  # right-to-left override
        ("10.0.0.0/8\x00", "control character"),
        ("::1%eth0/128", "not a valid CIDR"),
    ],
)
def test_bad_patterns(raw: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        normalize_destination_pattern(raw)


def test_container_and_port_pattern_limits() -> None:
    assert normalize_container_pattern("web-*") == "web-*"
    with pytest.raises(PatternError, match="longer than 256"):
        normalize_container_pattern("a" * 257)
    for bad in ("web\x00", "we\nb", "a\x7fb", "web\u202e1", "a\u200bb"):
        with pytest.raises(PatternError, match="control character"):
            normalize_container_pattern(bad)
    with pytest.raises(PatternError, match="longer than"):
        normalize_port_pattern("80," * 1000)


PATTERN_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(st.sampled_from(list("*?.ab0x9:-_[]/%ü\x00 ")), max_size=30),
    st.builds(lambda p, h: p + h, st.sampled_from(["", "*.", "**.", "[", "::ffff:"]), st.text(max_size=30)),
)


@PROPS
@given(PATTERN_TEXT)
@example("[::1%\x00x]")
@example("a.test\x00")
@example("a.test:451:00")
def test_destination_patterns_normalise_idempotently_or_raise(text: str) -> None:
    try:
        stored = normalize_destination_pattern(text)
    except PatternError:
        return
    assert normalize_destination_pattern(stored) == stored
    assert not _controls(stored) and "\x00" not in stored
    assert stored.isascii()
    assert len(stored) <= 256


@PROPS
@given(st.text(max_size=300))
def test_container_patterns_normalise_idempotently_or_raise(text: str) -> None:
    try:
        stored = normalize_container_pattern(text)
    except PatternError:
        return
    assert normalize_container_pattern(stored) == stored
    assert not _controls(stored) and len(stored) <= 256


@PROPS
@given(st.text(st.sampled_from(list("0123456789,-* \t\x0b")), max_size=40))
def test_port_patterns_normalise_idempotently_or_raise(text: str) -> None:
    try:
        stored = normalize_port_pattern(text)
    except PatternError:
        return
    assert normalize_port_pattern(stored) == stored
    assert not _controls(stored)


# --------------------------------------------------------------------------- matching


def _index(*rules: tuple[str, str, str]) -> RuleIndex:
    return RuleIndex([RuleSpec(i + 1, c, d, "*", a) for i, (c, d, a) in enumerate(rules)])


@PROPS
@given(ipv4_spelling())
def test_a_deny_rule_holds_for_every_spelling(case: tuple[int, str]) -> None:
    n, text = case
    ip = str(ipaddress.IPv4Address(n))
    state = PolicyState(index=_index(("*", "*", "allow"), ("*", ip, "deny")))
    decision = decide(ConnectionRequest("agent", canonical_host(text), 80), state)
    assert decision.verdict is Verdict.DENY and decision.reason == "denied_by_rule"
    assert destination_matcher(ip)(text)


def test_unicode_rule_matches_punycode_and_back() -> None:
    rule = normalize_destination_pattern("bücher.example")
    index = _index(("*", rule, "deny"))
    for host in ("xn--bcher-kva.example", "bücher.example", "BÜCHER.example."):
        assert index.match("agent", canonical_host(host), 443).action == "deny"
    # An old row stored in Unicode still matches: the index reads patterns canonically too.
    assert _index(("*", "bücher.example", "deny")).match("agent", "xn--bcher-kva.example", 443) is not None


def test_bad_destination_is_denied_in_every_mode() -> None:
    state = PolicyState(index=_index(("*", "*", "allow")), silent_mode="allow")
    decision = decide(ConnectionRequest("agent", "xn--zz.example", 80), state)
    assert decision.verdict is Verdict.DENY and decision.reason == "bad_destination"
    assert _index(("*", "*", "allow")).match("agent", "a\x00.example", 80) is None


# --------------------------------------------------------------------------- rule writes


@pytest.mark.parametrize("host", ["a.test\x00", "a.test:451:00", "[::1%\x00x]", "xn--zz.example"])
@pytest.mark.parametrize("scope", ["exact", "any_port", "subdomain_wildcard", "all_containers"])
def test_rules_from_pending_rows_are_validated(host: str, scope: str) -> None:
    container, dest, port = patterns_for_scope(scope, "agent1", host, 443)
    with pytest.raises(PatternError):
        validated(NewRule(container, dest, port, "allow"))


def test_validated_rule_is_stored_form() -> None:
    new = validated(NewRule(" agent1 ", "BÜCHER.example.", " 80 , 443 ", "deny"))
    assert (new.container_pattern, new.destination_pattern, new.port_pattern) == (
        "agent1", "xn--bcher-kva.example", "80,443")
    assert validated(new) == new
    with pytest.raises(PatternError, match="action"):
        validated(NewRule("a", "b.example", "*", "maybe"))


# --------------------------------------------------------------------------- display


@pytest.mark.parametrize(
    ("host", "unicode", "mixed"),
    [
        ("xn--gthub-n2e.com", "gіthub.com", True),  # Latin + Cyrillic in one label
        ("xn--bcher-kva.example", "bücher.example", False),
        ("*.xn--bcher-kva.example", "*.bücher.example", False),
        ("xn--r8jz45g.jp", "例え.jp", False),  # Han + Hiragana is ordinary Japanese
        ("example.com", None, False),
        ("127.0.0.12", None, False),
        ("xn--zz.example", None, False),  # undecodable: shown as is
    ],
)
def test_display_fields(host: str, unicode: str | None, mixed: bool) -> None:
    assert display_fields(host) == {"destination_unicode": unicode, "mixed_script": mixed}


def test_mixed_script_and_printable() -> None:
    assert mixed_script("pаypal.com")  # Cyrillic а
    assert not mixed_script("паурал.com")  # one script per label (a whole-script look-alike: not detected)
    assert printable("a\x00b\\ c\u0456") == "a\\x00b\\\\\\x20c\\u0456"
