"""LLM API dissectors: Anthropic, OpenAI Responses, Chat Completions, Gemini."""

from __future__ import annotations

import json

import pytest

from greyproxy.conversations.dissect import (
    PREVIEW_LIMIT,
    SUMMARY_LIMIT,
    Block,
    Dissected,
    Message,
    dissect,
    session_id_from_anthropic_user_id,
    sse_events,
    tool_summary,
    ws_response,
)

SID = "3f1c2a9e-7b4d-4e0a-9c61-5d2f8e4b7a10"
OTHER = "0b7e9d21-4c3a-4f5e-8a12-6e9f0c1d2b34"


def sse(*events: tuple[str | None, object], sep: str = "\n") -> str:
    """Build an event stream the way providers frame it: optional ``event:`` line, ``data:`` line, blank line."""
    out = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        head = f"event: {name}{sep}" if name else ""
        out.append(f"{head}data: {payload}{sep}{sep}")
    return "".join(out)


def anth(*events: dict) -> str:
    return sse(*((e["type"], e) for e in events))


def data_only(*chunks: object) -> str:
    return sse(*((None, c) for c in chunks))


# =========================================================================== anthropic

ANTHROPIC_REQ = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 32000,
    "stream": True,
    "system": [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "Use the tools available to you.", "cache_control": {"type": "ephemeral"}},
    ],
    "tools": [
        {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}},
        {"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}},
        {"name": "mcp__github__create_issue", "input_schema": {"type": "object"}},
    ],
    "metadata": {"user_id": f"user_2a6b0c_account_{OTHER}_session_{SID}"},
    "messages": [
        {"role": "user", "content": "list the files"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "The user wants a listing.", "signature": "EqQBCkgI"},
                {"type": "text", "text": "I'll list them."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "Bash",
                    "input": {"command": "ls -la", "description": "List files"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": [{"type": "text", "text": "total 8\n-rw-r--r-- 1 u u 12 app.py"}],
                },
                {"type": "text", "text": "now read app.py"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01B",
                    "name": "Read",
                    "input": {"file_path": "/src/app.py"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": "print('hi')",
                    "is_error": False,
                },
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            ],
        },
    ],
}

ANTHROPIC_SSE = anth(
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XYZ",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 120, "output_tokens": 1},
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {"type": "ping"},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "It prints "},
    },
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hi."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "The file prints"}},
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": " `hi`. Running it:"},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_01C", "name": "Bash", "input": {}},
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"comma'},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": 'nd": "python /src/app.py"}'},
    },
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 42},
    },
    {"type": "message_stop"},
)


def test_anthropic_request():
    d = dissect(
        "anthropic", "https://api.anthropic.com/v1/messages?beta=true", json.dumps(ANTHROPIC_REQ), None
    )
    assert isinstance(d, Dissected)
    assert (d.decoder, d.provider, d.model) == ("anthropic", "anthropic", "claude-sonnet-4-5-20250929")
    assert d.session_id == SID
    assert d.client_hint == "claude-code"
    assert d.system == [
        "You are Claude Code, Anthropic's official CLI for Claude.",
        "Use the tools available to you.",
    ]
    assert d.tools == ["Bash", "Read", "mcp__github__create_issue"]
    assert d.response is None and d.response_id is None and d.stop_reason is None
    assert [m.role for m in d.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert d.messages[0].blocks == [Block("text", text="list the files")]
    thinking, text, call = d.messages[1].blocks
    assert thinking == Block("thinking", text="The user wants a listing.")
    assert text == Block("text", text="I'll list them.")
    assert call == Block("tool_use", name="Bash", summary="Bash: ls -la", tool_id="toolu_01A")
    result, follow_up = d.messages[2].blocks
    assert result == Block("tool_result", text="total 8\n-rw-r--r-- 1 u u 12 app.py", tool_id="toolu_01A")
    assert follow_up.text == "now read app.py"
    assert d.messages[3].blocks[0].summary == "Read: /src/app.py"
    assert d.messages[4].blocks == [
        Block("tool_result", text="print('hi')", tool_id="toolu_01B"),
        Block("image"),
    ]


def test_anthropic_sse_response():
    d = dissect(
        "anthropic",
        "https://api.anthropic.com/v1/messages",
        json.dumps(ANTHROPIC_REQ),
        ANTHROPIC_SSE,
        "text/event-stream; charset=utf-8",
    )
    assert d.response_id == "msg_01XYZ"
    assert d.stop_reason == "tool_use"
    assert d.response == Message(
        "assistant",
        [
            Block("thinking", text="It prints hi."),
            Block("text", text="The file prints `hi`. Running it:"),
            Block("tool_use", name="Bash", summary="Bash: python /src/app.py", tool_id="toolu_01C"),
        ],
    )


def test_anthropic_sse_detected_without_content_type_and_with_crlf():
    crlf = ANTHROPIC_SSE.replace("\n", "\r\n")
    d = dissect("anthropic", "", json.dumps(ANTHROPIC_REQ), crlf, None)
    assert d.response is not None and len(d.response.blocks) == 3


def test_anthropic_sse_stream_without_message_stop_but_with_stop_reason():
    cut = ANTHROPIC_SSE[: ANTHROPIC_SSE.index("event: message_stop")]
    d = dissect("anthropic", "", json.dumps(ANTHROPIC_REQ), cut, "text/event-stream")
    assert d.response is not None and d.stop_reason == "tool_use"


def test_anthropic_json_response():
    body = {
        "id": "msg_01JSON",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [
            {"type": "text", "text": "Done."},
            {
                "type": "tool_use",
                "id": "toolu_9",
                "name": "Edit",
                "input": {"file_path": "a.py", "old_string": "x"},
            },
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    req = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "fix a.py"}]}
    d = dissect("anthropic", "", json.dumps(req), json.dumps(body), "application/json")
    assert d.response.blocks == [
        Block("text", text="Done."),
        Block("tool_use", name="Edit", summary="Edit: a.py", tool_id="toolu_9"),
    ]
    assert (d.response_id, d.stop_reason) == ("msg_01JSON", "end_turn")
    assert d.client_hint is None and d.session_id is None and d.system == []


