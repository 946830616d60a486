"""Dissect recorded LLM API transactions into a provider-neutral shape.

Pure functions: no I/O, no database. :func:`dissect` takes the request URL and the recorded
request/response bodies and returns a :class:`Dissected` (or ``None`` when the request is not
something the named decoder understands). It never raises.

Conventions shared by all decoders:

* ``system``/``developer`` role messages (Chat Completions, Responses API) and the dedicated system
  fields (Anthropic ``system``, Responses ``instructions``, Gemini ``systemInstruction``) go to
  :attr:`Dissected.system`; they are not repeated in :attr:`Dissected.messages`.
* ``text`` and ``thinking`` blocks keep their full text; ``tool_result`` text is a preview of at most
  :data:`PREVIEW_LIMIT` characters ending with a "cut" marker when shortened.
* A streamed (SSE) response only counts when the stream reached its terminal event (Anthropic
  ``message_stop``/``message_delta`` with a stop reason, Responses ``response.completed``/
  ``incomplete``/``failed``, Chat Completions ``[DONE]`` or a ``finish_reason``, Gemini a
  ``finishReason``); a truncated stream leaves ``response=None``.

Client hints (request body only, deliberately few; ``None`` when unsure):

* ``claude-code`` — Anthropic request whose system prompt mentions "Claude Code".
* ``codex`` — Responses API request with ``"store": false`` whose instructions mention Codex.
* ``opencode`` — Chat Completions request whose system prompt says "You are opencode".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PREVIEW_LIMIT = 2000
SUMMARY_LIMIT = 200

PROVIDERS = {
    "anthropic": "anthropic",
    "openai": "openai",
    "openai-ws": "openai",
    "openai-chat": "openai",
    "google-ai": "google",
}


@dataclass
class Block:
    type: str  # "text" | "tool_use" | "tool_result" | "thinking" | "image" | "other"
    text: str | None = None  # text, thinking, or a tool_result preview (≤ PREVIEW_LIMIT chars)
    name: str | None = None  # tool name for tool_use (Gemini: also the function name of a tool_result)
    summary: str | None = None  # short human summary of a tool call (≤ SUMMARY_LIMIT chars)
    tool_id: str | None = None  # tool_use id / tool_result's tool_use_id (call_id for OpenAI)
    prompt: str | None = None  # a tool_use's `prompt` input (a subagent's task), ≤ PREVIEW_LIMIT chars


@dataclass
class Message:
    role: str  # "user" | "assistant" | "system" | "tool"
    blocks: list[Block]


@dataclass
class Dissected:
    decoder: str
    provider: str  # "anthropic" | "openai" | "google"
    model: str | None
    session_id: str | None
    system: list[str]
    messages: list[Message]
    tools: list[str]
    response: Message | None
    client_hint: str | None = None
    response_id: str | None = None
    stop_reason: str | None = None
    # The request carries only what is new (`previous_response_id`): the history is the
    # concatenation of the conversation's calls, not the latest one.
    incremental: bool = False


@dataclass
class _Response:
    message: Message
    response_id: str | None = None
    stop_reason: str | None = None
    model: str | None = None


# --------------------------------------------------------------------------- small helpers


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None


def _as_text(body: Any) -> str | None:
    if body is None:
        return None
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8", "replace")
    if isinstance(body, str):
        return body
    return None


def _s(value: Any) -> str | None:
    """``value`` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return str(value)


def preview(text: str | None, limit: int = PREVIEW_LIMIT) -> str | None:
    """``text`` shortened to at most ``limit`` characters, ending with a marker when it was cut."""
    if text is None:
        return None
    if len(text) <= limit:
        return text
    marker = f"… [cut, {len(text)} chars total]"
    return text[: max(0, limit - len(marker))] + marker


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


# Preferred input keys per (lower-cased) tool name; anything else uses _GENERIC_KEYS then the first
# string value.
_TOOL_KEYS: dict[str, tuple[str, ...]] = {
    "bash": ("command",),
    "read": ("file_path",),
    "write": ("file_path",),
    "edit": ("file_path",),
    "multiedit": ("file_path",),
    "notebookedit": ("notebook_path",),
    "glob": ("pattern",),
    "grep": ("pattern",),
    "webfetch": ("url",),
    "websearch": ("query",),
    "task": ("description",),
    "shell": ("command", "cmd"),
    "exec_command": ("cmd", "command"),
    "run_shell_command": ("command",),
    "read_file": ("absolute_path", "file_path", "path"),
    "write_file": ("file_path", "absolute_path", "path"),
}
_GENERIC_KEYS = (
    "command",
    "cmd",
    "file_path",
    "absolute_path",
    "path",
    "pattern",
    "url",
    "query",
    "description",
    "prompt",
)


