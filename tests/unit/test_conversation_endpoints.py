"""Endpoint rules: globs, rule selection and auto-detection."""

from __future__ import annotations

import dataclasses
import json

import pytest

from greyproxy.conversations.endpoints import BUILTIN_RULES, EndpointRule, auto_rule, glob_match, pick

# --------------------------------------------------------------------------- glob_match


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("api.openai.com", "api.openai.com", True),
        ("api.openai.com", "api.openai.co", False),
        ("api.openai.com", "xapi.openai.com", False),
        ("", "", True),
        ("", "a", False),
        ("*", "", True),
        ("*", "anything/at.all", True),
        ("**", "x", True),
        ("*.openai.com", "api.openai.com", True),
        ("*.openai.com", "a.b.openai.com", True),  # * crosses dots
        ("*.openai.com", "openai.com", False),
        ("/v1beta/models/*", "/v1beta/models/gemini-2.5-pro:generateContent", True),
        ("/v1beta/models/*", "/v1beta/models/tuned/x:streamGenerateContent", True),  # * crosses slashes
        ("/v1beta/models/*", "/v1beta/models", False),
        ("/v1beta/models/*", "/v1beta/models/", True),  # empty run
        ("/api/*/chat/*", "/api/v1/chat/completions", True),
        ("/api/*/chat/*", "/api/v1/v2/chat/x/y", True),
        ("/api/*/chat/*", "/api/chat/x", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),  # prefix and suffix may not overlap
        ("a*a", "aa", True),
        ("ab*ba", "aba", False),
        ("*ab*ab*", "xabyab", True),
        ("*ab*ab*", "xab", False),
        # only * is special
        ("/v1/messages?", "/v1/messages?", True),
        ("/v1/messages?", "/v1/messagesX", False),
        ("host[12]", "host[12]", True),
        ("host[12]", "host1", False),
        ("a.c", "abc", False),  # '.' is literal, not regex
        ("a+", "aa", False),
        ("(x)|y", "(x)|y", True),
        ("Api.OpenAI.com", "api.openai.com", False),  # exact: case matters
    ],
)
def test_glob_match(pattern, text, expected):
    assert glob_match(pattern, text) is expected


# --------------------------------------------------------------------------- built-ins


def test_builtin_rules_cover_spec_table():
    rows = {(r.host, r.path, r.method, r.decoder) for r in BUILTIN_RULES}
    assert rows == {
        ("api.anthropic.com", "/v1/messages", "POST", "anthropic"),
        ("api.openai.com", "/v1/responses", "POST", "openai"),
        ("api.openai.com", "/v1/responses", "WS_REQ", "openai-ws"),
        ("api.openai.com", "/v1/responses", "WS_RESP", "openai-ws"),
        ("api.openai.com", "/v1/chat/completions", "POST", "openai-chat"),
        ("openrouter.ai", "/api/v1/chat/completions", "POST", "openai-chat"),
        ("generativelanguage.googleapis.com", "/v1beta/models/*", "POST", "google-ai"),
    }
    assert all(r.enabled and not r.user_defined and r.priority == 0 and r.id is None for r in BUILTIN_RULES)


def test_rules_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BUILTIN_RULES[0].priority = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("host", "path", "method", "decoder"),
    [
        ("api.anthropic.com", "/v1/messages", "POST", "anthropic"),
        ("api.anthropic.com", "/v1/messages?beta=true", "POST", "anthropic"),
        ("API.Anthropic.COM", "/v1/messages", "post", "anthropic"),
        ("api.anthropic.com:443", "/v1/messages", "POST", "anthropic"),
        ("api.anthropic.com", "/v1/messages/count_tokens", "POST", None),
        ("api.anthropic.com", "/v1/messages", "GET", None),
        ("api.openai.com", "/v1/responses", "POST", "openai"),
        ("api.openai.com", "/v1/responses", "WS_REQ", "openai-ws"),
        ("api.openai.com", "/v1/responses", "ws_resp", "openai-ws"),
        ("api.openai.com", "/v1/chat/completions", "POST", "openai-chat"),
        ("openrouter.ai", "/api/v1/chat/completions", "POST", "openai-chat"),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "POST",
            "google-ai",
        ),
        (
            "generativelanguage.googleapis.com:443",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "POST",
            "google-ai",
        ),
        ("generativelanguage.googleapis.com", "/v1/models/gemini:generateContent", "POST", None),
        ("example.com", "/v1/messages", "POST", None),
        ("evil-api.anthropic.com", "/v1/messages", "POST", None),
    ],
)
def test_pick_builtins(host, path, method, decoder):
    rule = pick(BUILTIN_RULES, host, path, method)
    assert (rule.decoder if rule else None) == decoder


def test_pick_empty_rules():
    assert pick([], "api.anthropic.com", "/v1/messages", "POST") is None


def test_pick_priority_beats_order():
    low = EndpointRule("*", "*", "POST", "openai-chat", priority=0, id=1)
    high = EndpointRule("api.anthropic.com", "/v1/*", "POST", "anthropic", priority=10, id=2)
    assert pick([low, high], "api.anthropic.com", "/v1/messages", "POST") is high
    assert pick([low, high], "other.example", "/v1/messages", "POST") is low


