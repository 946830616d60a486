"""The middleware engine against real middleware processes and a real WebSocket server.

The engine runs in this (unpatched) process on gevent primitives; the stdio middlewares are the
programs in tests/middleware_examples, steered per exchange through `X-Plan-<name>` headers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gevent
import pytest
from websockets.sync.server import ServerConnection, serve

from greyproxy.middleware import MiddlewareConfig, MiddlewareEngine, RequestFacts, ResponseFacts, configs_from
from greyproxy.middleware import engine as engine_module
from greyproxy.middleware.engine import UNAVAILABLE_REQUEST_BODY, UNAVAILABLE_RESPONSE_BODY, Backoff
from greyproxy.middleware.protocol import HandshakeError, match_input, parse_hello, parse_hook
from tests.integration.tlsutil import make_origin_pki
from tests.ports import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "middleware_examples"
REPO = Path(__file__).resolve().parents[2]
PYTHON = os.path.basename(sys.executable)


def scripted(hello: dict | None = None, plans: dict | None = None, **kwargs: Any) -> MiddlewareConfig:
    argv = (sys.executable, str(EXAMPLES / "scripted.py"), json.dumps(hello or {}), json.dumps(plans or {}))
    return MiddlewareConfig(command=argv, **kwargs)


def plan(name: str, decision: dict, response: bool = False) -> tuple[str, str]:
    return (f"X-Plan-{name}" + ("-Resp" if response else ""), json.dumps(decision))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def facts(*extra: tuple[str, str], body: bytes | None = b'{"q": 1}', method: str = "POST",
          host: str = "api.example.com", uri: str = "/v1/items?x=1", container: str = "agent-1",
          tls: bool = True) -> RequestFacts:
    headers = [("Host", host), ("Content-Type", "application/json; charset=utf-8"), ("X-Req", "1"), *extra]
    return RequestFacts(id="", host=host, method=method, uri=uri, proto="HTTP/1.1", headers=headers,
                        container=container, tls=tls, body=body)


def response(body: bytes | None = b"hello", *headers: tuple[str, str]) -> ResponseFacts:
    return ResponseFacts(status_code=200, headers=[("Content-Type", "text/plain"), *headers], body=body,
                         duration_ms=12)


def seen(outcome: Any, index: int = -1) -> dict:
    """What an echoing middleware received, from the tags of its audit event."""
    return outcome.events[index]["tags"]["seen"]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(step)
    return predicate()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie nobody reaped yet is dead too


def spawns(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def engines() -> Iterator[Callable[..., MiddlewareEngine]]:
    made: list[MiddlewareEngine] = []

    def make(*configs: MiddlewareConfig) -> MiddlewareEngine:
        engine = MiddlewareEngine(list(configs))
        made.append(engine)
        engine.start()
        return engine

    yield make
    for engine in made:
        engine.stop()


@pytest.fixture
def spawn_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "spawns.log"
    monkeypatch.setenv("MW_SPAWN_LOG", str(path))
    return path


# --- configuration -------------------------------------------------------------------------

def test_config_parse_entries() -> None:
    cfg = MiddlewareConfig.parse({"command": "python3 -m 'my mw' --x=\"a b\""}, "middlewares[0]")
    assert cfg.command == ("python3", "-m", "my mw", "--x=a b") and cfg.url is None
    assert (cfg.timeout_ms, cfg.on_disconnect, cfg.label()) == (10_000, "deny", "python3")
    cfg = MiddlewareConfig.parse({"url": "https://user:pw@mw.example:8443/hook?key=s3cret",
                                  "auth_header": "X-Token: abc", "timeout_ms": 250,
                                  "on_disconnect": "allow"}, "middlewares[1]")
    assert cfg.url == "wss://user:pw@mw.example:8443/hook?key=s3cret"
    assert cfg.label() == "wss://mw.example:8443/hook"  # no credentials, no query
    assert (cfg.auth_header, cfg.timeout_ms, cfg.on_disconnect) == ("X-Token: abc", 250, "allow")
    assert MiddlewareConfig.parse({"command": ["/opt/mw bin/run", "-v"]}, "m").command == ("/opt/mw bin/run", "-v")
    assert MiddlewareConfig.from_cli_url("http://127.0.0.1:9000").url == "ws://127.0.0.1:9000/"
    assert MiddlewareConfig.from_cli_command("/usr/bin/mw --flag 'a b'").label() == "mw"


@pytest.mark.parametrize(("entry", "fragment"), [
    ("python3 mw.py", "must be a mapping"),
    ({"command": ["a"], "commnd": ["b"]}, "unknown key 'commnd'"),
    ({"command": ["a"], "url": "ws://h/"}, "exactly one of `command` or `url`"),
    ({"timeout_ms": 5}, "exactly one of `command` or `url`"),
    ({"command": 5}, "m[3].command: must be a list of strings"),
    ({"command": []}, "m[3].command: must not be empty"),
    ({"command": "mw 'unclosed"}, "m[3].command: cannot split"),
    ({"url": "ftp://h/"}, "m[3].url: unsupported scheme 'ftp'"),
    ({"url": "ws://:80/"}, "m[3].url: the URL has no host"),
    ({"url": "ws://h:99999/"}, "m[3].url: not a valid URL"),
    ({"url": "ws://h/", "auth_header": "no colon"}, "m[3].auth_header"),
    ({"url": "ws://h/", "auth_header": "X-A: b\r\nX-B: c"}, "m[3].auth_header"),
    ({"url": "ws://h/", "auth_header": "X-A: €"}, "m[3].auth_header: must be Latin-1"),
    ({"command": ["a"], "auth_header": "X-A: b"}, "m[3].auth_header: only applies to a `url`"),
    ({"command": ["a"], "timeout_ms": 0}, "m[3].timeout_ms: must be a positive integer"),
    ({"command": ["a"], "timeout_ms": True}, "m[3].timeout_ms"),
    ({"command": ["a"], "timeout_ms": "10s"}, "m[3].timeout_ms"),
    ({"command": ["a"], "on_disconnect": "block"}, "m[3].on_disconnect: must be 'deny' or 'allow'"),
])
def test_config_parse_errors_name_the_key(entry: object, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        MiddlewareConfig.parse(entry, "m[3]")
    assert str(err.value).startswith("m[3]") and fragment in str(err.value)


def test_configs_from_keeps_the_cascade_order() -> None:
    configs = configs_from(["ws://a.example/"], ["mw-one --x", "mw-two"], [{"url": "wss://b.example/"}])
    assert [c.label() for c in configs] == ["ws://a.example/", "mw-one", "mw-two", "wss://b.example/"]
    with pytest.raises(ValueError, match=r"^middlewares\[0\]: unknown key 'cmd'"):
        configs_from([], [], [{"cmd": "x"}])


# --- protocol units ------------------------------------------------------------------------

def matches(filters: dict, request: RequestFacts, headers: list | None = None) -> bool:
    hook = parse_hook({"type": "http-request", "filters": filters}, 0)
    assert hook is not None
    return hook.matches(match_input(request, request.headers if headers is None else headers))


def test_filters_each_field_or_within_and_across() -> None:
    req = facts()
    assert matches({}, req)
    assert matches({"host": "*.example.com"}, req) and not matches({"host": "*.example.com"}, facts(host="example.com"))
    assert matches({"host": "API.example.*"}, facts(host="api.example.com:8443"))
    assert matches({"host": ["other.org", "api.example.com"]}, req) and not matches({"host": "other.org"}, req)
    assert matches({"path": r"^/v1/items$"}, req)  # the query is not part of the path
    assert matches({"path": r"^/v1/"}, facts(uri="http://api.example.com/v1/x?y=2"))  # absolute URI (plain proxy)
    assert not matches({"path": "items$"}, facts(uri="/v1/items/7"))
    assert matches({"method": "post"}, req) and not matches({"method": ["GET", "PUT"]}, req)
    assert matches({"content_type": "application/json"}, req)  # parameters stripped
    assert matches({"content_type": "application/*"}, req) and not matches({"content_type": "text/*"}, req)
    assert matches({"content_type": "text/*"}, req, [("content-type", "TEXT/html")])
    assert matches({"container": "agent-*"}, req) and not matches({"container": "other"}, req)
    assert matches({"tls": True}, req) and not matches({"tls": False}, req)
    # No LLM endpoint registry yet: llm true never matches, llm false always does.
    assert matches({"llm": False}, req) and not matches({"llm": True}, req)
    assert matches({"host": "*.example.com", "method": ["GET", "POST"], "tls": True}, req)
    assert not matches({"host": "*.example.com", "method": "GET"}, req)  # AND across fields


@pytest.mark.parametrize(("filters", "fragment"), [
    ({"path": "("}, "filters.path"), ({"tls": "yes"}, "filters.tls"), ({"method": 3}, "filters.method"),
    ({"hosts": "x"}, "filters.hosts: unknown filter"), ({"host": []}, "filters.host"),
])
def test_bad_filters_refuse_the_hook(filters: dict, fragment: str) -> None:
    with pytest.raises(HandshakeError, match=fragment):
        parse_hook({"type": "http-request", "filters": filters}, 0)


def test_hello_version_negotiation() -> None:
    assert parse_hello({"type": "hello", "min_version": 1, "max_version": 3}).version == 1
    assert parse_hello({"type": "hello"}).hooks == ()
    with pytest.raises(HandshakeError, match="no common protocol version"):
        parse_hello({"type": "hello", "min_version": 2, "max_version": 2})


def test_backoff_doubles_to_two_seconds_with_jitter() -> None:
    middle = Backoff(rng=lambda: 0.5)
    assert [round(middle.next(), 3) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    middle.reset()
    assert round(middle.next(), 3) == 0.1
    assert round(Backoff(rng=lambda: 0.0).next(), 3) == 0.08 and round(Backoff(rng=lambda: 1.0).next(), 3) == 0.12


# --- handshake, hooks, filters -------------------------------------------------------------

def test_handshake_status_and_hooks(engines, spawn_log: Path) -> None:
    hooks = [{"type": "http-request", "filters": {"host": "*.example.com", "method": ["GET", "post"]}},
             {"type": "http-response", "filters": {"content_type": "application/json", "tls": True}},
             {"type": "websocket-frame"}]  # unknown hook types are ignored
    engine = engines(scripted({"name": "shaper", "hooks": hooks, "max_body_bytes": 4096, "max_version": 2},
                              timeout_ms=1500, on_disconnect="allow"))
    [status] = engine.status()
    assert status == {"name": "shaper", "transport": "stdio", "target": PYTHON, "connected": True, "version": 1,
                      "hooks": [{"type": h["type"], "filters": h["filters"]} for h in hooks[:2]],
                      "max_body_bytes": 4096, "on_disconnect": "allow", "timeout_ms": 1500, "last_error": None,
                      "requests": 0, "denied": 0, "rewritten": 0, "failures": 0}
    assert spawns(spawn_log)[0].endswith(" stdio")  # GREYPROXY_TRANSPORT=stdio in its environment
    assert engine.active and engine.max_body_bytes == 4096
    assert engine.wants_request(facts())
    assert engine.wants_request(facts(method="GET", host="a.b.example.com"))
    assert not engine.wants_request(facts(method="PUT"))
    assert not engine.wants_request(facts(host="example.com"))
    assert engine.wants_response(facts(), [("Content-Type", "application/json; charset=utf-8")])
    assert not engine.wants_response(facts(), [("Content-Type", "text/html")])
    assert not engine.wants_response(facts(tls=False), [("Content-Type", "application/json")])
    assert not MiddlewareEngine([]).active


def test_only_matching_middlewares_are_asked(engines) -> None:
    get_only = scripted({"name": "gets", "hooks": [{"type": "http-request", "filters": {"method": "GET"}}]},
                        {"http-request": {"action": "deny"}})
    everything = scripted({"name": "all"}, {"http-request": {"echo": True}})
    engine = engines(get_only, everything)
    outcome = engine.on_request(facts(method="POST"))
    assert outcome.action == "allow" and [e["middleware"] for e in outcome.events] == ["all"]
    assert [s["requests"] for s in engine.status()] == [0, 1]
    assert engine.on_request(facts(method="GET")).action == "deny"


# --- request decisions ---------------------------------------------------------------------

def test_request_message_and_allow(engines) -> None:
    engine = engines(scripted(plans={"http-request": {"echo": True}}))
    request = facts(("X-Multi", "a"), ("x-multi", "b"), ("X-Multi", "c"), body=b"\x00\x01hi")
    outcome = engine.on_request(request)
    assert outcome.action == "allow" and outcome.headers is None and not outcome.body_replaced
    assert len(request.id) == 16  # generated, and kept for the response hook
    message = seen(outcome)
    assert message == {"type": "http-request", "id": request.id, "host": "api.example.com", "method": "POST",
                       "uri": "/v1/items?x=1", "proto": "HTTP/1.1", "container": "agent-1", "tls": True,
                       "body": b64(b"\x00\x01hi"),
                       "headers": {"Host": ["api.example.com"], "Content-Type": ["application/json; charset=utf-8"],
                                   "X-Req": ["1"], "X-Multi": ["a", "c"], "x-multi": ["b"]}}
    assert outcome.events[0]["action"] == "tagged-allow" and outcome.events[0]["hook"] == "http-request"
    assert engine.on_request(facts(plan("scripted", {}))).events == []  # an allow without tags is not an audit event


def test_request_deny_and_rewrite(engines) -> None:
    engine = engines(scripted())
    denied = engine.on_request(facts(plan("scripted", {"action": "deny", "status_code": 451, "body": b64(b"no"),
                                                       "tags": {"rule": "r1"}, "reason": "secret found"})))
    assert (denied.action, denied.status_code, denied.body, denied.middleware) == ("deny", 451, b"no", PYTHON)
    assert denied.events == [{"middleware": "scripted", "hook": "http-request", "action": "deny",
                              "tags": {"rule": "r1"}, "status_code": 451, "reason": "secret found"}]
    bare = engine.on_request(facts(plan("scripted", {"action": "deny"})))
    assert (bare.action, bare.status_code, bare.body) == ("deny", None, None)  # the caller's default applies

    rewrite = {"action": "rewrite", "headers": {"x-req": "2", "X-New": ["a", "b"], "X-Gone": []},
               "body": b64(b"new body")}
    outcome = engine.on_request(facts(("X-Gone", "z"), plan("scripted", rewrite)))
    assert (outcome.action, outcome.body, outcome.body_replaced) == ("rewrite", b"new body", True)
    assert outcome.headers is not None
    names = [n for n, _ in outcome.headers]
    assert ("x-req", "2") in outcome.headers and "X-Req" not in names and "X-Gone" not in names
    assert outcome.headers[names.index("x-req")] == ("x-req", "2")
    assert names.index("x-req") == 2  # replaced in place
    assert outcome.headers[-2:] == [("X-New", "a"), ("X-New", "b")]
    assert engine.status()[0]["denied"] == 2 and engine.status()[0]["rewritten"] == 1


def test_forbidden_headers_are_stripped_and_logged_without_values(engines, caplog) -> None:
    caplog.set_level(logging.INFO, logger="greyproxy.middleware")
    engine = engines(scripted())
    rewrite = {"action": "rewrite", "headers": {"Authorization": "Bearer st0len", "HOST": "evil.example",
                                                "Set-Cookie": "a=b", "transfer-encoding": "chunked",
                                                "X-Ok": "yes"}}
    outcome = engine.on_request(facts(plan("scripted", rewrite)))
    assert outcome.action == "rewrite" and outcome.headers is not None
    assert ("X-Ok", "yes") in outcome.headers and ("Host", "api.example.com") in outcome.headers
    lowered = {n.lower() for n, _ in outcome.headers}
    assert not lowered & {"authorization", "set-cookie", "transfer-encoding"} and len(outcome.headers) == 5
    assert "Authorization" in caplog.text and "HOST" in caplog.text
    assert "st0len" not in caplog.text and "evil.example" not in caplog.text


def test_unknown_action_allows_and_bad_decisions_apply_on_disconnect(engines, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="greyproxy.middleware")
    engine = engines(scripted())
    assert engine.on_request(facts(plan("scripted", {"action": "frobnicate"}))).action == "allow"
    assert "unknown action 'frobnicate'" in caplog.text
    assert engine.on_response(facts(plan("scripted", {"action": "x"}, response=True)), response()).action \
        == "passthrough"
    bad = engine.on_request(facts(plan("scripted", {"action": "rewrite", "body": "not base64!"})))
    assert (bad.action, bad.status_code, bad.body) == ("deny", 403, UNAVAILABLE_REQUEST_BODY)
    assert bad.events[-1]["action"] == "error" and "base64" in bad.events[-1]["reason"]
    bad = engine.on_request(facts(plan("scripted", {"action": "deny", "status_code": 99})))
    assert bad.action == "deny" and bad.status_code == 403 and "status_code" in bad.events[-1]["reason"]
    assert engine.status()[0]["failures"] == 2


def test_malformed_lines_are_ignored_and_stderr_is_logged(engines, caplog) -> None:
    caplog.set_level(logging.INFO, logger="greyproxy.middleware")
    engine = engines(scripted())
    outcome = engine.on_request(facts(plan("scripted", {"junk": True, "stderr": "note from the middleware"})))
    assert outcome.action == "allow"
    assert "not JSON: 'this is not json {'" in caplog.text and "nobody-waits-for-this" in caplog.text
    assert wait_for(lambda: "[middleware scripted] note from the middleware" in caplog.text)
    assert engine.status()[0]["connected"] and engine.on_request(facts()).action == "allow"


# --- response decisions --------------------------------------------------------------------

def test_response_message_passthrough_block_rewrite(engines) -> None:
    engine = engines(scripted(plans={"http-response": {"echo": True}}))
    request = facts()
    assert engine.on_request(request).action == "allow"
    outcome = engine.on_response(request, response(b"origin body", ("X-Up", "1")))
    assert outcome.action == "passthrough" and outcome.events[0]["action"] == "tagged-passthrough"
    assert seen(outcome) == {"type": "http-response", "id": request.id, "host": "api.example.com",
                             "method": "POST", "uri": "/v1/items?x=1", "status_code": 200,
                             "request_headers": {"Host": ["api.example.com"],
                                                 "Content-Type": ["application/json; charset=utf-8"],
                                                 "X-Req": ["1"]},
                             "request_body": b64(b'{"q": 1}'),
                             "response_headers": {"Content-Type": ["text/plain"], "X-Up": ["1"]},
                             "response_body": b64(b"origin body"), "container": "agent-1", "duration_ms": 12}

    block = {"action": "block", "status_code": 451, "body": b64(b"blocked")}
    outcome = engine.on_response(facts(plan("scripted", block, response=True)), response())
    assert (outcome.action, outcome.status_code, outcome.body, outcome.middleware) == ("block", 451, b"blocked",
                                                                                      PYTHON)
    outcome = engine.on_response(facts(plan("scripted", {"action": "block"}, response=True)), response())
    assert (outcome.action, outcome.status_code) == ("block", None)  # the caller's default 502 applies

    rewrite = {"action": "rewrite", "status_code": 201, "headers": {"X-Added": "1", "set-cookie": "s=1"},
               "body": b64(b"rewritten"), "tags": {"redacted": 2}}
    outcome = engine.on_response(facts(plan("scripted", rewrite, response=True)), response())
    assert (outcome.action, outcome.status_code, outcome.body, outcome.body_replaced) == ("rewrite", 201,
                                                                                         b"rewritten", True)
    assert outcome.headers == [("Content-Type", "text/plain"), ("X-Added", "1")]
    assert outcome.events[0] | {"tags": None} == {"middleware": "scripted", "hook": "http-response",
                                                  "action": "rewrite", "tags": None, "status_code": 201,
                                                  "reason": None}
    status_only = engine.on_response(facts(plan("scripted", {"action": "rewrite"}, response=True)), response())
    assert (status_only.action, status_only.status_code, status_only.headers, status_only.body_replaced) == (
        "rewrite", None, None, False)


# --- cascade -------------------------------------------------------------------------------

def test_cascade_order_rewrites_flow_and_deny_short_circuits(engines) -> None:
    first = scripted({"name": "first"})
    second = scripted({"name": "second"}, {"http-request": {"echo": True}, "http-response": {"echo": True}})
    engine = engines(first, second)
    rewrite = {"action": "rewrite", "headers": {"X-From-First": "1"}, "body": b64(b"from first")}
    outcome = engine.on_request(facts(plan("first", rewrite)))
    message = seen(outcome)
    assert message["headers"]["X-From-First"] == ["1"] and message["body"] == b64(b"from first")
    assert [(e["middleware"], e["action"]) for e in outcome.events] == [("first", "rewrite"),
                                                                        ("second", "tagged-allow")]
    assert outcome.action == "rewrite" and outcome.body == b"from first"

    outcome = engine.on_request(facts(plan("first", {"action": "deny"})))
    assert outcome.action == "deny" and [e["middleware"] for e in outcome.events] == ["first"]
    assert [s["requests"] for s in engine.status()] == [2, 1]  # the second never saw the denied one

    rewrite = {"action": "rewrite", "status_code": 203, "headers": {"Content-Type": "application/json"},
               "body": b64(b"{}")}
    outcome = engine.on_response(facts(plan("first", rewrite, response=True)), response())
    message = seen(outcome)
    assert (message["status_code"], message["response_body"]) == (203, b64(b"{}"))
    assert message["response_headers"]["Content-Type"] == ["application/json"]
    outcome = engine.on_response(facts(plan("first", {"action": "block"}, response=True)), response())
    assert outcome.action == "block" and len(outcome.events) == 1


def test_max_body_bytes_nulls_larger_bodies(engines) -> None:
    limited = scripted({"name": "limited", "max_body_bytes": 10})
    echo = scripted({"name": "echo"}, {"http-request": {"echo": True}, "http-response": {"echo": True}})
    engine = engines(limited, echo)
    assert engine.max_body_bytes == 10
    assert seen(engine.on_request(facts(body=b"0123456789")))["body"] == b64(b"0123456789")
    assert seen(engine.on_request(facts(body=b"0123456789A")))["body"] is None
    message = seen(engine.on_response(facts(body=b"0123456789A"), response(b"0123456789AB")))
    assert message["request_body"] is None and message["response_body"] is None


# --- in flight, timeouts, disconnects ------------------------------------------------------

def test_requests_in_flight_are_answered_out_of_order(engines) -> None:
    engine = engines(scripted())
    finished: list[str] = []

    def ask(uri: str, delay_ms: int) -> Any:
        outcome = engine.on_request(facts(plan("scripted", {"delay_ms": delay_ms, "echo": True}), uri=uri))
        finished.append(uri)
        return outcome

    jobs = [gevent.spawn(ask, f"/slow/{d}", d) for d in (900, 600, 300, 0)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert finished == ["/slow/0", "/slow/300", "/slow/600", "/slow/900"]
    assert [seen(job.value)["uri"] for job in jobs] == ["/slow/900", "/slow/600", "/slow/300", "/slow/0"]


def test_timeout_applies_on_disconnect(engines, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="greyproxy.middleware")
    silent = {"http-request": {"silent": True}, "http-response": {"silent": True}}
    deny = engines(scripted(plans=silent, timeout_ms=300))
    allow = engines(scripted(plans=silent, timeout_ms=300, on_disconnect="allow"))
    began = time.monotonic()
    outcome = deny.on_request(facts())
    assert 0.25 < time.monotonic() - began < 2.0
    assert (outcome.action, outcome.status_code, outcome.body) == ("deny", 403, UNAVAILABLE_REQUEST_BODY)
    assert outcome.events == [{"middleware": "scripted", "hook": "http-request", "action": "error", "tags": None,
                               "status_code": None, "reason": "timeout after 300 ms"}]
    blocked = deny.on_response(facts(), response())
    assert (blocked.action, blocked.status_code, blocked.body) == ("block", 502, UNAVAILABLE_RESPONSE_BODY)
    passed = allow.on_request(facts())
    assert passed.action == "allow" and passed.events[0]["action"] == "error"
    assert allow.on_response(facts(), response()).action == "passthrough"
    # A late answer is dropped (logged), and the connection keeps working.
    late = deny.on_request(facts(plan("scripted", {"delay_ms": 500, "action": "deny"})))
    assert late.status_code == 403 and late.body == UNAVAILABLE_REQUEST_BODY
    assert wait_for(lambda: "an id nobody waits for" in caplog.text)
    assert deny.on_request(facts(plan("scripted", {"action": "allow"}))).action == "allow"
    assert deny.status()[0]["connected"] and deny.status()[0]["failures"] == 3


def test_exit_and_kill_reconnect_with_backoff(engines) -> None:
    engine = engines(scripted(plans={"http-request": {"echo": True}}))
    first_pid = engine.on_request(facts()).events[0]["tags"]["pid"]
    began = time.monotonic()
    outcome = engine.on_request(facts(plan("scripted", {"exit": True})))  # exits with the request in flight
    assert time.monotonic() - began < 3.0  # not the 10 s timeout: the disconnect fails it at once
    assert outcome.action == "deny" and outcome.events[-1]["reason"].startswith("disconnected")
    assert wait_for(lambda: engine.status()[0]["connected"])
    second_pid = engine.on_request(facts()).events[0]["tags"]["pid"]
    assert second_pid != first_pid and not alive(first_pid)

    os.kill(second_pid, signal.SIGKILL)
    assert wait_for(lambda: not engine.status()[0]["connected"], step=0.005)
    began = time.monotonic()
    outcome = engine.on_request(facts())
    assert time.monotonic() - began < 0.05  # while disconnected the policy applies without waiting
    assert outcome.action == "deny" and "not connected" in outcome.events[-1]["reason"]
    assert "disconnected" in (engine.status()[0]["last_error"] or "")
    assert wait_for(lambda: engine.status()[0]["connected"])
    assert engine.on_request(facts()).events[0]["tags"]["pid"] not in (first_pid, second_pid)
    assert engine.status()[0]["last_error"] is None


def test_a_failing_program_is_retried_with_backoff_and_start_never_raises(engines, spawn_log: Path) -> None:
    crash = MiddlewareConfig(command=(sys.executable, "-c",
                                      "import os; open(os.environ['MW_SPAWN_LOG'], 'a').write('x\\n')"))
    missing = MiddlewareConfig(command=("/nonexistent/middleware",), on_disconnect="allow")
    began = time.monotonic()
    engine = engines(crash, missing)
    assert time.monotonic() - began < 2.0
    crash_status, missing_status = engine.status()
    assert not crash_status["connected"] and "ended before the hello" in crash_status["last_error"]
    assert "cannot start '/nonexistent/middleware'" in missing_status["last_error"]
    gevent.sleep(1.5)
    # 0.1 + 0.2 + 0.4 + 0.8 s of backoff (±20 %) between attempts: 4 or 5 starts, not dozens.
    assert 3 <= len(spawns(spawn_log)) <= 6
    # Hooks unknown: deny policy fails closed, allow policy lets everything through untouched.
    assert engine.wants_request(facts()) and not engine.wants_response(facts(), [])
    outcome = engine.on_request(facts())
    assert outcome.action == "deny" and outcome.status_code == 403 and outcome.events[0]["action"] == "error"


def test_no_hello_in_time(engines, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "HELLO_TIMEOUT", 0.5)
    began = time.monotonic()
    engine = engines(MiddlewareConfig(command=(sys.executable, "-c", "import time; time.sleep(30)")))
    assert time.monotonic() - began < 3.0
    assert engine.status()[0]["last_error"] == "no hello within 0.5 s" and not engine.status()[0]["connected"]


@pytest.mark.parametrize(("hello", "error"), [
    ({"min_version": 2, "max_version": 3}, "refused: no common protocol version"),
    ({"hooks": "all"}, "refused: hello.hooks: must be a list"),
    ({"hooks": [{"type": "http-request", "filters": {"path": "("}}]}, "refused: hooks[0].filters.path"),
    ({"type": "greeting"}, "refused: expected a hello message, got 'greeting'"),
])
def test_bad_hello_is_refused_until_reload(engines, spawn_log: Path, hello: dict, error: str) -> None:
    config = scripted(hello)
    engine = engines(config)
    [status] = engine.status()
    assert not status["connected"] and status["last_error"].startswith(error)
    gevent.sleep(0.4)
    assert len(spawns(spawn_log)) == 1  # not retried
    assert engine.on_request(facts()).action == "deny"
    engine.reload([config])
    assert len(spawns(spawn_log)) == 2  # a reload tries again


# --- WebSocket -----------------------------------------------------------------------------

class WSMiddleware:
    """A WebSocket middleware server: denies DELETE, allows the rest tagged with the URI."""

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port("127.0.0.1")
        self.upgrades: list[dict[str, str]] = []
        self.server = serve(self.handle, "127.0.0.1", self.port, compression=None, ssl=tls)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.upgrades.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        for text in ws:
            msg = json.loads(text)
            if msg["type"] == "hello":
                hooks = [{"type": "http-request", "filters": {"method": ["GET", "DELETE"]}}]
                ws.send(json.dumps({"type": "hello", "name": "ws-mw", "hooks": hooks}))
            elif msg["method"] == "DELETE":
                ws.send(json.dumps({"id": msg["id"], "action": "deny", "status_code": 405}))
            else:
                ws.send(json.dumps({"id": msg["id"], "action": "allow", "tags": {"uri": msg["uri"]}}))
            if msg.get("uri") == "/close":
                return  # ends the connection: the engine must reconnect

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def ws_middleware() -> Iterator[WSMiddleware]:
    server = WSMiddleware()
    yield server
    server.close()


def test_websocket_middleware(ws_middleware: WSMiddleware, engines) -> None:
    # ws_middleware first: its server shuts down after the engine (which answers its close) stopped.
    config = MiddlewareConfig.parse({"url": f"http://127.0.0.1:{ws_middleware.port}/mw?k=v",
                                     "auth_header": "X-Middleware-Token: s3cret"}, "middlewares[0]")
    engine = engines(config)
    [status] = engine.status()
    assert (status["name"], status["transport"], status["connected"]) == ("ws-mw", "websocket", True)
    assert status["target"] == f"ws://127.0.0.1:{ws_middleware.port}/mw"
    assert ws_middleware.upgrades[0]["x-middleware-token"] == "s3cret"
    assert not engine.wants_request(facts(method="POST"))
    outcome = engine.on_request(facts(method="GET", uri="/a"))
    assert outcome.action == "allow" and outcome.events[0]["tags"] == {"uri": "/a"}
    outcome = engine.on_request(facts(method="DELETE"))
    assert (outcome.action, outcome.status_code) == ("deny", 405)

    assert engine.on_request(facts(method="GET", uri="/close")).action == "allow"
    assert wait_for(lambda: len(ws_middleware.upgrades) == 2 and engine.status()[0]["connected"])
    assert ws_middleware.upgrades[1]["x-middleware-token"] == "s3cret"
    assert engine.on_request(facts(method="GET", uri="/b")).events[0]["tags"] == {"uri": "/b"}


def test_websocket_middleware_that_is_down(engines) -> None:
    port = free_port("127.0.0.1")
    engine = engines(MiddlewareConfig(url=f"ws://127.0.0.1:{port}/", on_disconnect="allow"))
    [status] = engine.status()
    assert not status["connected"] and "cannot connect" in status["last_error"]
    assert not engine.wants_request(facts()) and engine.on_request(facts()).action == "allow"
    server = WSMiddleware(port)  # now bring it up on that port: the backoff finds it
    try:
        assert wait_for(lambda: engine.status()[0]["connected"], timeout=5)
        assert engine.on_request(facts(method="DELETE")).status_code == 405
    finally:
        engine.stop()
        server.close()


def test_wss_verifies_with_the_default_context(engines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca_path, leaf_path = make_origin_pki(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(leaf_path)
    server = WSMiddleware(tls=tls)
    try:
        engine = engines(MiddlewareConfig.from_cli_url(f"https://127.0.0.1:{server.port}/"))
        assert "CERTIFICATE_VERIFY_FAILED" in (engine.status()[0]["last_error"] or "")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))  # the default context trusts it from now on
        assert wait_for(lambda: engine.status()[0]["connected"], timeout=5)
        assert engine.on_request(facts(method="DELETE")).status_code == 405
        engine.stop()
    finally:
        server.close()


# --- reload and stop -----------------------------------------------------------------------

def test_reload_keeps_unchanged_and_replaces_changed(engines) -> None:
    echo = {"http-request": {"echo": True}}
    kept, changed, dropped = scripted({"name": "kept"}, echo), scripted({"name": "changed"}, echo), \
        scripted({"name": "dropped"}, echo)
    engine = engines(kept, changed, dropped)

    def pids() -> dict[str, int]:
        return {e["middleware"]: e["tags"]["pid"] for e in engine.on_request(facts()).events}

    before = pids()
    engine.reload([kept, replace(changed, timeout_ms=5000), scripted({"name": "added"}, echo)])
    after = pids()
    assert [s["name"] for s in engine.status()] == ["kept", "changed", "added"]
    assert after["kept"] == before["kept"] and engine.status()[0]["requests"] == 2
    assert after["changed"] != before["changed"] and engine.status()[1]["timeout_ms"] == 5000
    assert not alive(before["changed"]) and not alive(before["dropped"])


def test_stop_kills_the_process_group(engines) -> None:
    engine = engines(MiddlewareConfig(command=(sys.executable, str(EXAMPLES / "spawner.py"))))
    tags = engine.on_request(facts()).events[0]["tags"]
    assert alive(tags["pid"]) and alive(tags["child"])
    engine.stop()
    assert wait_for(lambda: not alive(tags["pid"]) and not alive(tags["child"]), timeout=3)
    assert engine.status()[0]["connected"] is False
    engine.stop()  # idempotent
    outcome = engine.on_request(facts())
    assert outcome.action == "deny" and outcome.events[0]["action"] == "error"


# --- under monkey-patching, as in `greyproxy serve` ----------------------------------------

PATCHED_DRIVER = """
from gevent import monkey; monkey.patch_all()
import json, sys
from greyproxy.middleware import MiddlewareConfig, MiddlewareEngine, RequestFacts
stdio = MiddlewareConfig(command=(sys.executable, sys.argv[1], "{}", '{"http-request": {"echo": true}}'))
engine = MiddlewareEngine([stdio, MiddlewareConfig.from_cli_url(sys.argv[2])])
engine.start()
request = RequestFacts(id="", host="h.example", method="DELETE", uri="/", proto="HTTP/1.1", headers=[],
                       container="c", tls=False)
