"""Pattern dialects (docs/user-guide.md#rules-pending-requests-and-holds) and specificity."""

from __future__ import annotations

import pytest

from greyproxy.policy.patterns import (
    PatternError,
    container_matcher,
    destination_matcher,
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
    port_matcher,
    specificity,
)

# --------------------------------------------------------------------------- container


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "myapp", True),
        ("*", "", True),
        ("myapp", "myapp", True),
        ("myapp", "MyApp", False),  # case-sensitive
        ("myapp", "myapp-1", False),
        ("my*", "myapp-1", True),
        ("my?pp", "myapp", True),
        ("my?pp", "myaapp", False),
        ("app-[0-9]", "app-3", True),
        ("app-[0-9]", "app-x", False),
        ("app-[!0-9]", "app-x", True),
        ("", "", False),  # empty pattern matches nothing
        ("", "x", False),
        ("unknown-*", "unknown-10.0.0.2", True),
    ],
)
def test_container_matcher(pattern: str, name: str, expected: bool) -> None:
    assert container_matcher(pattern)(name) is expected


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [(" myapp ", "myapp"), ("app-[0-9]", "app-[0-9]"), ("a[]]b", "a[]]b"), ("*", "*"), ("x]", "x]")],
)
def test_normalize_container_ok(raw: str, normalized: str) -> None:
    assert normalize_container_pattern(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "container_pattern is required"),
        ("   ", "container_pattern is required"),
        ("app-[0-9", "unclosed '['"),
    ],
)
def test_normalize_container_errors(raw: str, message: str) -> None:
    with pytest.raises(PatternError, match=message.replace("[", r"\[")):
        normalize_container_pattern(raw)