def _summary_value(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return None


def tool_summary(name: str | None, tool_input: Any) -> str | None:
    """Short one-line summary of a tool call, e.g. ``"Bash: ls -la"`` (≤ SUMMARY_LIMIT chars)."""
    label = name or "tool"
    detail: str | None = None
    if isinstance(tool_input, dict):
        keys = _TOOL_KEYS.get(label.lower(), ()) + _GENERIC_KEYS
        for key in keys:
            detail = _summary_value(tool_input.get(key))
            if detail:
                break
        if not detail:
            for value in tool_input.values():
                detail = _summary_value(value)
                if detail:
                    break
    elif isinstance(tool_input, str) and tool_input.strip():
        detail = tool_input.strip().splitlines()[0]
    text = f"{label}: {detail}" if detail else label
    return _one_line(text, SUMMARY_LIMIT)


def _parse_args(arguments: Any) -> Any:
    """Tool arguments given as a JSON string (OpenAI) → object; unparseable strings stay strings."""
    if isinstance(arguments, str):
        parsed = _loads(arguments)
        return parsed if parsed is not None else arguments
    return arguments


def _tool_use(name: Any, tool_input: Any, tool_id: Any) -> Block:
    name_s = _s(name)
    task = _s(tool_input.get("prompt")) if isinstance(tool_input, dict) else None
    return Block("tool_use", name=name_s, summary=tool_summary(name_s, tool_input), tool_id=_s(tool_id),
                 prompt=task[:PREVIEW_LIMIT] if task else None)


# --------------------------------------------------------------------------- SSE


_LINE_SPLIT = re.compile(r"\r\n|\r|\n")


def sse_events(body: str) -> list[tuple[str | None, str]]:
    """Parse a text/event-stream body into ``(event name, data)`` pairs.

    A trailing event without its blank line (truncated stream) is still returned; its data may
    be incomplete JSON, which callers ignore.
    """
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in _LINE_SPLIT.split(body):
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        fld, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if fld == "event":
            name = value
        elif fld == "data":
            data.append(value)
    if data:
        events.append((name, "\n".join(data)))
    return events


def _looks_sse(body: str, content_type: str | None) -> bool:
    if content_type and "event-stream" in content_type.lower():
        return True
    head = body.lstrip()[:16]
    return head.startswith(("event:", "data:", ":"))


def _sse_json(body: str) -> list[tuple[str | None, Any]]:
    """SSE events with JSON-decoded data; undecodable data (``[DONE]``, truncation) is kept as str."""
    out: list[tuple[str | None, Any]] = []
    for name, data in sse_events(body):
        parsed = _loads(data)
        out.append((name, parsed if parsed is not None else data))
    return out


# --------------------------------------------------------------------------- session ids

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_LEGACY_SESSION = re.compile(r"_session_(" + _UUID + r")")
_RAW_SESSION = re.compile(r"session_(" + _UUID + r")")


def session_id_from_anthropic_user_id(user_id: object) -> str | None:
    """Session id from Anthropic ``metadata.user_id``.

    Two forms: the legacy string ``user_<hash>_account_<uuid>_session_<uuid>`` and a JSON
    object (or a string holding one) with a ``session_id`` member.
    """
    if isinstance(user_id, dict):
        sid = user_id.get("session_id")
        return (sid.strip() or None) if isinstance(sid, str) else None
    if not isinstance(user_id, str):
        return None
    stripped = user_id.strip()
    if stripped.startswith("{"):
        parsed = _loads(stripped)
        if isinstance(parsed, dict):
            sid = parsed.get("session_id")
            if isinstance(sid, str) and sid.strip():
                return sid.strip()
    m = _LEGACY_SESSION.search(user_id)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- anthropic


def _anthropic_result_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
                continue
            part = _d(part)
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "image":
                pieces.append("[image]")
            elif kind == "document":
                pieces.append("[document]")
            elif part:
                pieces.append(_dump(part))
        return "\n".join(pieces)
    if content is None:
        return None
    return _dump(content)


def _anthropic_block(raw: Any) -> Block | None:
    if isinstance(raw, str):
        return Block("text", text=raw)
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    if kind == "text":
        return Block("text", text=raw.get("text") if isinstance(raw.get("text"), str) else "")
    if kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return _tool_use(raw.get("name"), raw.get("input"), raw.get("id"))
    if kind == "tool_result" or (isinstance(kind, str) and kind.endswith("_tool_result")):
        return Block(
            "tool_result",
            text=preview(_anthropic_result_text(raw.get("content"))),
            tool_id=_s(raw.get("tool_use_id")),
        )
    if kind == "thinking":
        return Block("thinking", text=raw.get("thinking") if isinstance(raw.get("thinking"), str) else None)
    if kind == "redacted_thinking":
        return Block("thinking")
    if kind == "image":
        return Block("image")
    return Block("other")


def _anthropic_blocks(content: Any) -> list[Block]:
    if isinstance(content, str):
        return [Block("text", text=content)]
    blocks = []
    for raw in _l(content):
        block = _anthropic_block(raw)
        if block is not None:
            blocks.append(block)
    return blocks


def _anthropic_system(system: Any) -> list[str]:
    if isinstance(system, str):
        return [system] if system else []
    out = []
    for raw in _l(system):
        if isinstance(raw, str) and raw:
            out.append(raw)
        elif isinstance(raw, dict) and isinstance(raw.get("text"), str):
            out.append(raw["text"])
    return out


def _anthropic_response_json(data: Any) -> _Response | None:
    if not isinstance(data, dict) or data.get("type") == "error" or not isinstance(data.get("content"), list):
        return None
    return _Response(
        Message("assistant", _anthropic_blocks(data["content"])),
        response_id=_s(data.get("id")),
        stop_reason=_s(data.get("stop_reason")),
        model=_s(data.get("model")),
    )


def _anthropic_response_sse(body: str) -> _Response | None:
    msg: dict = {}
    blocks: dict[int, dict] = {}  # index → {"block": raw content_block, "text": [...], "json": [...]}
    order: list[int] = []
    stop_reason: str | None = None
    done = False
    for name, data in _sse_json(body):
        if not isinstance(data, dict):
            continue
        kind = data.get("type") or name
        if kind == "message_start":
            msg = _d(data.get("message"))
            stop_reason = _s(msg.get("stop_reason")) or stop_reason
        elif kind == "content_block_start":
            idx = data.get("index")
            if not isinstance(idx, int):
                idx = len(order)
            if idx not in blocks:
                order.append(idx)
            blocks[idx] = {"block": _d(data.get("content_block")), "text": [], "json": []}
        elif kind == "content_block_delta":
            idx = data.get("index")
            entry = blocks.get(idx) if isinstance(idx, int) else None
            if entry is None:
                continue
            delta = _d(data.get("delta"))
            dkind = delta.get("type")
            if dkind == "text_delta" and isinstance(delta.get("text"), str):
                entry["text"].append(delta["text"])
            elif dkind == "thinking_delta" and isinstance(delta.get("thinking"), str):
                entry["text"].append(delta["thinking"])
            elif dkind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                entry["json"].append(delta["partial_json"])
        elif kind == "message_delta":
            sr = _s(_d(data.get("delta")).get("stop_reason"))
            if sr:
                stop_reason = sr
                done = True
        elif kind == "message_stop":
            done = True
    if not done:
        return None
    out: list[Block] = []
    for idx in order:
        entry = blocks[idx]
        raw = dict(entry["block"])
        kind = raw.get("type")
        if kind == "text":
            raw["text"] = (raw.get("text") if isinstance(raw.get("text"), str) else "") + "".join(
                entry["text"]
            )
        elif kind == "thinking":
            raw["thinking"] = (raw.get("thinking") if isinstance(raw.get("thinking"), str) else "") + "".join(
                entry["text"]
            )
        elif entry["json"]:
            joined = "".join(entry["json"])
            parsed = _loads(joined)
            raw["input"] = parsed if parsed is not None else joined
        block = _anthropic_block(raw)
        if block is not None:
            out.append(block)
    return _Response(
        Message("assistant", out),
        response_id=_s(msg.get("id")),
        stop_reason=stop_reason,
        model=_s(msg.get("model")),
    )


def _dissect_anthropic(url: str, raw_body: str, body: Any) -> Dissected | None:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    messages = []
    for raw in body["messages"]:
        raw = _d(raw)
        role = _s(raw.get("role"))
        if role is None:
            continue
        messages.append(Message(role, _anthropic_blocks(raw.get("content"))))
    system = _anthropic_system(body.get("system"))
    tools = [t["name"] for t in _l(body.get("tools")) if isinstance(t, dict) and _s(t.get("name"))]
    sid = session_id_from_anthropic_user_id(_d(body.get("metadata")).get("user_id"))
    if sid is None:
        m = _RAW_SESSION.search(raw_body)
        sid = m.group(1) if m else None
    hint = "claude-code" if any("claude code" in s.lower() for s in system) else None
    return Dissected(
        decoder="anthropic",
        provider="anthropic",
        model=_s(body.get("model")),
        session_id=sid,
        system=system,
        messages=messages,
        tools=tools,
        response=None,
        client_hint=hint,
    )


def _anthropic_response(body: str, content_type: str | None) -> _Response | None:
    if _looks_sse(body, content_type):
        return _anthropic_response_sse(body)
    return _anthropic_response_json(_loads(body))


# --------------------------------------------------------------------------- openai (Responses API)


_TEXT_PART_KINDS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_IMAGE_PART_KINDS = frozenset({"input_image", "image_url", "image"})


def _content_parts(content: Any, keep_empty_string: bool) -> list[Block]:
    """OpenAI content: a string, or a list of parts (Responses and Chat Completions share the
    part shapes: text-like kinds, refusal, images; a Chat part may also be an untyped {text})."""
    if isinstance(content, str):
        return [Block("text", text=content)] if content or keep_empty_string else []
    blocks = []
    for part in _l(content):
        if isinstance(part, str):
            blocks.append(Block("text", text=part))
            continue
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        text = part.get("text")
        if kind in _TEXT_PART_KINDS or (kind is None and isinstance(text, str)):
            blocks.append(Block("text", text=text if isinstance(text, str) else ""))
        elif kind == "refusal":
            refusal = part.get("refusal")
            blocks.append(Block("text", text=refusal if isinstance(refusal, str) else ""))
        elif kind in _IMAGE_PART_KINDS:
            blocks.append(Block("image"))
        else:
            blocks.append(Block("other"))
    return blocks


def _responses_content(content: Any) -> list[Block]:
    return _content_parts(content, keep_empty_string=True)


def _responses_output_text(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        pieces = []
        for part in output:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif part.get("type") in ("input_image", "image"):
                    pieces.append("[image]")
                else:
                    pieces.append(_dump(part))
        return "\n".join(pieces)
    if output is None:
        return None
    return _dump(output)


def _reasoning_block(item: dict) -> Block:
    texts = [
        p["text"] for p in _l(item.get("summary")) if isinstance(p, dict) and isinstance(p.get("text"), str)
    ]
    if not texts:
        texts = [
            p["text"]
            for p in _l(item.get("content"))
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return Block("thinking", text="\n\n".join(texts) if texts else None)


_SYSTEM_ROLES = ("system", "developer")


def _responses_item(item: Any) -> tuple[str, list[Block]] | None:
    """One Responses API input/output item → (role, blocks); system roles return ("system", ...)."""
    if isinstance(item, str):
        return "user", [Block("text", text=item)]
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind in (None, "message"):
        role = _s(item.get("role"))
        if role is None:
            return None
        return ("system" if role in _SYSTEM_ROLES else role), _responses_content(item.get("content"))
    if kind == "function_call":
        return "assistant", [
            _tool_use(item.get("name"), _parse_args(item.get("arguments")), item.get("call_id"))
        ]
    if kind == "custom_tool_call":
        return "assistant", [_tool_use(item.get("name"), item.get("input"), item.get("call_id"))]
    if kind == "local_shell_call":
        action = _d(item.get("action"))
        return "assistant", [
            _tool_use(
                "local_shell", {"command": action.get("command")}, item.get("call_id") or item.get("id")
            )
        ]
    if kind == "web_search_call":
        action = _d(item.get("action"))
        return "assistant", [_tool_use("web_search", action, item.get("id"))]
    if kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
        return "tool", [
            Block(
                "tool_result",
                text=preview(_responses_output_text(item.get("output"))),
                tool_id=_s(item.get("call_id")) or _s(item.get("id")),
            )
        ]
    if kind == "reasoning":
        return "assistant", [_reasoning_block(item)]
    return None


def _responses_messages(items: list) -> tuple[list[Message], list[str]]:
    messages: list[Message] = []
    system: list[str] = []
    for item in items:
        parsed = _responses_item(item)
        if parsed is None:
            continue
        role, blocks = parsed
        if role == "system":
            system.extend(b.text for b in blocks if b.type == "text" and b.text)
            continue
        # Consecutive assistant items (reasoning, text, tool calls) form one assistant message and
        # consecutive tool outputs one tool message; user messages always start a new message.
        if messages and messages[-1].role == role and role in ("assistant", "tool"):
            messages[-1].blocks.extend(blocks)
        else:
            messages.append(Message(role, blocks))
    return messages, system


def _responses_tools(tools: Any) -> list[str]:
    names = []
    for tool in _l(tools):
        tool = _d(tool)
        name = _s(tool.get("name")) or _s(_d(tool.get("function")).get("name")) or _s(tool.get("type"))
        if name:
            names.append(name)
    return names


def _dissect_openai(url: str, raw_body: str, body: Any) -> Dissected | None:
    if not isinstance(body, dict):
        return None
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        return None
    messages, system = _responses_messages(items)
    instructions = _s(body.get("instructions"))
    if instructions:
        system.insert(0, instructions)
    hint = None
    if body.get("store") is False and instructions and "codex" in instructions.lower():
        hint = "codex"
    return Dissected(
        decoder="openai",
        provider="openai",
        model=_s(body.get("model")),
        session_id=_s(body.get("prompt_cache_key")),
        system=system,
        messages=messages,
        tools=_responses_tools(body.get("tools")),
        response=None,
        client_hint=hint,
    )


def _responses_from_object(obj: Any) -> _Response | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("output"), list):
        return None
    blocks: list[Block] = []
    for item in obj["output"]:
        parsed = _responses_item(item)
        if parsed is not None and parsed[0] in ("assistant", "tool"):
            blocks.extend(parsed[1])
    reason = _s(_d(obj.get("incomplete_details")).get("reason")) or _s(obj.get("status"))
    return _Response(
        Message("assistant", blocks),
        response_id=_s(obj.get("id")),
        stop_reason=reason,
        model=_s(obj.get("model")),
    )


def _openai_response_sse(body: str) -> _Response | None:
    final: dict | None = None
    started: dict = {}
    items: list[Any] = []
    text: list[str] = []
    for name, data in _sse_json(body):
        if not isinstance(data, dict):
            continue
        kind = data.get("type") or name
        if kind in ("response.created", "response.in_progress"):
            started = _d(data.get("response")) or started
        elif kind == "response.output_item.done":
            if isinstance(data.get("item"), dict):
                items.append(data["item"])
        elif kind == "response.output_text.delta":
            if isinstance(data.get("delta"), str):
                text.append(data["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed", "response.done"):
            final = _d(data.get("response"))
    if final is None:
        return None
    resp = _responses_from_object(final)
    if resp is not None and resp.message.blocks:
        return resp
    # Some backends send an empty ``output`` in the final event: rebuild from the streamed items.
    fallback = resp or _Response(
        Message("assistant", []),
        response_id=_s(final.get("id")),
        stop_reason=_s(final.get("status")),
        model=_s(final.get("model")),
    )
    rebuilt = _responses_from_object({"output": items}) if items else None
    if rebuilt is not None and rebuilt.message.blocks:
        fallback.message = rebuilt.message
    elif text:
        fallback.message = Message("assistant", [Block("text", text="".join(text))])
    fallback.response_id = fallback.response_id or _s(started.get("id"))
    fallback.model = fallback.model or _s(started.get("model"))
    return fallback


def _openai_response(body: str, content_type: str | None) -> _Response | None:
    if _looks_sse(body, content_type):
        return _openai_response_sse(body)
    data = _loads(body)
    if isinstance(data, dict) and isinstance(data.get("response"), dict) and "output" not in data:
        data = data["response"]  # a bare ``response.completed`` event
    return _responses_from_object(data)


# --------------------------------------------------------------------------- openai-chat


def _chat_text_parts(content: Any) -> list[Block]:
    return _content_parts(content, keep_empty_string=False)


def _chat_plain_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.text or "" for b in _chat_text_parts(content) if b.type == "text")
    if content is None:
        return None
    return _dump(content)


def _chat_reasoning(msg: dict) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = _s(msg.get(key))
        if value:
            return value
    return None


def _chat_assistant_blocks(msg: dict) -> list[Block]:
    blocks: list[Block] = []
    reasoning = _chat_reasoning(msg)
    if reasoning:
        blocks.append(Block("thinking", text=reasoning))
    blocks.extend(_chat_text_parts(msg.get("content")))
    for call in _l(msg.get("tool_calls")):
        call = _d(call)
        fn = _d(call.get("function"))
        if not fn and not call:
            continue
        blocks.append(_tool_use(fn.get("name"), _parse_args(fn.get("arguments")), call.get("id")))
    legacy = _d(msg.get("function_call"))
    if legacy:
        blocks.append(_tool_use(legacy.get("name"), _parse_args(legacy.get("arguments")), None))
    return blocks


def _dissect_openai_chat(url: str, raw_body: str, body: Any) -> Dissected | None:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    system: list[str] = []
    messages: list[Message] = []
    for raw in body["messages"]:
        raw = _d(raw)
        role = _s(raw.get("role"))
        if role is None:
            continue
        if role in _SYSTEM_ROLES:
            text = _chat_plain_text(raw.get("content"))
            if text:
                system.append(text)
        elif role == "assistant":
            messages.append(Message("assistant", _chat_assistant_blocks(raw)))
        elif role in ("tool", "function"):
            block = Block(
                "tool_result",
                text=preview(_chat_plain_text(raw.get("content"))),
                tool_id=_s(raw.get("tool_call_id")),
            )
            if role == "function":
                block.name = _s(raw.get("name"))
            messages.append(Message("tool", [block]))
        else:
            messages.append(Message(role, _chat_text_parts(raw.get("content"))))
    tools = []
    for tool in _l(body.get("tools")):
        tool = _d(tool)
        name = _s(_d(tool.get("function")).get("name")) or _s(tool.get("name"))
        if name:
            tools.append(name)
    for fn in _l(body.get("functions")):
        name = _s(_d(fn).get("name"))
        if name:
            tools.append(name)
    hint = "opencode" if any("you are opencode" in s.lower() for s in system) else None
    return Dissected(
        decoder="openai-chat",
        provider="openai",
        model=_s(body.get("model")),
        session_id=_s(body.get("prompt_cache_key")),
        system=system,
        messages=messages,
        tools=tools,
        response=None,
        client_hint=hint,
    )


def _chat_response_json(data: Any) -> _Response | None:
    if not isinstance(data, dict):
        return None
    choices = _l(data.get("choices"))
    if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        return None
    choice = choices[0]
    return _Response(
        Message("assistant", _chat_assistant_blocks(choice["message"])),
        response_id=_s(data.get("id")),
        stop_reason=_s(choice.get("finish_reason")),
        model=_s(data.get("model")),
    )


def _chat_response_sse(body: str) -> _Response | None:
    resp_id = model = finish = None
    done = seen = False
    reasoning: list[str] = []
    content: list[str] = []
    calls: dict[int, dict] = {}
    call_order: list[int] = []
    for _name, data in _sse_json(body):
        if isinstance(data, str):
            if data.strip() == "[DONE]":
                done = True
            continue
        if not isinstance(data, dict):
            continue
        resp_id = resp_id or _s(data.get("id"))
        model = model or _s(data.get("model"))
        choices = _l(data.get("choices"))
        if not choices or not isinstance(choices[0], dict):
            continue
        choice = choices[0]
        seen = True
        if _s(choice.get("finish_reason")):
            finish = choice["finish_reason"]
        delta = _d(choice.get("delta"))
        r = _chat_reasoning(delta)
        if r:
            reasoning.append(r)
        if isinstance(delta.get("content"), str):
            content.append(delta["content"])
        for pos, tc in enumerate(_l(delta.get("tool_calls"))):
            tc = _d(tc)
            idx = tc.get("index")
            if not isinstance(idx, int):
                idx = pos
            entry = calls.get(idx)
            if entry is None:
                entry = calls[idx] = {"id": None, "name": "", "args": []}
                call_order.append(idx)
            entry["id"] = entry["id"] or _s(tc.get("id"))
            fn = _d(tc.get("function"))
            if isinstance(fn.get("name"), str):
                entry["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                entry["args"].append(fn["arguments"])
    if not seen or not (done or finish):
        return None
    blocks: list[Block] = []
    if reasoning:
        blocks.append(Block("thinking", text="".join(reasoning)))
    if content:
        blocks.append(Block("text", text="".join(content)))
    for idx in call_order:
        entry = calls[idx]
        blocks.append(_tool_use(entry["name"] or None, _parse_args("".join(entry["args"])), entry["id"]))
    return _Response(Message("assistant", blocks), response_id=resp_id, stop_reason=finish, model=model)


def _chat_response(body: str, content_type: str | None) -> _Response | None:
    if _looks_sse(body, content_type):
        return _chat_response_sse(body)
    return _chat_response_json(_loads(body))


# --------------------------------------------------------------------------- google-ai

_GEMINI_MODEL = re.compile(r"/models/([^/:?#]+)")
_GEMINI_ROLES = {"user": "user", "model": "assistant", "function": "tool", "tool": "tool", "system": "system"}


def _gemini_parts(parts: Any) -> list[Block]:
    blocks: list[Block] = []
    for part in _l(parts):
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            kind = "thinking" if part.get("thought") is True else "text"
            blocks.append(Block(kind, text=part["text"]))
        elif isinstance(part.get("functionCall"), dict):
            fc = part["functionCall"]
            blocks.append(_tool_use(fc.get("name"), fc.get("args"), fc.get("id")))
        elif isinstance(part.get("functionResponse"), dict):
            fr = part["functionResponse"]
            resp = fr.get("response")
            text = resp if isinstance(resp, str) else (None if resp is None else _dump(resp))
            blocks.append(
                Block("tool_result", text=preview(text), name=_s(fr.get("name")), tool_id=_s(fr.get("id")))
            )
        elif isinstance(part.get("inlineData"), dict):
            mime = _d(part["inlineData"]).get("mimeType")
            blocks.append(Block("image" if isinstance(mime, str) and mime.startswith("image/") else "other"))
        else:
            blocks.append(Block("other"))
    return blocks


def _gemini_merge(blocks: list[Block]) -> list[Block]:
    """Merge adjacent text (or thinking) pieces, as streamed chunks split one text into many parts."""
    out: list[Block] = []
    for block in blocks:
        if out and block.type in ("text", "thinking") and out[-1].type == block.type:
            out[-1].text = (out[-1].text or "") + (block.text or "")
        else:
            out.append(block)
    return out


def _gemini_model_from_url(url: str) -> str | None:
    m = _GEMINI_MODEL.search(url or "")
    return m.group(1) if m else None


def _dissect_google(url: str, raw_body: str, body: Any) -> Dissected | None:
    if not isinstance(body, dict):
        return None
    model = _gemini_model_from_url(url)
    if not isinstance(body.get("contents"), list) and isinstance(body.get("request"), dict):
        # Code Assist envelope (Gemini CLI): {"model": ..., "project": ..., "request": {...}}
        model = model or _s(body.get("model"))
        body = body["request"]
    if not isinstance(body.get("contents"), list):
        return None
    messages = []
    for raw in body["contents"]:
        raw = _d(raw)
        if not raw:
            continue
        role = _GEMINI_ROLES.get(raw.get("role") if isinstance(raw.get("role"), str) else "user", "user")
        messages.append(Message(role, _gemini_parts(raw.get("parts"))))
    sys_raw = body.get("systemInstruction", body.get("system_instruction"))
    system: list[str] = []
    if isinstance(sys_raw, str) and sys_raw:
        system.append(sys_raw)
    elif isinstance(sys_raw, dict):
        system = [b.text for b in _gemini_parts(sys_raw.get("parts")) if b.type == "text" and b.text]
    tools: list[str] = []
    for tool in _l(body.get("tools")):
        tool = _d(tool)
        decls = tool.get("functionDeclarations", tool.get("function_declarations"))
        if isinstance(decls, list):
            tools.extend(d["name"] for d in decls if isinstance(d, dict) and _s(d.get("name")))
        else:
            tools.extend(k for k in tool if isinstance(k, str))
    return Dissected(
        decoder="google-ai",
        provider="google",
        model=model,
        session_id=None,
        system=system,
        messages=messages,
        tools=tools,
        response=None,
    )


def _gemini_chunks(chunks: list) -> _Response | None:
    blocks: list[Block] = []
    resp_id = model = finish = None
    seen = False
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("response"), dict) and "candidates" not in chunk:
            chunk = chunk["response"]  # Code Assist envelope
        resp_id = resp_id or _s(chunk.get("responseId"))
        model = model or _s(chunk.get("modelVersion"))
        cands = _l(chunk.get("candidates"))
        if not cands or not isinstance(cands[0], dict):
            continue
        cand = cands[0]
        parts = _d(cand.get("content")).get("parts")
        finish = _s(cand.get("finishReason")) or finish
        # A candidate counts when it carries parts or a finish reason (e.g. an empty SAFETY stop).
        seen = seen or isinstance(parts, list) or finish is not None
        blocks.extend(_gemini_parts(parts))
    if not seen:
        return None
    return _Response(
        Message("assistant", _gemini_merge(blocks)), response_id=resp_id, stop_reason=finish, model=model
    )


def _google_response(body: str, content_type: str | None) -> _Response | None:
    if _looks_sse(body, content_type):
        chunks = [d for _n, d in _sse_json(body) if isinstance(d, dict)]
        resp = _gemini_chunks(chunks)
        return resp if resp is not None and resp.stop_reason else None
    data = _loads(body)
    if isinstance(data, dict):
        return _gemini_chunks([data])
    if isinstance(data, list):  # streamGenerateContent without alt=sse returns a JSON array
        return _gemini_chunks(data)
    return None


# --------------------------------------------------------------------------- openai-ws


def _dissect_openai_ws(url: str, raw_body: str, body: Any) -> Dissected | None:
    """One client frame of a Responses API WebSocket: a `response.create` event, its request
    fields at the top level or under `response`. Other client events are not calls."""
    if not isinstance(body, dict) or body.get("type") != "response.create":
        return None
    inner = body.get("response") if isinstance(body.get("response"), dict) else body
    result = _dissect_openai(url, raw_body, inner)
    if result is None:
        return None
    result.decoder = "openai-ws"
    result.incremental = bool(inner.get("previous_response_id"))
    return result


WS_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed", "response.done")


def ws_response(text: str | None) -> tuple[Message, str | None, str | None, str | None] | None:
    """A server frame of a Responses API WebSocket: (message, response id, stop reason, model)
    for a final `response.*` event; None for anything else (deltas are skipped)."""
    try:
        data = _loads(_as_text(text))
        if not isinstance(data, dict) or data.get("type") not in WS_FINAL_EVENTS:
            return None
        resp = _responses_from_object(data.get("response"))
    except Exception:  # a dissector must never take the assembler down
        return None
    if resp is None:
        return None
    return resp.message, resp.response_id, resp.stop_reason, resp.model


# --------------------------------------------------------------------------- entry point

_Decoder = Callable[[str, str, Any], Dissected | None]
_ResponseParser = Callable[[str, str | None], _Response | None]

_DECODERS: dict[str, tuple[_Decoder, _ResponseParser | None]] = {
    "anthropic": (_dissect_anthropic, _anthropic_response),
    "openai": (_dissect_openai, _openai_response),
    "openai-ws": (_dissect_openai_ws, None),
    "openai-chat": (_dissect_openai_chat, _chat_response),
    "google-ai": (_dissect_google, _google_response),
}


def dissect(
    decoder: str,
    url: str,
    request_body: str | None,
    response_body: str | None,
    response_content_type: str | None = None,
) -> Dissected | None:
    """Dissect one recorded transaction with the named decoder.

    Returns None when the request body is not something this decoder understands (or the decoder
    is unknown); an absent or unparseable response only leaves ``response=None``. Never raises.
    """
    try:
        entry = _DECODERS.get(decoder) if isinstance(decoder, str) else None
        raw = _as_text(request_body)
        if entry is None or not raw:
            return None
        url = url if isinstance(url, str) else ""
        result = entry[0](url, raw, _loads(raw))
    except Exception:  # a dissector must never take the assembler down
        return None
    if result is None or entry[1] is None:
        return result
    try:
        resp_text = _as_text(response_body)
        ctype = response_content_type if isinstance(response_content_type, str) else None
        resp = entry[1](resp_text, ctype) if resp_text else None
    except Exception:
        resp = None
    if resp is not None:
        result.response = resp.message
        result.response_id = resp.response_id
        result.stop_reason = resp.stop_reason
        result.model = result.model or resp.model
    return result
