"""The middleware helper (examples/middlewares/greyproxy_middleware.py) and the header-tagger
example, run by a real `greyproxy serve` in a cascade with the secret scanner, against a real
origin: what the origin received, what the client got, and the audit trail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import requests

from tests.integration.netutil import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "middlewares"


def serve_with(gp_factory, *commands: list[str]):
    yaml = "middlewares:\n" + "".join(f"  - command: {json.dumps(c)}\n" for c in commands)
    gp = gp_factory(config_yaml=yaml)
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": "127.0.0.2"})
    assert resp.status_code == 201, resp.text
    ready = wait_until(lambda: (lambda items: items if len(items) == len(commands) and all(
        i["connected"] for i in items) else None)(gp.api("GET", "/api/middlewares").json()["items"]), 10)
    assert ready, gp.api("GET", "/api/middlewares").text
    return gp


def through(gp, user: str = "agent1") -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": f"http://{user}:x@127.0.0.1:{gp.ports['http']}"}
    return session


def mw_events(gp) -> list[dict]:
    return gp.api("GET", "/api/middlewares/events").json()["items"]


def test_header_tagger_beside_the_secret_scanner(gp_factory, origin):
    gp = serve_with(gp_factory, [sys.executable, str(EXAMPLES / "block_secrets.py")],
                    [sys.executable, str(EXAMPLES / "header_tagger.py")])
    names = [m["name"] for m in gp.api("GET", "/api/middlewares").json()["items"]]
    assert names == ["block-secrets", "header-tagger"]
    base = f"http://{origin.host}:{origin.port}"

    resp = through(gp, "agent7").post(f"{base}/upload", data=b'{"x": 1}', timeout=10)
    assert resp.status_code == 200 and resp.content == b'{"x": 1}'  # the body is untouched
    got = origin.requests[-1]
    assert got["headers"]["X-Agent-Container"] == "agent7" and got["body"] == b'{"x": 1}'

    # an agent cannot pick its own tag: the tagger replaces whatever the request carried
    through(gp, "agent1").get(f"{base}/a", headers={"X-Agent-Container": "admin"}, timeout=10)
    assert origin.requests[-1]["headers"]["X-Agent-Container"] == "agent1"

    # the scanner, first in the cascade, still denies a secret; the origin never sees it
    sent = len(origin.requests)
    denied = through(gp).post(f"{base}/leak", data=b"key=AKIAABCDEFGHIJKLMNOP", timeout=10)
    assert denied.status_code == 403 and b"aws-access-key" in denied.content
    assert len(origin.requests) == sent

    events = wait_until(lambda: (lambda e: e if len(e) >= 3 else None)(mw_events(gp)), 5)
    assert events, mw_events(gp)
    tagged = [e for e in events if e["middleware"] == "header-tagger"]
    assert {(e["action"], json.dumps(e["tags"], sort_keys=True)) for e in tagged} == {
        ("rewrite", '{"container": "agent7"}'), ("rewrite", '{"container": "agent1"}')}
    assert [e["tags"] for e in events if e["middleware"] == "block-secrets"] == [{"secret": "aws-access-key"}]


HELPER_MIDDLEWARE = """
import sys
sys.path.insert(0, {examples!r})
from greyproxy_middleware import Middleware

mw = Middleware("shouty", on_error={on_error!r})

@mw.request(path="^/api/")
def check(req):
    if req.headers.get("x-explode"):
        raise RuntimeError("boom")
    if req.method == "DELETE":
        return req.deny(405, "no deleting\\n", tags={{"why": "delete"}})

@mw.response(path="^/api/")
def shout(resp):
    return resp.rewrite(headers={{"X-Shouted": "1"}}, body=(resp.body or b"").upper())

mw.run()
"""


@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_a_middleware_in_a_few_lines_with_the_helper(gp_factory, origin, tmp_path, on_error):
    script = tmp_path / "shouty.py"
    script.write_text(HELPER_MIDDLEWARE.format(examples=str(EXAMPLES), on_error=on_error))
    gp = serve_with(gp_factory, [sys.executable, str(script)])
    status = gp.api("GET", "/api/middlewares").json()["items"][0]
    assert [h["type"] for h in status["hooks"]] == ["http-request", "http-response"]
    base = f"http://{origin.host}:{origin.port}"
    agent = through(gp)

    shouted = agent.get(f"{base}/api/x", timeout=10)
    assert shouted.status_code == 200 and shouted.text == "HELLO FROM ORIGIN\n"
    assert shouted.headers["X-Shouted"] == "1"
    assert agent.get(f"{base}/other", timeout=10).text == "hello from origin\n"  # the filter keeps it out

    sent = len(origin.requests)
    refused = agent.delete(f"{base}/api/x", timeout=10)
    assert refused.status_code == 405 and refused.text == "no deleting\n"
    assert len(origin.requests) == sent

    exploded = agent.get(f"{base}/api/x", headers={"X-Explode": "1"}, timeout=10)
    if on_error == "deny":  # a handler that raises fails closed, and the middleware keeps running
        assert exploded.status_code == 403 and len(origin.requests) == sent
    else:
        assert exploded.status_code == 200 and exploded.text == "HELLO FROM ORIGIN\n"
    assert agent.get(f"{base}/api/y", timeout=10).text == "HELLO FROM ORIGIN\n"
    assert "handler for http-request failed" in gp.logs() and "RuntimeError: boom" in gp.logs()


def test_the_helper_serves_the_websocket_transport(gp_factory, origin, tmp_path):
    import os
    import socket
    import subprocess

    from tests.ports import free_port

    script = tmp_path / "shouty_ws.py"
    script.write_text(HELPER_MIDDLEWARE.format(examples=str(EXAMPLES), on_error="deny"))
    port = free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if k != "GREYPROXY_TRANSPORT"}
    env.update(GREYPROXY_WS_PORT=str(port), GREYPROXY_WS_TOKEN="s3cret-token")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_until(listening, 10), "the helper did not listen"
        url = f"ws://127.0.0.1:{port}/"
        yaml = f"middlewares:\n  - url: {url}\n    auth_header: 'Authorization: Bearer s3cret-token'\n"
        gp = gp_factory(config_yaml=yaml)
        assert gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": "127.0.0.2"}
                      ).status_code == 201
        status = wait_until(lambda: (lambda items: items if items and items[0]["connected"] else None)(
            gp.api("GET", "/api/middlewares").json()["items"]), 10)
        assert status and status[0]["name"] == "shouty" and status[0]["transport"] in ("websocket", "ws")
        shouted = through(gp).get(f"http://{origin.host}:{origin.port}/api/x", timeout=10)
        assert shouted.status_code == 200 and shouted.text == "HELLO FROM ORIGIN\n"

        # without the token the helper refuses the upgrade, and greyproxy fails closed
        wrong = gp_factory(config_yaml=f"middlewares:\n  - url: {url}\n", name="wrong")
        assert wrong.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": "127.0.0.2"}
                         ).status_code == 201
        refused = through(wrong).get(f"http://{origin.host}:{origin.port}/api/x", timeout=10)
        assert refused.status_code == 403
        assert not wrong.api("GET", "/api/middlewares").json()["items"][0]["connected"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