def test_anthropic_model_falls_back_to_response():
    req = {"messages": [{"role": "user", "content": "hi"}]}
    resp = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-opus-4-1",
        "content": [],
        "stop_reason": "end_turn",
    }
    d = dissect("anthropic", "", json.dumps(req), json.dumps(resp))
    assert d.model == "claude-opus-4-1" and d.response == Message("assistant", [])


def test_anthropic_error_response_leaves_response_none():
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    req = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert dissect("anthropic", "", req, json.dumps(err)).response is None
    stream = anth({"type": "message_start", "message": {"id": "msg_1", "content": []}}, err)
    assert dissect("anthropic", "", req, stream, "text/event-stream").response is None


def test_anthropic_system_string_and_misc_blocks():
    req = {
        "model": "m",
        "system": "You are a helpful assistant.",
        "messages": [
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "abc"},
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_1",
                        "name": "web_search",
                        "input": {"query": "gevent"},
                    },
                    {
                        "type": "web_search_tool_result",
                        "tool_use_id": "srvtoolu_1",
                        "content": [{"type": "x"}],
                    },
                    {"type": "document", "source": {}},
                    "bare string",
                    42,
                ],
            }
        ],
    }
    d = dissect("anthropic", "", json.dumps(req), None)
    assert d.system == ["You are a helpful assistant."]
    assert d.client_hint is None
    blocks = d.messages[0].blocks
    assert [b.type for b in blocks] == ["thinking", "tool_use", "tool_result", "other", "text"]
    assert blocks[0].text is None
    assert blocks[1].summary == "web_search: gevent"
    assert blocks[2].tool_id == "srvtoolu_1" and blocks[2].text == '{"type": "x"}'


def test_tool_result_preview_is_cut():
    long = "x" * 5000
    req = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": long}]}
        ],
    }
    text = dissect("anthropic", "", json.dumps(req), None).messages[0].blocks[0].text
    assert len(text) <= PREVIEW_LIMIT
    assert text.startswith("xxx") and "cut" in text and "5000" in text
    # Text blocks are kept whole.
    req["messages"][0]["content"] = long
    assert dissect("anthropic", "", json.dumps(req), None).messages[0].blocks[0].text == long


# --------------------------------------------------------------------------- session ids


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        (f"user_abc123_account_{OTHER}_session_{SID}", SID),
        (f"user_abc123_account__session_{SID}", SID),
        (json.dumps({"device_id": "d1", "account_uuid": OTHER, "session_id": SID}), SID),
        ({"device_id": "d1", "session_id": SID}, SID),
        ({"session_id": "opaque-id"}, "opaque-id"),
        (json.dumps({"session_id": "not-a-uuid-but-fine"}), "not-a-uuid-but-fine"),
        ({"session_id": ""}, None),
        ({"session_id": 5}, None),
        (json.dumps({"device_id": "d1"}), None),
        ("{not json", None),
        (f"user_abc_session_{SID[:-1]}", None),  # truncated uuid
        (f"session_{SID}", None),  # the legacy form has the leading underscore
        ("user_abc123", None),
        ("", None),
        (None, None),
        (42, None),
        ([SID], None),
    ],
)
def test_session_id_from_anthropic_user_id(user_id, expected):
    assert session_id_from_anthropic_user_id(user_id) == expected


