"""A local chat-completions server for the conversation tests: it answers like an OpenAI
compatible endpoint, calling a `bash` tool when asked about files."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from tests.ports import free_port

HOST = "127.0.0.2"


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]
        if last["role"] == "user" and "files" in str(last["content"]):
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "bash", "arguments": json.dumps({"command": "ls"})}}]}
        elif last["role"] == "tool":
            message = {"role": "assistant", "content": "There are two files."}
        else:
            message = {"role": "assistant", "content": f"echo: {last['content']}"}
        self.server.calls += 1  # type: ignore[attr-defined]
        payload = json.dumps({"id": f"chatcmpl-{self.server.calls}", "object": "chat.completion",  # type: ignore[attr-defined]
                              "model": body["model"], "choices": [{"index": 0, "message": message,
                                                                   "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass



@contextmanager
def chat_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer((HOST, free_port(HOST)), ChatHandler)
    server.daemon_threads = True
    server.calls = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def chat(gp, llm, messages: list[dict], container: str = "agent1") -> dict:
    session = requests.Session()
    session.trust_env = False
    url = f"http://{HOST}:{llm.server_address[1]}/v1/chat/completions"
    resp = session.post(url, json={"model": "local-model", "messages": messages}, timeout=20,
                        proxies={"http": f"http://{container}:x@127.0.0.1:{gp.ports['http']}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]


def agent_session(gp, llm) -> None:
    """Two prompts; the second makes the model call a tool, whose result it then reads."""
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}]
    history.append(chat(gp, llm, history))
    history.append({"role": "user", "content": "how many files are there?"})
    call = chat(gp, llm, history)
    history.append(call)
    history.append({"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "a.txt\nb.txt"})
    chat(gp, llm, history)
