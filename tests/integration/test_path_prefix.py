"""`api.path_prefix` (greyproxy's `pathPrefix`): the API, /ws, /metrics and the dashboard live
under the prefix, nothing else answers, and the CLI finds the prefix in the handshake."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import requests
import websocket

PREFIX = "/gp/v1"


def get(gp, path: str, token: bool = True, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {gp.token}"} if token else {}
    return gp.session.get(gp.api_url + path, headers=headers, timeout=10, allow_redirects=False, **kw)


def test_everything_is_under_the_prefix(gp_factory):
    gp = gp_factory(config_yaml=f"api: {{path_prefix: '{PREFIX}/'}}\n")
    assert get(gp, f"{PREFIX}/api/health", token=False).json()["status"] in ("ok", "degraded")
    for path in ("/api/health", "/api/rules", "/dashboard", "/static/app.css", "/metrics", "/gpx/api/rules",
                 "/gp/v1x/api/rules"):
        resp = get(gp, path)
        assert resp.status_code == 404 and "error" in resp.json(), path
    root = get(gp, "/")
    assert root.status_code == 302 and root.headers["Location"] == f"{PREFIX}/dashboard"
    assert get(gp, f"{PREFIX}/api/rules", token=False).status_code == 401
    rules = get(gp, f"{PREFIX}/api/rules")
    assert rules.status_code == 200 and rules.json()["total"] >= 1
    made = gp.session.post(gp.api_url + f"{PREFIX}/api/rules", timeout=10,
                           headers={"Authorization": f"Bearer {gp.token}"},
                           json={"container_pattern": "a", "destination_pattern": "prefixed.example"})
    assert made.status_code == 201, made.text
    assert get(gp, f"{PREFIX}/metrics").status_code == 200
    assert get(gp, f"{PREFIX}/api/version").json()["path_prefix"] == PREFIX
    assert "/api/rules" in get(gp, f"{PREFIX}/api/openapi.json").json()["paths"]

    # A browser without the token gets the login page, which names the prefixed URL.
    stranger = get(gp, f"{PREFIX}/rules", token=False)
    assert stranger.status_code == 401 and f"{gp.api_url}{PREFIX}/dashboard?token=" in stranger.text
    assert not re.search(r'(href|src|action)="/(?!gp/v1/)', stranger.text)
    # The login URL: the token becomes a cookie and the redirect stays under the prefix.
    login = get(gp, f"{PREFIX}/dashboard", token=False, params={"token": gp.token})
    assert login.status_code == 302 and login.headers["Location"] == f"{PREFIX}/dashboard"
    page = gp.session.get(gp.api_url + f"{PREFIX}/rules", timeout=10, cookies=login.cookies)
    assert page.status_code == 200
    assert f'href="{PREFIX}/static/app.css"' in page.text and f'href="{PREFIX}/dashboard"' in page.text
    assert not re.search(r'(href|src|action)="/(?!gp/v1/)', page.text), "a page link outside the prefix"
    script = get(gp, f"{PREFIX}/static/js/core.js")
    assert script.status_code == 200 and f"{PREFIX}/ws" in script.text
    assert not re.search(r"[\"'`]/(api|ws|static|pending|rules)\b", script.text), "a script URL outside the prefix"
    assert get(gp, f"{PREFIX}/traffic", token=False, cookies=login.cookies).headers["Location"] == f"{PREFIX}/activity"

    ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}{PREFIX}/ws",
                                     header=[f"Authorization: Bearer {gp.token}"], timeout=10)
    try:
        assert json.loads(ws.recv())["type"] == "connected"
        ws.send(json.dumps({"command": "ping"}))
        assert json.loads(ws.recv())["type"] == "pong"
    finally:
        ws.close()

    handshake = json.loads((gp.data_dir / "api-handshake.json").read_text())
    assert handshake["path_prefix"] == PREFIX
    # The CLI talks to the prefixed API (it reads the prefix from the handshake).
    out = subprocess.run([sys.executable, "-m", "greyproxy", "rules", "export", "--data-dir", str(gp.data_dir),
                          "-C", str(gp.config_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "prefixed.example" in out.stdout