def test_anthropic_session_json_user_id_in_request():
    req = {
        "model": "m",
        "metadata": {"user_id": json.dumps({"device_id": "abc", "account_uuid": OTHER, "session_id": SID})},
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert dissect("anthropic", "", json.dumps(req), None).session_id == SID


def test_anthropic_session_regex_fallback_on_raw_body():
    req = {
        "model": "m",
        "metadata": {"user_id": "opaque"},
        "messages": [{"role": "user", "content": f"context: session_{SID} please continue"}],
    }
    assert dissect("anthropic", "", json.dumps(req), None).session_id == SID
    req["messages"][0]["content"] = "no ids here"
    assert dissect("anthropic", "", json.dumps(req), None).session_id is None


# =========================================================================== openai (Responses API)

CODEX_INSTRUCTIONS = "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI."

RESPONSES_REQ = {
    "model": "gpt-5-codex",
    "instructions": CODEX_INSTRUCTIONS,
    "store": False,
    "stream": True,
    "prompt_cache_key": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "tools": [
        {"type": "function", "name": "shell", "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        {"type": "web_search"},
    ],
    "input": [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "<permissions>ro</permissions>"}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "<environment_context/>"}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is in src?"}]},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "**Listing files**"}],
            "encrypted_content": "gAAAA",
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_abc",
            "name": "shell",
            "arguments": json.dumps({"command": ["bash", "-lc", "ls src"], "workdir": "/repo"}),
        },
        {"type": "function_call_output", "call_id": "call_abc", "output": "app.py\nutil.py"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two files."}]},
        {"role": "user", "content": "thanks"},
    ],
}


def test_openai_responses_request():
    d = dissect("openai", "https://api.openai.com/v1/responses", json.dumps(RESPONSES_REQ), None)
    assert (d.provider, d.model, d.decoder) == ("openai", "gpt-5-codex", "openai")
    assert d.session_id == "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    assert d.client_hint == "codex"
    assert d.system == [CODEX_INSTRUCTIONS, "<permissions>ro</permissions>"]
    assert d.tools == ["shell", "apply_patch", "web_search"]
    assert [m.role for m in d.messages] == ["user", "user", "assistant", "tool", "assistant", "user"]
    assert d.messages[1].blocks == [Block("text", text="what is in src?")]
    reasoning, call = d.messages[2].blocks
    assert reasoning == Block("thinking", text="**Listing files**")
    assert call == Block("tool_use", name="shell", summary="shell: bash -lc ls src", tool_id="call_abc")
    assert d.messages[3].blocks == [Block("tool_result", text="app.py\nutil.py", tool_id="call_abc")]
    assert d.messages[4].blocks == [Block("text", text="Two files.")]
    assert d.messages[5].blocks == [Block("text", text="thanks")]


def test_openai_input_string_and_no_codex_hint():
    req = {"model": "gpt-4.1", "input": "Tell me a joke", "instructions": "Be brief.", "store": False}
    d = dissect("openai", "", json.dumps(req), None)
    assert d.messages == [Message("user", [Block("text", text="Tell me a joke")])]
    assert d.system == ["Be brief."] and d.client_hint is None and d.session_id is None
    req["instructions"] = CODEX_INSTRUCTIONS
    req["store"] = True
    assert dissect("openai", "", json.dumps(req), None).client_hint is None


def test_openai_custom_tool_call_and_output_list():
    req = {
        "model": "gpt-5",
        "input": [
            {
                "type": "custom_tool_call",
                "call_id": "call_p",
                "name": "apply_patch",
                "input": "*** Begin Patch\n*** Update File: a.py\n@@\n-x\n+y\n*** End Patch",
            },
            {
                "type": "custom_tool_call_output",
                "call_id": "call_p",
                "output": [{"type": "input_text", "text": "ok"}],
            },
            {"type": "function_call", "call_id": "call_q", "name": "lookup", "arguments": "{not json"},
            {"type": "item_reference", "id": "msg_x"},
        ],
    }
    d = dissect("openai", "", json.dumps(req), None)
    assert d.messages[0].blocks[0].summary == "apply_patch: *** Begin Patch"
    assert d.messages[1].blocks == [Block("tool_result", text="ok", tool_id="call_p")]
    assert d.messages[2].blocks == [
        Block("tool_use", name="lookup", summary="lookup: {not json", tool_id="call_q")
    ]
    assert len(d.messages) == 3