def test_pick_same_priority_orders_by_id_then_none_then_list_order():
    a = EndpointRule("*", "*", "*", "openai", id=7)
    b = EndpointRule("*", "*", "*", "anthropic", id=3)
    c = EndpointRule("*", "*", "*", "google-ai")
    d = EndpointRule("*", "*", "*", "openai-chat")
    assert pick([a, b, c, d], "h", "/p", "POST") is b
    assert pick([c, a], "h", "/p", "POST") is a  # numbered before un-numbered
    assert pick([d, c], "h", "/p", "POST") is d  # both un-numbered: list order
    assert pick([c, d], "h", "/p", "POST") is c


def test_pick_skips_disabled_rules():
    disabled = EndpointRule(
        "api.openai.com", "/v1/chat/completions", "POST", "openai", priority=100, enabled=False
    )
    rules = [disabled, *BUILTIN_RULES]
    assert pick(rules, "api.openai.com", "/v1/chat/completions", "POST").decoder == "openai-chat"
    assert pick([disabled], "api.openai.com", "/v1/chat/completions", "POST") is None


def test_pick_method_wildcard_and_exact():
    any_method = EndpointRule("llm.local", "/chat", "*", "openai-chat")
    assert pick([any_method], "llm.local", "/chat", "PUT") is any_method
    assert pick([any_method], "llm.local", "/chat", "WS_REQ") is any_method
    exact = EndpointRule("llm.local", "/chat", "Post", "openai-chat")
    assert pick([exact], "llm.local", "/chat", "POST") is exact
    assert pick([exact], "llm.local", "/chat", "GET") is None


def test_pick_host_without_port():
    # A rule naming a port never matches in the assembler, which compares hosts without port.
    with_port = EndpointRule("litellm.local:4000", "/v1/chat/completions", "POST", "openai-chat")
    assert pick([with_port], "litellm.local:4000", "/v1/chat/completions", "POST") is None
    plain = EndpointRule("LiteLLM.local", "/v1/chat/completions", "POST", "openai-chat")
    assert pick([plain], "litellm.local:4000", "/v1/chat/completions", "POST") is plain


def test_pick_ipv6_host():
    rule = EndpointRule("[::1]", "/v1/*", "POST", "openai-chat")
    assert pick([rule], "[::1]:11434", "/v1/chat/completions", "POST") is rule
    assert pick([rule], "[::1]", "/v1/chat/completions", "POST") is rule
    bare = EndpointRule("fe80::1", "*", "*", "openai-chat")
    assert pick([bare], "fe80::1", "/x", "POST") is bare


def test_pick_path_is_case_sensitive_and_query_free():
    rule = EndpointRule("h", "/v1/Chat", "POST", "openai-chat")
    assert pick([rule], "h", "/v1/chat", "POST") is None
    assert pick([rule], "h", "/v1/Chat?x=1#frag", "POST") is rule
    literal_q = EndpointRule("h", "/a?b", "POST", "openai-chat")
    assert pick([literal_q], "h", "/a?b", "POST") is None  # query is stripped before matching


# --------------------------------------------------------------------------- auto_rule

CHAT_BODY = json.dumps(
    {"model": "qwen2.5-coder:7b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
)


def test_auto_rule_creates_user_rule():
    rule = auto_rule("Ollama.Local:11434", "/v1/chat/completions?x=1", "POST", CHAT_BODY)
    assert rule == EndpointRule(
        host="ollama.local",
        path="/v1/chat/completions",
        method="POST",
        decoder="openai-chat",
        priority=5,
        enabled=True,
        user_defined=True,
        id=None,
    )
    # The learned rule matches the same request afterwards.
    assert pick([rule], "ollama.local:11434", "/v1/chat/completions", "POST") is rule


def test_auto_rule_accepts_bytes_and_lower_case_method():
    assert auto_rule("h", "/c", "post", CHAT_BODY.encode()) is not None


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("GET", CHAT_BODY),
        ("PUT", CHAT_BODY),
        ("POST", None),
        ("POST", ""),
        ("POST", "not json"),
        ("POST", "[1, 2]"),
        ("POST", '"string"'),
        ("POST", json.dumps({"model": "", "messages": [{"role": "user", "content": "x"}]})),
        ("POST", json.dumps({"model": "   ", "messages": [{"role": "user", "content": "x"}]})),
        ("POST", json.dumps({"model": 3, "messages": [{"role": "user", "content": "x"}]})),
        ("POST", json.dumps({"model": "gpt", "messages": []})),
        ("POST", json.dumps({"model": "gpt", "messages": {"role": "user"}})),
        ("POST", json.dumps({"model": "gpt", "messages": "hello"})),
        ("POST", json.dumps({"model": "gpt", "input": "hello"})),
        ("POST", json.dumps({"messages": [{"role": "user", "content": "x"}]})),
        ("POST", "[" * 100000),
    ],
)
def test_auto_rule_rejects(method, body):
    assert auto_rule("h.example", "/v1/chat", method, body) is None
