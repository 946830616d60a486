"""LLM conversations assembled from real captured traffic: an agent talks to a local
chat-completions server through the proxy; the unknown endpoint is recognised by its body,
the calls become one conversation with turns, tool calls and their results; the settings
switch stops and resumes assembly; a rebuild starts again from the first transaction."""

from __future__ import annotations

import pytest

from tests.backends import database_url  # noqa: F401 - every test here runs on SQLite and PostgreSQL
from tests.integration.llmutil import HOST, agent_session, chat, chat_server
from tests.integration.netutil import wait_until


@pytest.fixture
def llm():
    with chat_server() as server:
        yield server


@pytest.fixture
def cgp(gp):
    for container in ("agent1", "agent2"):
        assert gp.api("POST", "/api/rules", json={"container_pattern": container, "destination_pattern": HOST}
                      ).status_code == 201
    return gp


def conversations(gp, **params) -> list[dict]:
    return gp.api("GET", "/api/conversations", params=params).json()["items"]


def test_calls_become_one_conversation_with_turns_and_tool_calls(cgp, llm):
    agent_session(cgp, llm)
    found = wait_until(lambda: (lambda c: c if c and c[0]["turn_count"] == 2
                                and c[0]["metadata"]["api_calls"] == 3 else None)(conversations(cgp)), 10)
    assert found, conversations(cgp)
    item = found[0]
    assert item["container_name"] == "agent1" and item["model"] == "local-model"
    assert item["first_prompt"] == "hello" and item["system_prompt"] == "You are terse."
    assert item["id"].startswith("heuristic_") and item["last_turn_has_response"] is True

    detail = cgp.api("GET", f"/api/conversations/{item['id']}").json()
    first, second = detail["turns"]
    assert first["user_prompt"] == "hello" and first["api_calls_in_turn"] == 1
    assert [s["text"] for s in first["steps"]] == ["echo: hello"]
    assert second["user_prompt"] == "how many files are there?" and second["api_calls_in_turn"] == 2
    tool, answer = second["steps"]
    assert tool["type"] == "tool_call" and tool["tool_name"] == "bash"
    assert "a.txt" in tool["result_preview"] and answer["text"] == "There are two files."
    assert second["request_ids"] == ["chatcmpl-2", "chatcmpl-3"]

    assert cgp.api("GET", "/api/conversations/nope").status_code == 404
    assert cgp.api("GET", f"/api/conversations/{item['id']}/subagents").json() == {"items": []}
    assert cgp.api("GET", "/api/conversations", params={"limit": "0"}).status_code == 400


def test_other_container_is_another_conversation_and_the_switch_pauses_assembly(cgp, llm):
    chat(cgp, llm, [{"role": "user", "content": "first"}])
    assert wait_until(lambda: len(conversations(cgp)) == 1, 10)
    chat(cgp, llm, [{"role": "user", "content": "from elsewhere"}], container="agent2")
    assert wait_until(lambda: [c["container_name"] for c in conversations(cgp, container="agent2")] == ["agent2"], 10)

    assert cgp.api("PUT", "/api/settings", json={"conversations": {"enabled": False}}).status_code == 200
    assert cgp.api("POST", "/api/maintenance/rebuild-conversations").status_code == 503
    # the same conversation goes on (its history repeated, as chat clients send it)
    chat(cgp, llm, [{"role": "user", "content": "from elsewhere"}, {"role": "assistant", "content": "echo: from elsewhere"},
                    {"role": "user", "content": "while off"}], container="agent2")
    assert not wait_until(lambda: conversations(cgp, container="agent2")[0]["metadata"]["api_calls"] == 2, 2)

    assert cgp.api("PUT", "/api/settings", json={"conversations": {"enabled": True}}).status_code == 200
    assert wait_until(lambda: conversations(cgp, container="agent2")[0]["metadata"]["api_calls"] == 2, 10)
    resp = cgp.api("POST", "/api/maintenance/rebuild-conversations")
    assert resp.status_code == 200 and resp.json() == {"status": "rebuild started"}
    assert wait_until(lambda: sorted(c["container_name"] for c in conversations(cgp)) == ["agent1", "agent2"], 10)