RESPONSE_OBJ = {
    "id": "resp_0abc",
    "object": "response",
    "status": "completed",
    "model": "gpt-5-codex-2025",
    "output": [
        {
            "type": "reasoning",
            "id": "rs_2",
            "summary": [{"type": "summary_text", "text": "Reading the file"}],
        },
        {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_def",
            "name": "shell",
            "arguments": '{"command":["bash","-lc","cat src/app.py"]}',
            "status": "completed",
        },
        {
            "type": "message",
            "id": "msg_2",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
        },
    ],
}
EXPECTED_RESPONSE_BLOCKS = [
    Block("thinking", text="Reading the file"),
    Block("tool_use", name="shell", summary="shell: bash -lc cat src/app.py", tool_id="call_def"),
    Block("text", text="Let me look."),
]


def test_openai_json_response():
    d = dissect("openai", "", json.dumps(RESPONSES_REQ), json.dumps(RESPONSE_OBJ), "application/json")
    assert d.response == Message("assistant", EXPECTED_RESPONSE_BLOCKS)
    assert (d.response_id, d.stop_reason) == ("resp_0abc", "completed")


def _responses_stream(final_output: list) -> str:
    created = {
        "id": "resp_0abc",
        "object": "response",
        "status": "in_progress",
        "model": "gpt-5-codex-2025",
        "output": [],
    }
    final = dict(RESPONSE_OBJ, output=final_output)
    events = [
        {"type": "response.created", "sequence_number": 0, "response": created},
        {"type": "response.in_progress", "sequence_number": 1, "response": created},
        {
            "type": "response.output_item.added",
            "sequence_number": 2,
            "output_index": 0,
            "item": RESPONSE_OBJ["output"][0],
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 3,
            "output_index": 0,
            "item": RESPONSE_OBJ["output"][0],
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 4,
            "output_index": 1,
            "item": RESPONSE_OBJ["output"][1],
        },
        {"type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_2", "delta": "Let me"},
        {"type": "response.output_text.delta", "sequence_number": 6, "item_id": "msg_2", "delta": " look."},
        {
            "type": "response.output_text.done",
            "sequence_number": 7,
            "item_id": "msg_2",
            "text": "Let me look.",
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 8,
            "output_index": 2,
            "item": RESPONSE_OBJ["output"][2],
        },
        {"type": "response.completed", "sequence_number": 9, "response": final},
    ]
    return sse(*((e["type"], e) for e in events))


def test_openai_sse_prefers_completed_response():
    d = dissect(
        "openai",
        "",
        json.dumps(RESPONSES_REQ),
        _responses_stream(RESPONSE_OBJ["output"]),
        "text/event-stream",
    )
    assert d.response == Message("assistant", EXPECTED_RESPONSE_BLOCKS)
    assert (d.response_id, d.stop_reason) == ("resp_0abc", "completed")


def test_openai_sse_empty_completed_output_rebuilt_from_items():
    d = dissect("openai", "", json.dumps(RESPONSES_REQ), _responses_stream([]), "text/event-stream")
    assert d.response == Message("assistant", EXPECTED_RESPONSE_BLOCKS)
    assert d.response_id == "resp_0abc"


