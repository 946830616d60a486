"""Which client (agent) made a conversation's calls: `client_name` on a conversation.

Asked in order, the first answer wins: the request headers (User-Agent, Originator, X-Title,
HTTP-Referer), the dissector's hint, a fingerprint of the system prompt and tool names, then
the provider's usual client; `generic` when nothing tells. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

# (substring of a lower-cased header value, client) per header, most specific first.
_HEADER_SIGNS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("user-agent", (("claude-cli/", "claude-code"), ("claude-code/", "claude-code"), ("geminicli/", "gemini-cli"),
                    ("opencode/", "opencode"), ("codex_cli", "codex"), ("codex/", "codex"), ("aider/", "aider"))),
    ("originator", (("codex", "codex"),)),
    ("x-title", (("opencode", "opencode"), ("aider", "aider"))),
    ("http-referer", (("opencode", "opencode"), ("aider", "aider"))),
)
_SYSTEM_SIGNS = (("claude code", "claude-code"), ("claude agent sdk", "claude-code"), ("you are codex", "codex"),
                 ("opencode", "opencode"), ("aider", "aider"), ("gemini cli", "gemini-cli"))
_CLAUDE_CODE_TOOLS = frozenset({"Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write", "TodoWrite"})
_CODEX_TOOLS = frozenset({"apply_patch", "shell", "update_plan"})
_BY_PROVIDER = {"anthropic": "claude-code", "openai": "opencode"}


def _header_values(column: str | None) -> dict[str, list[str]]:
    try:
        stored = json.loads(column) if column else {}
    except ValueError:
        return {}
    if not isinstance(stored, dict):
        return {}
    out: dict[str, list[str]] = {}
    for name, values in stored.items():
        vals = values if isinstance(values, list) else [values]
        out.setdefault(str(name).lower(), []).extend(str(v).lower() for v in vals)
    return out


def from_headers(column: str | None) -> str | None:
    headers = _header_values(column)
    for name, signs in _HEADER_SIGNS:
        for value in headers.get(name, []):
            for needle, client in signs:
                if needle in value:
                    return client
    return None


def from_fingerprint(system: Iterable[str], tools: Iterable[str]) -> str | None:
    text = "\n".join(system).lower()
    for needle, client in _SYSTEM_SIGNS:
        if needle in text:
            return client
    names = set(tools)
    if len(names & _CLAUDE_CODE_TOOLS) >= 3:
        return "claude-code"
    if len(names & _CODEX_TOOLS) >= 2:
        return "codex"
    return None


def detect_client(header_columns: Iterable[str | None], hint: str | None, system: Iterable[str],
                  tools: Iterable[str], provider: str | None) -> str:
    for column in header_columns:
        found = from_headers(column)
        if found:
            return found
    return hint or from_fingerprint(system, tools) or _BY_PROVIDER.get(provider or "", "generic")
