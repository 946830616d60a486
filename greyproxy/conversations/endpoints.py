"""Endpoint rules: which decoder handles a recorded request.

Pure functions only: the database table ``endpoint_rules`` is handled elsewhere; this module
holds the built-in rows, the glob matcher, rule selection and the auto-detection heuristic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

DECODERS = ("anthropic", "openai", "openai-ws", "openai-chat", "google-ai")

AUTO_RULE_PRIORITY = 5


@dataclass(frozen=True)
class EndpointRule:
    host: str  # glob, only * is special (matches any run of characters, including '.' and '/')
    path: str  # glob, same syntax; matched against the path without query string
    method: str  # exact (case-insensitive) or "*"; WebSocket frames use "WS_REQ"/"WS_RESP"
    decoder: str  # one of DECODERS
    priority: int = 0
    enabled: bool = True
    user_defined: bool = False
    id: int | None = None


BUILTIN_RULES: tuple[EndpointRule, ...] = (
    EndpointRule("api.anthropic.com", "/v1/messages", "POST", "anthropic"),
    EndpointRule("api.openai.com", "/v1/responses", "POST", "openai"),
    EndpointRule("api.openai.com", "/v1/responses", "WS_REQ", "openai-ws"),
    EndpointRule("api.openai.com", "/v1/responses", "WS_RESP", "openai-ws"),
    EndpointRule("api.openai.com", "/v1/chat/completions", "POST", "openai-chat"),
    EndpointRule("openrouter.ai", "/api/v1/chat/completions", "POST", "openai-chat"),
    EndpointRule("generativelanguage.googleapis.com", "/v1beta/models/*", "POST", "google-ai"),
)


def glob_match(pattern: str, text: str) -> bool:
    """Exact, case-sensitive glob match where only ``*`` is special (any run, possibly empty).

    ``?``, ``[`` and every other character match themselves literally.
    """
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    if len(text) < len(first) + len(last):
        return False
    if not text.startswith(first) or not text.endswith(last):
        return False
    # Greedy left-to-right search for the middle pieces inside the region between prefix and suffix;
    # earliest placement is always optimal when the only wildcard is '*'.
    pos, end = len(first), len(text) - len(last)
    for piece in parts[1:-1]:
        if not piece:
            continue
        idx = text.find(piece, pos, end)
        if idx < 0:
            return False
        pos = idx + len(piece)
    return True


def normalize_host(host: str) -> str:
    """Lower-case and drop a trailing ``:port``.

    ``[v6]:port`` keeps its brackets (``[::1]:8080`` → ``[::1]``); a bare address with several
    colons (unbracketed IPv6) is left alone.
    """
    host = (host or "").strip().lower()
    if host.startswith("["):
        close = host.find("]")
        return host[: close + 1] if close >= 0 else host
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        if port.isdigit() or port == "":
            return name
    return host


def normalize_path(path: str) -> str:
    """Path without query string or fragment."""
    path = path or ""
    for sep in ("?", "#"):
        idx = path.find(sep)
        if idx >= 0:
            path = path[:idx]
    return path


def _method_matches(rule_method: str, method: str) -> bool:
    return rule_method == "*" or rule_method.upper() == (method or "").upper()


def ordered(rules: Iterable[EndpointRule]) -> list[EndpointRule]:
    """The enabled rules in the order `pick` tries them: priority descending, then id ascending
    (rules without id after numbered ones), then the order of ``rules``."""
    indexed = [(i, r) for i, r in enumerate(rules) if r.enabled]
    indexed.sort(key=lambda ir: (-ir[1].priority, ir[1].id is None, ir[1].id or 0, ir[0]))
    return [rule for _, rule in indexed]


def first_match(ordered_rules: list[EndpointRule], host: str, path: str, method: str) -> EndpointRule | None:
    """`pick` over rules already `ordered` (the assembler orders them once per load, not once
    per transaction)."""
    host_n = normalize_host(host)
    path_n = normalize_path(path)
    for rule in ordered_rules:
        if not _method_matches(rule.method, method):
            continue
        if glob_match(rule.host.lower(), host_n) and glob_match(rule.path, path_n):
            return rule
    return None


def pick(rules: Iterable[EndpointRule], host: str, path: str, method: str) -> EndpointRule | None:
    """First enabled rule matching host/path/method, in the order of `ordered`. The host is
    lower-cased and compared without port (rule hosts are lower-cased too); the path is compared
    without its query string."""
    return first_match(ordered(rules), host, path, method)


# Request fields and content blocks only Anthropic's Messages API has; an OpenAI-compatible chat
# request has none of them (its system prompt is a message, its tool calls are `tool_calls`).
_ANTHROPIC_FIELDS = frozenset({"system", "anthropic_version", "anthropic_beta", "stop_sequences", "thinking", "top_k"})
_ANTHROPIC_BLOCKS = frozenset({"tool_use", "tool_result", "thinking", "redacted_thinking", "server_tool_use",
                               "document"})
_CHAT_ROLES = frozenset({"system", "developer", "tool", "function"})


def detect_decoder(path: str, body: dict) -> str:
    """Which chat API a request with `model` and `messages` speaks: "anthropic" or "openai-chat".

    Decided by the body, with the path as a tie-break: an Anthropic-shaped call to a host we do
    not know (a gateway, a local proxy) must not be read as OpenAI."""
    anthropic = openai = 0
    if _ANTHROPIC_FIELDS & set(body):
        anthropic += 2
    meta = body.get("metadata")
    if isinstance(meta, dict) and "user_id" in meta:
        anthropic += 1
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        if message.get("role") in _CHAT_ROLES or "tool_calls" in message or "function_call" in message:
            openai += 2
        content = message.get("content")
        if isinstance(content, list):
            kinds = {b.get("type") for b in content if isinstance(b, dict)}
            if kinds & _ANTHROPIC_BLOCKS or ("image" in kinds and any("source" in b for b in content
                                                                       if isinstance(b, dict))):
                anthropic += 2
            if kinds & {"image_url", "input_audio"}:
                openai += 2
    if anthropic == openai:  # nothing tells them apart: the path does (Anthropic's is /v1/messages)
        return "anthropic" if path.rstrip("/").endswith("/messages") else "openai-chat"
    return "anthropic" if anthropic > openai else "openai-chat"


def auto_rule(host: str, path: str, method: str, request_body: str | None) -> EndpointRule | None:
    """Auto-detection for an otherwise unmatched request.

    A ``POST`` whose JSON object body has a non-empty string ``model`` and a non-empty
    ``messages`` list yields a user rule ``host + path`` (priority 5) for the decoder its body
    speaks (:func:`detect_decoder`: ``anthropic`` or ``openai-chat``). The host is
    normalised like :func:`pick` does (lower case, no port) and the path loses its query string.
    """
    if (method or "").upper() != "POST" or not request_body:
        return None
    if isinstance(request_body, bytes | bytearray):
        request_body = bytes(request_body).decode("utf-8", "replace")
    try:
        body = json.loads(request_body)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    model, messages = body.get("model"), body.get("messages")
    if not (isinstance(model, str) and model.strip()):
        return None
    if not (isinstance(messages, list) and messages):
        return None
    host_n, path_n = normalize_host(host), normalize_path(path)
    if not host_n or not path_n:
        return None
    return EndpointRule(
        host=host_n,
        path=path_n,
        method="POST",
        decoder=detect_decoder(path_n, body),
        priority=AUTO_RULE_PRIORITY,
        user_defined=True,
    )