def test_openai_sse_text_deltas_as_last_resort():
    created = {"id": "resp_9", "status": "in_progress", "output": []}
    stream = sse(
        ("response.created", {"type": "response.created", "response": created}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hel"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "lo"}),
        (
            "response.completed",
            {"type": "response.completed", "response": {"status": "completed", "output": []}},
        ),
    )
    d = dissect("openai", "", json.dumps({"model": "m", "input": "hi"}), stream)
    assert d.response == Message("assistant", [Block("text", text="Hello")])
    assert d.response_id == "resp_9"


def test_openai_incomplete_status():
    obj = dict(RESPONSE_OBJ, status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    d = dissect("openai", "", json.dumps({"model": "m", "input": "hi"}), json.dumps(obj))
    assert d.stop_reason == "max_output_tokens"


def test_openai_sse_truncated_before_completed():
    stream = _responses_stream(RESPONSE_OBJ["output"])
    cut = stream[: stream.index("event: response.completed")]
    d = dissect("openai", "", json.dumps(RESPONSES_REQ), cut, "text/event-stream")
    assert d is not None and d.response is None


def test_openai_ws_frames():
    # A client frame is a call only when it is response.create (its fields at the top level or under `response`).
    frame = {"type": "response.create", "model": "gpt-5", "input": [], "prompt_cache_key": "k"}
    d = dissect("openai-ws", "wss://api.openai.com/v1/responses", json.dumps(frame), None)
    assert (d.decoder, d.provider, d.session_id, d.model, d.incremental) == ("openai-ws", "openai", "k", "gpt-5", False)
    nested = {"type": "response.create", "response": {"model": "m", "input": "hi", "previous_response_id": "r1"}}
    d = dissect("openai-ws", "", json.dumps(nested), None)
    assert d.incremental is True and [m.role for m in d.messages] == ["user"]
    for other in ({"type": "response.cancel"}, {"type": "session.update"}, [1], "x"):
        assert dissect("openai-ws", "", json.dumps(other), None) is None
    # A server frame answers it only when it is a final response.* event; deltas are skipped.
    done = ws_response(json.dumps({"type": "response.completed", "response": RESPONSE_OBJ}))
    assert done is not None and done[1] == RESPONSE_OBJ.get("id")
    assert ws_response(json.dumps({"type": "response.output_text.delta", "delta": "x"})) is None
    assert ws_response("[" * 100000) is None and ws_response(None) is None


# =========================================================================== openai-chat

CHAT_REQ = {
    "model": "openai/gpt-4o",
    "stream": True,
    "prompt_cache_key": "ses_abc123",
    "messages": [
        {"role": "system", "content": "You are opencode, an interactive CLI tool."},
        {"role": "system", "content": [{"type": "text", "text": "Project root: /repo"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "run the tests"},
                {"type": "image_url", "image_url": {"url": "data:"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command":"pytest -q"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"filePath":"/repo/a.py"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3 passed"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "x = 1"}]},
        {"role": "assistant", "content": "All green.", "reasoning_content": "Tests passed."},
        {"role": "user", "content": "great"},
    ],
    "tools": [
        {"type": "function", "function": {"name": "bash", "parameters": {}}},
        {"type": "function", "function": {"name": "read", "parameters": {}}},
    ],
}


def test_chat_request():
    d = dissect("openai-chat", "https://openrouter.ai/api/v1/chat/completions", json.dumps(CHAT_REQ), None)
    assert (d.decoder, d.provider, d.model, d.session_id) == (
        "openai-chat",
        "openai",
        "openai/gpt-4o",
        "ses_abc123",
    )
    assert d.system == ["You are opencode, an interactive CLI tool.", "Project root: /repo"]
    assert d.client_hint == "opencode"
    assert d.tools == ["bash", "read"]
    assert [m.role for m in d.messages] == ["user", "assistant", "tool", "tool", "assistant", "user"]
    assert d.messages[0].blocks == [Block("text", text="run the tests"), Block("image")]
    assert d.messages[1].blocks == [
        Block("tool_use", name="bash", summary="bash: pytest -q", tool_id="call_1"),
        Block("tool_use", name="read", summary="read: /repo/a.py", tool_id="call_2"),
    ]
    assert d.messages[2].blocks == [Block("tool_result", text="3 passed", tool_id="call_1")]
    assert d.messages[3].blocks == [Block("tool_result", text="x = 1", tool_id="call_2")]
    assert d.messages[4].blocks == [Block("thinking", text="Tests passed."), Block("text", text="All green.")]


def test_chat_minimal_aider_like_request():
    req = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Act as an expert software developer."},
            {"role": "user", "content": "hi"},
        ],
        "functions": [{"name": "write_file"}],
    }
    d = dissect("openai-chat", "", json.dumps(req), None)
    assert d.session_id is None and d.client_hint is None
    assert d.tools == ["write_file"]
    assert d.messages == [Message("user", [Block("text", text="hi")])]


def test_chat_json_response():
    resp = {
        "id": "chatcmpl-B9MHD",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "grep", "arguments": '{"pattern":"TODO"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    d = dissect("openai-chat", "", json.dumps(CHAT_REQ), json.dumps(resp), "application/json")
    assert d.response == Message(
        "assistant",
        [
            Block("text", text="Checking."),
            Block("tool_use", name="grep", summary="grep: TODO", tool_id="call_9"),
        ],
    )
    assert (d.response_id, d.stop_reason) == ("chatcmpl-B9MHD", "tool_calls")


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


CHAT_SSE = ": OPENROUTER PROCESSING\n\n" + data_only(
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"reasoning_content": "Need to "}),
    _chunk({"reasoning_content": "look."}),
    _chunk({"content": "Let me "}),
    _chunk({"content": "check."}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_A",
                    "type": "function",
                    "function": {"name": "bash", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"comm'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'and": "git status"}'}}]}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_B",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path":"README.md"}'},
                }
            ]
        }
    ),
    _chunk({}, "tool_calls"),
    {"id": "chatcmpl-123", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}},
    "[DONE]",
)