# --------------------------------------------------------------------------- destination


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        # '*'
        ("*", "anything.example", True),
        ("*", "10.1.2.3", True),
        # exact, case-insensitive, root dot
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com", True),
        ("Example.COM", "example.com", True),
        ("example.com", "example.com.", True),
        ("example.com", "api.example.com", False),
        ("example.com", "example.com.evil", False),
        # '*.x': any depth, not the apex
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "API.Example.Com", True),
        # '**.x': apex and any depth
        ("**.example.com", "example.com", True),
        ("**.example.com", "api.example.com", True),
        ("**.example.com", "a.b.c.example.com", True),
        ("**.example.com", "notexample.com", False),
        # label globs
        ("api.*", "api.github", True),
        ("api.*", "api.github.com", False),
        ("api.*", "web.github", False),
        ("*.*.npmjs.org", "a.b.npmjs.org", True),
        ("*.*.npmjs.org", "b.npmjs.org", False),
        ("*.*.npmjs.org", "x.a.b.npmjs.org", False),
        ("foo*.example.com", "foo.example.com", True),
        ("foo*.example.com", "foobar.example.com", True),
        ("foo*.example.com", "foo.bar.example.com", False),
        ("foo*.example.com", "barfoo.example.com", False),
        ("fo?.example.com", "foo.example.com", True),
        ("fo?.example.com", "fooo.example.com", False),
        ("FOO*.Example.com", "foobar.EXAMPLE.com", True),
        ("10.0.0.*", "10.0.0.7", True),
        # CIDR v4 / v6
        ("10.0.0.0/8", "10.200.3.4", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/8", "example.com", False),
        ("10.0.0.0/8", "::1", False),
        ("10.1.2.3/8", "10.9.9.9", True),  # host bits ignored (strict=False)
        ("192.168.1.5/32", "192.168.1.5", True),
        ("2001:db8::/32", "2001:db8::1", True),
        ("2001:db8::/32", "[2001:DB8::abcd]", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("2001:db8::/32", "10.0.0.1", False),
        ("10.0.0.0/8", "::ffff:10.1.1.1", True),  # IPv4-mapped IPv6 is the IPv4 address
        # IP literals
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("::1", "::1", True),
        ("::1", "[::1]", True),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("[::1]", "::1", True),
        ("2001:DB8::1", "2001:db8:0::1", True),
        ("1.2.3.4", "::ffff:1.2.3.4", True),
        # invalid patterns never match
        ("***", "a.b", False),
        ("a b", "a b", False),
        ("10.0.0.0/33", "10.0.0.1", False),
    ],
)
def test_destination_matcher(pattern: str, host: str, expected: bool) -> None:
    assert destination_matcher(pattern)(host) is expected


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  Example.COM ", "example.com"),
        ("example.com.", "example.com"),
        ("*", "*"),
        ("*.Example.com", "*.example.com"),
        ("**.example.com", "**.example.com"),
        ("api.*", "api.*"),
        ("*.*.npmjs.org", "*.*.npmjs.org"),
        ("foo*.example.com", "foo*.example.com"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("localhost", "localhost"),
        ("_dmarc.example.com", "_dmarc.example.com"),
    ],
)
def test_normalize_destination_ok(raw: str, normalized: str) -> None:
    assert normalize_destination_pattern(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "destination_pattern is required"),
        ("   ", "destination_pattern is required"),
        ("exa mple.com", "whitespace"),
        ("***", r"'\*\*' is only allowed"),
        ("**", r"'\*\*' is only allowed"),
        ("a.**.com", r"'\*\*' is only allowed"),
        ("**.*.example.com", "wildcards are not allowed after"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("10.0.0/8x", "not a valid CIDR"),
        ("example.com/8", "not a valid CIDR"),
        ("[abc]", r"'\[' and '\]' are not supported"),
        ("exa[mp]le.com", r"'\[' and '\]' are not supported"),
        ("[1.2.3.4]", r"'\[' and '\]' are not supported"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        ("*.", "names no domain"),
        ("example.com:443", "port belongs in port_pattern"),
        ("https://example.com/", "is a URL"),
        ("exa$mple.com", "invalid character"),
    ],
)
def test_normalize_destination_errors(raw: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        normalize_destination_pattern(raw)


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("", "*"),
        (None, "*"),
        ("*", "*"),
        (" * ", "*"),
        ("443", "443"),
        ("80,443", "80,443"),
        (" 80 , 443 ", "80,443"),
        ("8000-9000", "8000-9000"),
        ("80, 8000 - 9000,443", "80,8000-9000,443"),
        ("0443", "443"),
        ("1", "1"),
        ("65535", "65535"),
        ("22-22", "22"),
    ],
)
def test_normalize_port_ok(raw: str | None, normalized: str) -> None:
    assert normalize_port_pattern(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("0", "port_pattern: '0' is out of range 1-65535"),
        ("70000", "port_pattern: '70000' is out of range 1-65535"),
        ("80,70000", "'70000' is out of range"),
        ("5-3", "start after its end"),
        ("abc", "'abc' is not a port or range"),
        ("80,,443", "empty item"),
        ("80,*", "cannot be combined"),
        ("-5", "not a port or range"),
        ("1-2-3", "not a port or range"),
        ("４４３", "not a port or range"),  # non-ASCII digits
    ],
)
def test_normalize_port_errors(raw: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        normalize_port_pattern(raw)


@pytest.mark.parametrize(
    ("pattern", "port", "expected"),
    [
        ("*", 1, True),
        ("*", 65535, True),
        ("443", 443, True),
        ("443", 80, False),
        ("80,443", 80, True),
        ("80,443", 443, True),
        ("80,443", 8080, False),
        ("8000-9000", 8000, True),
        ("8000-9000", 9000, True),
        ("8000-9000", 8500, True),
        ("8000-9000", 7999, False),
        ("8000-9000", 9001, False),
        ("22, 8000-9000 ,443", 443, True),
        ("22, 8000-9000 ,443", 8443, True),
        ("22, 8000-9000 ,443", 23, False),
        ("abc", 443, False),  # unparseable matches nothing
        ("0", 0, False),
    ],
)
def test_port_matcher(pattern: str, port: int, expected: bool) -> None:
    assert port_matcher(pattern)(port) is expected


# --------------------------------------------------------------------------- specificity


@pytest.mark.parametrize(
    ("container", "destination", "port", "score"),
    [
        ("*", "*", "*", 0),
        ("myapp", "*", "*", 200),
        ("*", "example.com", "*", 20),
        ("*", "*.example.com", "*", 10),
        ("myapp", "example.com", "443", 221),
        ("my*", "*", "*", 100),
        ("app-[0-9]", "*", "*", 100),
        ("*", "**.example.com", "*", 10),
        ("*", "api.*", "*", 10),
        ("*", "10.0.0.0/8", "*", 20),  # CIDR counts as exact
        ("*", "*", "443", 1),
        ("*", "*", "80,443", 1),
        ("my?", "example.com", "8000-9000", 121),
    ],
)
def test_specificity(container: str, destination: str, port: str, score: int) -> None:
    assert specificity(container, destination, port) == score
