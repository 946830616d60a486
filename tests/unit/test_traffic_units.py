"""Pure parts of the traffic tools and conversations: provider detection from a chat body, the
diff's bounds, the HAR import's checks, and which running recording takes an exchange."""

from __future__ import annotations

import json

import pytest

from greyproxy.capture.diff import MAX_JSON_CHANGES, body_diff, header_diff
from greyproxy.capture.har_import import MAX_ROWS, HarInvalid, parse_har
from greyproxy.capture.recordings import ActiveRecordings, Running
from greyproxy.conversations.adapters import detect_client
from greyproxy.conversations.endpoints import auto_rule, detect_decoder


@pytest.mark.parametrize(("path", "body", "decoder"), [
    ("/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "anthropic"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "openai-chat"),
    ("/proxy/x", {"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "hi"}]}, "anthropic"),
    ("/proxy/x", {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
     "openai-chat"),
    ("/v1/messages", {"model": "m", "messages": [{"role": "system", "content": "s"},
                                                 {"role": "user", "content": "hi"}]}, "openai-chat"),
    ("/x", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}]}, "anthropic"),
    ("/x", {"model": "m", "metadata": {"user_id": "u"}, "messages": [{"role": "user", "content": "hi"}]},
     "anthropic"),
    ("/x", {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": []}]}, "openai-chat"),
    ("/x", {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "openai-chat"),
])
def test_detect_decoder(path, body, decoder):
    assert detect_decoder(path, body) == decoder
    assert auto_rule("gw.local:8080", path, "POST", json.dumps(body)).decoder == decoder


def test_header_diff_is_case_insensitive():
    a = json.dumps({"Accept": ["*/*"], "X-A": ["1"], "x-same": ["s"]})
    b = json.dumps({"accept": ["*/*"], "X-B": ["2"], "X-Same": ["t"]})
    d = header_diff(a, b)
    assert d == {"equal": False, "added": {"X-B": ["2"]}, "removed": {"X-A": ["1"]},
                 "changed": {"x-same": {"a": ["s"], "b": ["t"]}}}
    assert header_diff(None, "not json")["equal"] is True


def test_body_diff_bounds_json_changes():
    a = json.dumps({str(i): i for i in range(2000)}).encode()
    b = json.dumps({str(i): i + 1 for i in range(2000)}).encode()
    d = body_diff(a, b)
    assert len(d["json_changes"]) == MAX_JSON_CHANGES and d["truncated"] is True
    assert body_diff(None, b"x")["equal"] is False and body_diff(None, None)["equal"] is True
    deep = b"[" * 100_000 + b"]" * 100_000
    assert "json_changes" not in body_diff(deep, deep + b" ")  # not JSON Python can load: text diff only


def _har(*entries):
    return {"log": {"entries": list(entries)}}


def _entry(**over):
    e = {"startedDateTime": "2026-01-02T03:04:05+01:00", "request": {"method": "GET", "url": "http://A.example:8080/p"},
         "response": {"status": 204}}
    e.update(over)
    return e


def test_har_import_reads_and_checks():
    (entry,) = parse_har(_har(_entry()))
    assert (entry.host, entry.port, entry.status_code) == ("a.example", 8080, 204)
    assert entry.timestamp.isoformat() == "2026-01-02T02:04:05"  # naive UTC
    body = _entry(request={"method": "POST", "url": "https://x.example/",
                           "postData": {"mimeType": "image/png", "text": "AAAA", "encoding": "base64"}})
    (entry,) = parse_har(_har(body))
    assert entry.request_body == (None, 3, False)  # not text-like: size only, like a capture
    for bad, where in ((_entry(request={"method": "GET", "url": "http://xn--a/"}), "request.url"),
                       (_entry(request={"method": "GET", "url": "http://a:99999/"}), "request.url"),
                       (_entry(time=True, response={"status": True}), "status"),
                       (_entry(request={"method": "GET", "url": "http://a/", "headers": [{"name": "", "value": ""}]}),
                        "name")):
        with pytest.raises(HarInvalid, match=where.replace(".", r"\.")):
            parse_har(_har(bad))
    with pytest.raises(HarInvalid, match=str(MAX_ROWS)):
        parse_har(_har(*[_entry(_webSocketMessages=[{"type": "send", "data": "x"}]) for _ in range(MAX_ROWS // 2 + 1)]))


def test_running_recordings_prefer_the_specific_then_the_newest():
    active = ActiveRecordings()
    assert active.recording_for("a") is None
    active.set([Running(1, None), Running(2, "agent-*"), Running(3, None), Running(4, "agent-1")])
    assert active.recording_for("agent-1") == 4
    assert active.recording_for("agent-2") == 2
    assert active.recording_for("other") == 3
    active.set([])
    assert active.recording_for("agent-1") is None


@pytest.mark.parametrize(("headers", "hint", "system", "tools", "provider", "client"), [
    ({"User-Agent": ["claude-cli/1.0.98 (external, cli)"]}, None, [], [], "anthropic", "claude-code"),
    ({"user-agent": "GeminiCLI/0.1.5 (linux; x64)"}, None, [], [], "google", "gemini-cli"),
    ({"Originator": ["codex_exec"]}, None, [], [], "openai", "codex"),
    ({"X-Title": ["opencode"]}, None, [], [], "openai", "opencode"),
    ({"HTTP-Referer": ["https://aider.chat"]}, None, [], [], "openai", "aider"),
    ({"User-Agent": ["python-requests/2"]}, "codex", [], [], "openai", "codex"),
    (None, None, ["You are Claude Code, Anthropic's official CLI"], [], "anthropic", "claude-code"),
    (None, None, [], ["Task", "Bash", "Read", "Other"], "openai", "claude-code"),
    (None, None, [], ["apply_patch", "shell"], "openai", "codex"),
    (None, None, [], [], "anthropic", "claude-code"),
    (None, None, [], [], "openai", "opencode"),
    (None, None, [], [], "google", "generic"),
])
def test_client_adapters(headers, hint, system, tools, provider, client):
    column = json.dumps(headers) if headers is not None else None
    assert detect_client([None, column, "not json"], hint, system, tools, provider) == client