def test_chat_sse_response():
    d = dissect("openai-chat", "", json.dumps(CHAT_REQ), CHAT_SSE, "text/event-stream")
    assert d.response == Message(
        "assistant",
        [
            Block("thinking", text="Need to look."),
            Block("text", text="Let me check."),
            Block("tool_use", name="bash", summary="bash: git status", tool_id="call_A"),
            Block("tool_use", name="read", summary="read: README.md", tool_id="call_B"),
        ],
    )
    assert (d.response_id, d.stop_reason) == ("chatcmpl-123", "tool_calls")


def test_chat_sse_ollama_style_without_done():
    stream = data_only(_chunk({"role": "assistant", "content": "Hi"}), _chunk({"content": "!"}, "stop"))
    d = dissect("openai-chat", "", json.dumps(CHAT_REQ), stream, None)
    assert d.response == Message("assistant", [Block("text", text="Hi!")]) and d.stop_reason == "stop"


def test_chat_sse_truncated():
    stream = data_only(_chunk({"role": "assistant", "content": "Hi"}), _chunk({"content": " the"}))
    d = dissect("openai-chat", "", json.dumps(CHAT_REQ), stream, "text/event-stream")
    assert d is not None and d.response is None


# =========================================================================== google-ai

GEMINI_REQ = {
    "contents": [
        {"role": "user", "parts": [{"text": "What is in main.go?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Thinking about files", "thought": True},
                {"functionCall": {"name": "read_file", "args": {"absolute_path": "/repo/main.go"}}},
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "read_file", "response": {"output": "package main"}}}],
        },
        {
            "role": "user",
            "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}, {"fileData": {}}],
        },
    ],
    "systemInstruction": {"role": "user", "parts": [{"text": "You are an interactive CLI agent."}]},
    "tools": [
        {"functionDeclarations": [{"name": "read_file"}, {"name": "run_shell_command"}]},
        {"googleSearch": {}},
    ],
    "generationConfig": {"temperature": 0},
}
GEMINI_URL = (
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
)


def test_google_request():
    d = dissect("google-ai", GEMINI_URL, json.dumps(GEMINI_REQ), None)
    assert (d.decoder, d.provider, d.model, d.session_id) == ("google-ai", "google", "gemini-2.5-pro", None)
    assert d.system == ["You are an interactive CLI agent."]
    assert d.tools == ["read_file", "run_shell_command", "googleSearch"]
    assert [m.role for m in d.messages] == ["user", "assistant", "user", "user"]
    assert d.messages[1].blocks == [
        Block("thinking", text="Thinking about files"),
        Block("tool_use", name="read_file", summary="read_file: /repo/main.go"),
    ]
    assert d.messages[2].blocks == [Block("tool_result", text='{"output": "package main"}', name="read_file")]
    assert [b.type for b in d.messages[3].blocks] == ["image", "other"]


def test_google_model_from_non_streaming_url():
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert dissect("google-ai", url, json.dumps(GEMINI_REQ), None).model == "gemini-2.5-flash"
    assert dissect("google-ai", "", json.dumps(GEMINI_REQ), None).model is None


def _gchunk(parts: list, finish: str | None = None) -> dict:
    cand: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand], "modelVersion": "gemini-2.5-pro", "responseId": "resp-g-1"}


GEMINI_SSE = sse(
    *(
        (None, c)
        for c in (
            _gchunk([{"text": "Considering", "thought": True}]),
            _gchunk([{"text": " the file.", "thought": True}]),
            _gchunk([{"text": "It declares "}]),
            _gchunk([{"text": "package main."}]),
            _gchunk(
                [{"functionCall": {"name": "run_shell_command", "args": {"command": "go build ./..."}}}],
                "STOP",
            ),
        )
    ),
    sep="\r\n",
)
GEMINI_EXPECTED = Message(
    "assistant",
    [
        Block("thinking", text="Considering the file."),
        Block("text", text="It declares package main."),
        Block("tool_use", name="run_shell_command", summary="run_shell_command: go build ./..."),
    ],
)


