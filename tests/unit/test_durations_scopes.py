"""Durations (docs/user-guide.md#rules-pending-requests-and-holds) and scopes."""

from __future__ import annotations

import pytest

from greyproxy.policy.durations import (
    NAMED_DURATIONS,
    DurationError,
    parse_go_duration,
    rule_duration,
    silent_mode_duration,
)
from greyproxy.policy.patterns import normalize_destination_pattern
from greyproxy.policy.scopes import SCOPES, ScopeError, patterns_for_scope, registrable_domain

# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("90s", 90),
        ("250ms", 0.25),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("10ns", 1e-8),
        ("2d", 172800),
        ("1d12h", 129600),
        (".5m", 30),
        ("0", 0),
        ("0s", 0),
        ("+5m", 300),
        (" 5m ", 300),
    ],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "required"),
        ("   ", "required"),
        ("30x", "invalid duration"),
        ("30", "invalid duration"),
        ("h", "invalid duration"),
        ("1h 30m", "invalid duration"),
        ("forever", "invalid duration"),
        ("-1h", "must not be negative"),
        ("1H", "invalid duration"),
    ],
)
def test_parse_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError, match=message):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (None, None),
        ("", None),
        ("permanent", None),
        ("Permanent", None),
        ("once", 30),
        ("1h", 3600),
        ("12h", 43200),
        ("24h", 86400),
        ("7d", 604800),
        ("30d", 2592000),
        ("30m", 1800),
        ("1h30m", 5400),
        ("1s", 1),
        ("1.9s", 1),
        ("90m", 5400),
    ],
)
def test_rule_duration(text: str | None, seconds: int | None) -> None:
    assert rule_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30x", "invalid duration '30x'"),
        ("-1h", "invalid duration '-1h'"),
        ("0s", "must be at least 1s"),
        ("500ms", "must be at least 1s"),
        ("forever", "invalid duration 'forever': use permanent, once, 1h"),
        ("once a day", "invalid duration"),
    ],
)
def test_rule_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError, match=message):
        rule_duration(text)


def test_named_durations_table() -> None:
    assert NAMED_DURATIONS == {
        "once": 30,
        "1h": 3600,
        "12h": 43200,
        "24h": 86400,
        "7d": 604800,
        "30d": 2592000,
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("restart", None), ("1s", 1), ("5m", 300), ("8h", 28800), ("7h59m", 28740), ("100ms", 1)],
)
def test_silent_mode_duration(text: str, seconds: int | None) -> None:
    assert silent_mode_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0s", "duration must be positive"),
        ("0", "duration must be positive"),
        ("8h1s", "duration must be at most 8h"),
        ("9h", "duration must be at most 8h"),
        ("1d", "duration must be at most 8h"),
        ("-1h", "must not be negative"),
        ("soon", "invalid duration"),
        ("", "required"),
    ],
)
def test_silent_mode_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError, match=message):
        silent_mode_duration(text)


# --------------------------------------------------------------------------- scopes


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("api.github.com", "github.com"),
        ("github.com", "github.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("API.GitHub.com.", "github.com"),
        ("co.uk", None),
        ("com", None),
        ("localhost", None),
        ("10.1.2.3", None),
        ("::1", None),
        ("[2001:db8::1]", None),
        ("", None),
    ],
)
def test_registrable_domain(host: str, domain: str | None) -> None:
    assert registrable_domain(host) == domain


@pytest.mark.parametrize(
    ("scope", "container", "host", "port", "expected"),
    [
        ("exact", "myapp", "api.github.com", 443, ("myapp", "api.github.com", "443")),
        (None, "myapp", "api.github.com", 443, ("myapp", "api.github.com", "443")),
        ("", "myapp", "api.github.com", 443, ("myapp", "api.github.com", "443")),
        ("any_port", "myapp", "api.github.com", 443, ("myapp", "api.github.com", "*")),
        ("subdomain_wildcard", "myapp", "api.github.com", 443, ("myapp", "*.github.com", "*")),
        ("subdomain_wildcard", "myapp", "a.b.example.co.uk", 443, ("myapp", "*.example.co.uk", "*")),
        # apex host: '*.x' would not cover the request being approved
        ("subdomain_wildcard", "myapp", "github.com", 443, ("myapp", "**.github.com", "*")),
        # no registrable domain: fall back to the host itself on any port
        ("subdomain_wildcard", "myapp", "10.0.0.5", 8080, ("myapp", "10.0.0.5", "*")),
        ("subdomain_wildcard", "myapp", "localhost", 3000, ("myapp", "localhost", "*")),
        ("subdomain_wildcard", "myapp", "::1", 3000, ("myapp", "::1", "*")),
        ("all_containers", "myapp", "api.github.com", 443, ("*", "api.github.com", "443")),
        ("exact", "myapp", "10.0.0.5", 22, ("myapp", "10.0.0.5", "22")),
    ],
)
def test_patterns_for_scope(
    scope: str | None, container: str, host: str, port: int, expected: tuple[str, str, str]
) -> None:
    result = patterns_for_scope(scope, container, host, port)
    assert result == expected
    normalize_destination_pattern(result[1])  # every generated pattern is valid


@pytest.mark.parametrize("scope", ["x", "EXACT", "subdomain", "all"])
def test_unknown_scope(scope: str) -> None:
    message = f"unknown scope '{scope}'; expected one of exact, any_port, subdomain_wildcard, all_containers"
    with pytest.raises(ScopeError) as info:
        patterns_for_scope(scope, "myapp", "example.com", 443)
    assert str(info.value) == message


def test_scopes_tuple() -> None:
    assert SCOPES == ("exact", "any_port", "subdomain_wildcard", "all_containers")
