"""Conversations that must stay apart, and a provider told by its body: a local server that
answers like Anthropic's Messages API on a host greyproxy has no rule for, driven through the
proxy like Claude Code would (whole history in every request, `metadata.user_id`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.integration.llmutil import HOST
from tests.integration.netutil import wait_until
from tests.ports import free_port


class MessagesHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else " ".join(b.get("text", "") for b in last if isinstance(b, dict))
        self.server.calls += 1  # type: ignore[attr-defined]
        payload = json.dumps({"id": f"msg_{self.server.calls}", "type": "message", "role": "assistant",  # type: ignore[attr-defined]
                              "model": body["model"], "stop_reason": "end_turn",
                              "content": [{"type": "text", "text": f"re: {text}"}],
                              "usage": {"input_tokens": 1, "output_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def messages_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer((HOST, free_port(HOST)), MessagesHandler)
    server.daemon_threads = True
    server.calls = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def ask(gp, server, history: list[dict], user_id: str, container: str = "agent1") -> dict:
    """One Messages API call with the whole history; the answer is appended to it."""
    session = requests.Session()
    session.trust_env = False
    url = f"http://{HOST}:{server.server_address[1]}/v1/messages"
    body = {"model": "claude-test", "max_tokens": 100, "system": "You are a coding agent.",
            "metadata": {"user_id": user_id}, "messages": history}
    resp = session.post(url, json=body, timeout=20, headers={"anthropic-version": "2023-06-01"},
                        proxies={"http": f"http://{container}:x@127.0.0.1:{gp.ports['http']}"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    history.append({"role": "assistant", "content": answer["content"]})
    return answer


def conversations(gp) -> list[dict]:
    return gp.api("GET", "/api/conversations").json()["items"]


def test_two_conversations_a_second_apart_stay_two_and_anthropic_is_detected(gp, messages_server):
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": HOST}
                  ).status_code == 201
    user = "user-7f3a-not-a-uuid"
    first = [{"role": "user", "content": "write a parser"}]
    second = [{"role": "user", "content": [{"type": "text", "text": "fix the tests"}]}]
    ask(gp, messages_server, first, user)
    ask(gp, messages_server, second, user)  # a second conversation, interleaved
    first.append({"role": "user", "content": "now add error handling"})
    ask(gp, messages_server, first, user)
    second.append({"role": "user", "content": "and run them"})
    ask(gp, messages_server, second, user)

    found = wait_until(lambda: (lambda c: c if len(c) == 2 and all(x["turn_count"] == 2 for x in c) else None)(
        conversations(gp)), 15)
    assert found, conversations(gp)
    by_prompt = {c["first_prompt"]: c for c in found}
    assert set(by_prompt) == {"write a parser", "fix the tests"}
    for conv in found:
        # decoded as Anthropic by its body, though the host is unknown: complete, not "incomplete"
        assert conv["provider"] == "anthropic" and conv["metadata"]["decoder"] == "anthropic"
        assert conv["incomplete"] is False and conv["last_turn_has_response"] is True
        assert conv["metadata"]["api_calls"] == 2 and conv["system_prompt"] == "You are a coding agent."
        assert conv["client_name"] == "claude-code"  # nothing else tells: Anthropic's usual client
    detail = gp.api("GET", f"/api/conversations/{by_prompt['fix the tests']['id']}").json()
    assert [t["user_prompt"] for t in detail["turns"]] == ["fix the tests", "and run them"]
    assert detail["turns"][1]["steps"][0]["text"] == "re: and run them"
    rules = gp.api("GET", "/api/endpoint-rules")
    if rules.status_code == 200:  # the learned rule says which decoder
        learned = [r for r in rules.json().get("items", rules.json().get("rules", [])) if r.get("user_defined")]
        assert learned and all(r.get("decoder_name", r.get("decoder")) == "anthropic" for r in learned)


def test_a_session_id_that_is_not_a_uuid_names_the_conversation(gp, messages_server):
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": HOST}
                  ).status_code == 201
    ask(gp, messages_server, [{"role": "user", "content": "one"}], json.dumps({"session_id": "plain-id-2"}))
    # the legacy form wants a UUID: anything else is no session id, and the thread keeps them apart
    ask(gp, messages_server, [{"role": "user", "content": "two"}], "user_abc_account_x_session_gw-sess-0001")
    found = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(conversations(gp)), 15)
    assert found, conversations(gp)
    ids = sorted(c["id"] for c in found)
    assert ids[0].startswith("heuristic_") and ids[1] == "plain-id-2"


# -- OpenAI Responses over WebSocket (openai-ws) --------------------------------------------------
def responses_ws(ws) -> None:
    """A Responses API WebSocket: each `response.create` gets created, deltas, then completed."""
    for n, raw in enumerate(ws, start=1):
        event = json.loads(raw)
        if event.get("type") != "response.create":
            continue
        text = f"answer {n}"
        rid = f"resp_{n}"
        ws.send(json.dumps({"type": "response.created", "response": {"id": rid, "status": "in_progress"}}))
        for piece in (text[:3], text[3:]):
            ws.send(json.dumps({"type": "response.output_text.delta", "delta": piece}))
        ws.send(json.dumps({"type": "response.completed", "response": {
            "id": rid, "status": "completed", "model": event.get("model"),
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": text}]}]}}))


@pytest.fixture
def ws_llm():
    from websockets.sync.server import serve

    server = serve(responses_ws, HOST, free_port(HOST))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.port = server.socket.getsockname()[1]
    yield server
    server.shutdown()


def test_openai_responses_over_websocket_become_a_conversation(gp, ws_llm):
    from websockets.sync.client import connect

    from tests.integration.netutil import http_connect

    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": HOST}
                  ).status_code == 201
    status, _, raw = http_connect(gp.ports["http"], HOST, ws_llm.port)
    assert status == 200
    with connect(f"ws://{HOST}:{ws_llm.port}/v1/responses", sock=raw) as ws:
        def call(payload: dict) -> None:
            ws.send(json.dumps({"type": "response.create", **payload}))
            while json.loads(ws.recv(timeout=10))["type"] != "response.completed":
                pass

        call({"model": "gpt-ws", "prompt_cache_key": "ws-session-1", "instructions": "You are Codex.",
              "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]}]})
        # the next call sends only what is new
        call({"model": "gpt-ws", "prompt_cache_key": "ws-session-1", "previous_response_id": "resp_1",
              "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]}]})

    found = wait_until(lambda: (lambda c: c if c and c[0]["turn_count"] == 2 else None)(conversations(gp)), 15)
    assert found, conversations(gp)
    conv = found[0]
    assert conv["id"] == "ws-session-1" and conv["provider"] == "openai"
    assert conv["metadata"]["decoder"] == "openai-ws" and conv["metadata"]["api_calls"] == 2
    assert conv["incomplete"] is False and conv["model"] == "gpt-ws" and conv["system_prompt"] == "You are Codex."
    assert conv["client_name"] == "codex"  # told by its instructions
    detail = gp.api("GET", "/api/conversations/ws-session-1").json()
    assert [t["user_prompt"] for t in detail["turns"]] == ["first", "second"]
    assert [[s["text"] for s in t["steps"]] for t in detail["turns"]] == [["answer 1"], ["answer 2"]]
    assert [t["request_ids"] for t in detail["turns"]] == [["resp_1"], ["resp_2"]]
    assert detail["request_ids"] == ["resp_1", "resp_2"]


# -- subagent threads -----------------------------------------------------------------------------
def test_a_session_is_split_into_main_subagent_and_side_threads(gp, messages_server):
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": HOST}
                  ).status_code == 201
    user = json.dumps({"device_id": "d", "session_id": "sess-main"})
    task = "Explore the repository and list its files"
    main = [{"role": "user", "content": "build the feature"}]
    ask(gp, messages_server, main, user)
    ask(gp, messages_server, [{"role": "user", "content": "Write a 5-word title for: build the feature"}], user)
    # the main thread calls its Task tool; the subagent's first prompt is that task
    main[-1] = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Task",
                                                  "input": {"description": "explore", "prompt": task}}]}
    sub = [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>be careful</system-reminder>"},
                                        {"type": "text", "text": task}]}]
    ask(gp, messages_server, sub, user)
    sub.append({"role": "user", "content": "and count them"})
    ask(gp, messages_server, sub, user)
    main.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3 files"}]})
    ask(gp, messages_server, main, user)

    def ready():
        items = conversations(gp)
        if len(items) != 1 or len(items[0]["metadata"].get("linked_subagents", [])) != 2:
            return None
        return items[0] if items[0]["metadata"]["api_calls"] == 2 else None

    parent = wait_until(ready, 15)
    assert parent, conversations(gp)
    assert parent["id"] == "sess-main" and parent["first_prompt"] == "build the feature"
    assert parent["metadata"]["linked_subagents"] == ["sess-main/thread_1", "sess-main/subagent_1"]
    detail = gp.api("GET", "/api/conversations/sess-main").json()
    step = detail["turns"][0]["steps"][0]
    assert step["tool_name"] == "Task" and step["linked_conversation_id"] == "sess-main/subagent_1"
    assert step["result_preview"] == "3 files"

    children = gp.api("GET", "/api/conversations/sess-main/subagents").json()["items"]
    assert [c["id"] for c in children] == ["sess-main/subagent_1", "sess-main/thread_1"]
    assert all(c["parent_conversation_id"] == "sess-main" for c in children)
    subagent = gp.api("GET", "/api/conversations/sess-main/subagent_1").json()
    assert subagent["metadata"]["thread_kind"] == "subagent" and subagent["metadata"]["api_calls"] == 2
    assert [t["user_prompt"].splitlines()[-1] for t in subagent["turns"]] == [task, "and count them"]
    title = gp.api("GET", "/api/conversations/sess-main/thread_1").json()
    assert title["metadata"]["thread_kind"] == "thread" and title["turn_count"] == 1
    assert gp.api("GET", "/api/conversations/sess-main/thread_9").status_code == 404