def test_google_sse_response():
    d = dissect("google-ai", GEMINI_URL, json.dumps(GEMINI_REQ), GEMINI_SSE, "text/event-stream")
    assert d.response == GEMINI_EXPECTED
    assert (d.response_id, d.stop_reason) == ("resp-g-1", "STOP")


def test_google_json_response_and_json_array_stream():
    whole = _gchunk(
        [
            {"text": "Considering the file.", "thought": True},
            {"text": "It declares package main."},
            {"functionCall": {"name": "run_shell_command", "args": {"command": "go build ./..."}}},
        ],
        "STOP",
    )
    d = dissect("google-ai", GEMINI_URL, json.dumps(GEMINI_REQ), json.dumps(whole), "application/json")
    assert d.response == GEMINI_EXPECTED
    chunks = [c for _n, c in ((None, json.loads(x[6:])) for x in GEMINI_SSE.split("\r\n\r\n") if x)]
    d = dissect("google-ai", GEMINI_URL, json.dumps(GEMINI_REQ), json.dumps(chunks), "application/json")
    assert d.response == GEMINI_EXPECTED


def test_google_sse_truncated():
    cut = GEMINI_SSE[: GEMINI_SSE.rindex("data:")]
    d = dissect("google-ai", GEMINI_URL, json.dumps(GEMINI_REQ), cut, "text/event-stream")
    assert d is not None and d.response is None


def test_google_code_assist_envelope():
    body = {"model": "gemini-2.5-pro", "project": "p-123", "request": {"contents": GEMINI_REQ["contents"]}}
    resp = {"response": _gchunk([{"text": "ok"}], "STOP")}
    d = dissect(
        "google-ai",
        "https://cloudcode-pa.googleapis.com/v1internal:generateContent",
        json.dumps(body),
        json.dumps(resp),
    )
    assert d.model == "gemini-2.5-pro" and len(d.messages) == 4
    assert d.response == Message("assistant", [Block("text", text="ok")])


# =========================================================================== helpers


@pytest.mark.parametrize(
    ("name", "tool_input", "expected"),
    [
        ("Bash", {"command": "ls -la", "description": "List"}, "Bash: ls -la"),
        ("Read", {"file_path": "src/app.py", "offset": 10}, "Read: src/app.py"),
        ("Write", {"content": "x", "file_path": "out.txt"}, "Write: out.txt"),
        ("Edit", {"old_string": "a", "new_string": "b", "file_path": "e.py"}, "Edit: e.py"),
        ("Grep", {"pattern": "TODO", "path": "src"}, "Grep: TODO"),
        ("Task", {"prompt": "long prompt", "description": "Explore repo"}, "Task: Explore repo"),
        ("Custom", {"n": 3, "label": "first", "other": "second"}, "Custom: first"),
        ("Bash", {"command": "echo a\n  && echo b"}, "Bash: echo a && echo b"),
        ("TodoWrite", {"todos": [{"content": "x"}]}, "TodoWrite"),
        ("Nothing", {}, "Nothing"),
        ("Str", "raw\nsecond line", "Str: raw"),
        (None, {"command": "ls"}, "tool: ls"),
        ("Bash", None, "Bash"),
    ],
)
def test_tool_summary(name, tool_input, expected):
    assert tool_summary(name, tool_input) == expected


def test_tool_summary_is_capped():
    s = tool_summary("Bash", {"command": "x" * 1000})
    assert len(s) == SUMMARY_LIMIT and s.endswith("…")


def test_sse_events_framing():
    body = "event: a\ndata: 1\n\n: comment\ndata: line1\ndata: line2\n\nevent: b\ndata:no-space\r\n\r\ndata: tail"
    assert sse_events(body) == [("a", "1"), (None, "line1\nline2"), ("b", "no-space"), (None, "tail")]
    assert sse_events("") == []
    assert sse_events("event: x\n\n") == []


# =========================================================================== garbage in, no exceptions

