"""Header and query redaction (docs/decisions.md#audit-observability-traffic-tools)."""

from __future__ import annotations

import pytest

from greyproxy.capture.redact import DEFAULT_REDACTED_HEADERS, REDACTED, SENSITIVE_QUERY_KEYS, Redactor


@pytest.mark.parametrize(
    ("name", "redacted"),
    [
        ("Authorization", True),
        ("authorization", True),
        ("AUTHORIZATION", True),
        ("Proxy-Authorization", True),
        ("Cookie", True),
        ("Set-Cookie", True),
        ("X-Api-Key", True),  # *api-key*
        ("api-key", True),
        ("X-API-KEY-V2", True),
        ("X-Auth-Token", True),  # *token*
        ("token", True),
        ("X-Client-Secret", True),  # *secret*
        ("Content-Type", False),
        ("Cookies-Allowed", False),  # exact "Cookie" only
        ("X-Authorization-Hint", False),  # exact "Authorization" only
        ("ApiKey", False),  # *api-key* needs the dash
        ("Accept", False),
    ],
)
def test_default_patterns(name: str, redacted: bool) -> None:
    assert Redactor().header_redacted(name) is redacted


@pytest.mark.parametrize(
    ("pattern", "name", "redacted"),
    [
        ("X-Custom", "x-custom", True),  # plain: exact, case-insensitive
        ("X-Custom", "X-Custom-2", False),
        ("X-Internal-*", "x-internal-user", True),  # prefix
        ("X-Internal-*", "y-x-internal-user", False),
        ("*-Signature", "X-Hub-Signature", True),  # suffix
        ("*-Signature", "X-Signature-Type", False),
        ("*session*", "X-Session-Id", True),  # contains
        ("x-*-id", "X-Request-Id", True),  # a star inside: any run of characters
        ("x-*-id", "X-Request-Idx", False),
        ("a.b", "axb", False),  # regex metacharacters are literal
        ("*", "Anything-At-All", True),  # everything
    ],
)
def test_custom_patterns(pattern: str, name: str, redacted: bool) -> None:
    assert Redactor([pattern]).header_redacted(name) is redacted


def test_headers_map_keeps_names_and_order_and_replaces_values() -> None:
    pairs = [
        ("Host", "api.example.com"),
        ("Authorization", "Bearer sk-live-123"),
        ("Accept", "text/html"),
        ("Cookie", "a=1"),
        ("cookie", "b=2"),  # same header, other spelling: grouped under the first one
        ("accept", "application/json"),
        ("X-Trace", "1"),
    ]
    out = Redactor().headers(pairs)
    assert list(out) == ["Host", "Authorization", "Accept", "Cookie", "X-Trace"]
    assert out["Authorization"] == [REDACTED]
    assert out["Cookie"] == [REDACTED]  # several lines collapse into one [REDACTED]
    assert out["Accept"] == ["text/html", "application/json"]
    assert "sk-live-123" not in repr(out) and "a=1" not in repr(out)


def test_header_map_is_idempotent_and_follows_new_patterns() -> None:
    stored = {"X-Custom": ["secret-value"], "Authorization": [REDACTED], "Accept": ["*/*"]}
    assert Redactor().header_map(stored) == stored
    once = Redactor(["X-Custom"]).header_map(stored)
    assert once == {"X-Custom": [REDACTED], "Authorization": [REDACTED], "Accept": ["*/*"]}
    assert Redactor(["X-Custom"]).header_map(once) == once


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/p", "https://h/p"),
        ("https://h/p?a=1&b=2", "https://h/p?a=1&b=2"),
        ("https://h/p?token=abc&x=1", f"https://h/p?token={REDACTED}&x=1"),
        ("https://h/p?x=1&ACCESS_TOKEN=abc#frag", f"https://h/p?x=1&ACCESS_TOKEN={REDACTED}#frag"),
        ("https://h/p?api%5Fkey=abc", f"https://h/p?api%5Fkey={REDACTED}"),  # key compared decoded
        ("https://h/p?password=&x=%20y", "https://h/p?password=&x=%20y"),  # empty value: nothing to hide
        ("https://h/p?token", "https://h/p?token"),
        ("https://h/p?mytoken=abc", "https://h/p?mytoken=abc"),  # keys are exact, not patterns
        ("https://h/p?q=a%26b&secret=s;x&apikey=k", f"https://h/p?q=a%26b&secret={REDACTED}&apikey={REDACTED}"),
        ("/rel?refresh_token=r", f"/rel?refresh_token={REDACTED}"),
    ],
)
def test_url_redaction(url: str, expected: str) -> None:
    assert Redactor().url(url) == expected
    assert Redactor().url(expected) == expected  # idempotent


def test_extra_query_keys_and_defaults_exported() -> None:
    assert Redactor(extra_query_keys=["sig"]).url("http://h/?sig=1&a=2") == f"http://h/?sig={REDACTED}&a=2"
    assert "Authorization" in DEFAULT_REDACTED_HEADERS and "api_key" in SENSITIVE_QUERY_KEYS