outcome = engine.on_request(request)
engine.stop()
print(json.dumps({"connected": [s["connected"] for s in engine.status()], "action": outcome.action,
                  "status_code": outcome.status_code, "events": [e["middleware"] for e in outcome.events]}))
"""


def test_engine_under_monkey_patching(ws_middleware: WSMiddleware) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PATCHED_DRIVER, str(EXAMPLES / "scripted.py"),
                           f"ws://127.0.0.1:{ws_middleware.port}/"], capture_output=True, text=True,
                          timeout=30, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"connected": [False, False], "action": "deny",
                                                        "status_code": 405, "events": ["scripted", "ws-mw"]}


# --- the examples for users ----------------------------------------------------------------

def test_user_examples(engines) -> None:
    examples = REPO / "examples" / "middlewares"
    engine = engines(MiddlewareConfig(command=(sys.executable, str(examples / "passthrough.py"))),
                     MiddlewareConfig(command=(sys.executable, str(examples / "block_secrets.py"))))
    assert [s["name"] for s in engine.status()] == ["passthrough", "block-secrets"]
    assert engine.on_request(facts(("Authorization", "Bearer AKIAABCDEFGHIJKLMNOP"))).action == "allow"
    outcome = engine.on_request(facts(body=b'{"key": "AKIAABCDEFGHIJKLMNOP"}'))
    assert (outcome.action, outcome.status_code) == ("deny", 403) and b"aws-access-key" in (outcome.body or b"")
    assert outcome.events[-1]["tags"] == {"secret": "aws-access-key"}
    assert engine.on_response(facts(), response()).action == "passthrough"