GOOD = {
    "anthropic": json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "openai": json.dumps({"model": "m", "input": "hi"}),
    "openai-chat": json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "google-ai": json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
}
BAD_REQUESTS = [
    None,
    "",
    "not json",
    "{",
    "null",
    "42",
    '"a string"',
    "[]",
    "[1, 2, 3]",
    "{}",
    json.dumps({"messages": "hello", "input": 5, "contents": {"a": 1}}),
    json.dumps({"messages": None, "input": None, "contents": None}),
    "[" * 50000,
    b"\xff\xfe\x00garbage",
]
BAD_RESPONSES = [
    None,
    "",
    "not json",
    "{",
    "null",
    "[]",
    '[null, 1, "x"]',
    "{}",
    '{"content": "nope", "choices": "nope", "output": "nope", "candidates": "nope"}',
    '{"choices": [null], "output": null, "candidates": [{"content": 5}]}',
    '{"choices": [{"message": "str"}]}',
    'data: {"type": "message_start", "message": {"id": "msg_1", "content": []}}\n\ndata: {"type": "content_blo',
    'event: message_start\ndata: {"type":"message_start","message":5}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":"x"}\n\n',
    'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\ndata: {"choices": [{"delta": {"tool_calls": "x"',
    'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}\n\ndata: {"cand',
    'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1"}}\n\nevent: response.output_text.delta\ndata: {"type":"resp',
    "data: [DONE]\n\n",
    "data: \n\n\n\n",
    ":\n\n",
    "[" * 50000,
]


@pytest.mark.parametrize("decoder", ["anthropic", "openai", "openai-ws", "openai-chat", "google-ai"])
@pytest.mark.parametrize("request_body", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_garbage_requests_return_none(decoder, request_body):
    assert (
        dissect(decoder, "https://x/v1beta/models/m:generateContent", request_body, GOOD.get(decoder)) is None
    )


@pytest.mark.parametrize("decoder", ["anthropic", "openai", "openai-chat", "google-ai"])
@pytest.mark.parametrize("response_body", BAD_RESPONSES, ids=range(len(BAD_RESPONSES)))
@pytest.mark.parametrize("content_type", [None, "text/event-stream", "application/json", 5])
def test_garbage_responses_leave_response_none(decoder, response_body, content_type):
    d = dissect(
        decoder, "https://x/v1beta/models/m:generateContent", GOOD[decoder], response_body, content_type
    )
    assert d is not None
    assert d.response is None and d.response_id is None and d.stop_reason is None


@pytest.mark.parametrize(
    "request_body",
    [
        # wrong types in every nested position
        json.dumps(
            {
                "model": 5,
                "system": 7,
                "tools": "x",
                "metadata": "y",
                "messages": [
                    None,
                    1,
                    "s",
                    {"role": 5},
                    {"role": "user", "content": 5},
                    {
                        "role": "user",
                        "content": [
                            None,
                            {"type": "tool_use", "input": 3, "name": 4},
                            {"type": "text", "text": 9},
                        ],
                    },
                ],
            }
        ),
        json.dumps(
            {
                "model": [],
                "instructions": 5,
                "tools": [1, None],
                "input": [
                    None,
                    5,
                    {"type": "function_call", "arguments": 5},
                    {"type": "message", "role": "user", "content": 7},
                    {"type": "reasoning", "summary": "x"},
                ],
            }
        ),
        json.dumps(
            {
                "model": {},
                "tools": [{"function": 5}],
                "messages": [
                    {"role": "assistant", "tool_calls": [None, 5, {"function": "x"}], "function_call": 3},
                    {"role": "tool", "content": {"a": 1}},
                ],
            }
        ),
        json.dumps(
            {
                "contents": [
                    None,
                    5,
                    {"role": 5, "parts": "x"},
                    {"parts": [None, {"functionCall": 5}, {"functionResponse": {"response": None}}]},
                ],
                "systemInstruction": 5,
                "tools": [None, {"functionDeclarations": [5]}],
            }
        ),
    ],
)
@pytest.mark.parametrize("decoder", ["anthropic", "openai", "openai-chat", "google-ai"])
def test_wrong_nested_types_never_raise(decoder, request_body):
    d = dissect(decoder, "", request_body, request_body)
    assert d is None or isinstance(d, Dissected)


def test_unknown_decoder_and_non_string_arguments():
    assert dissect("nope", "", GOOD["anthropic"], None) is None
    assert dissect(None, None, GOOD["anthropic"], None) is None  # type: ignore[arg-type]
    assert dissect("anthropic", None, GOOD["anthropic"], 12345) is not None  # type: ignore[arg-type]


def test_bytes_bodies_are_decoded():
    d = dissect("anthropic", "", GOOD["anthropic"].encode(), ANTHROPIC_SSE.encode())  # type: ignore[arg-type]
    assert d is not None and d.response is not None


def test_google_blocked_candidate_is_an_empty_response():
    blocked = {"candidates": [{"finishReason": "SAFETY", "index": 0}], "responseId": "r-2"}
    d = dissect("google-ai", GEMINI_URL, json.dumps(GEMINI_REQ), json.dumps(blocked))
    assert d.response == Message("assistant", []) and d.stop_reason == "SAFETY"
