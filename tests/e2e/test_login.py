"""Token login (docs/decisions.md#the-control-plane-is-not-the-agents): the printed URL logs a browser in; without it no page or API data is served."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import websocket
from playwright.sync_api import expect

import greyproxy
from tests.e2e.conftest import PHONE

PAGES = ["/dashboard", "/pending", "/rules", "/logs", "/activity", "/conversations", "/sessions",
         "/credentials", "/settings", "/", "/traffic"]
API = ["/api/pending", "/api/rules", "/api/logs", "/api/dashboard", "/api/settings", "/api/allowall",
       "/api/pending/count", "/api/events"]
MARKER = "marker-7f3a.example"  # appears in the data; must never appear for a stranger
STATIC = Path(greyproxy.__file__).parent / "web" / "static"


def seed(gp) -> None:
    rule = {"container_pattern": "agent1", "destination_pattern": MARKER, "notes": MARKER}
    assert gp.api("POST", "/api/rules", json=rule).status_code == 201


def plain_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def test_without_the_token_nothing_is_served(gp):
    seed(gp)
    s = plain_session()
    for path in PAGES:
        for cookies in ({}, {"greyproxy_token": "wrong"}):
            r = s.get(gp.api_url + path, cookies=cookies, allow_redirects=False, timeout=10)
            assert r.status_code == 401, path
            assert r.headers["Content-Type"].startswith("text/html")
            assert "greyproxy serve" in r.text and "api-token" in r.text  # says how to log in
            assert MARKER not in r.text and gp.token not in r.text
            assert "Set-Cookie" not in r.headers
    for path in API:
        r = s.get(gp.api_url + path, timeout=10, stream=True)
        assert r.status_code == 401, path
        assert r.json() == {"error": "missing or invalid API token"}
    # A wrong token in the printed-URL form neither logs in nor leaks.
    r = s.get(gp.api_url + "/dashboard?token=nope", allow_redirects=False, timeout=10)
    assert r.status_code == 401 and "Set-Cookie" not in r.headers and "not the current API token" in r.text
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws", timeout=10)
    assert exc.value.status_code == 401


def test_static_assets_are_public_and_hold_no_data(gp):
    s = plain_session()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            r = s.get(f"{gp.api_url}/static/{path.relative_to(STATIC)}", timeout=10)
            assert r.status_code == 200, path
            assert gp.token not in r.text


def test_the_printed_url_logs_in_with_an_httponly_cookie(gp, dashboards):
    seed(gp)
    dash = dashboards(gp).login()
    page = dash.page
    assert page.url == f"{gp.api_url}/dashboard"  # the token is dropped from the address bar
    cookie = next(c for c in dash.context.cookies() if c["name"] == "greyproxy_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the token
    for path in PAGES:
        response = page.goto(dash.url(path))
        assert response.status == 200, path
        assert gp.token not in page.content()
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert response.headers["x-frame-options"] == "DENY"
    dash.goto("/rules")
    expect(page.locator("#rules-table")).to_contain_text(MARKER)
    assert dash.errors == []


def test_a_browser_without_the_token_sees_how_to_log_in(gp, dashboards):
    seed(gp)
    for name, viewport in (("login", None), ("login-phone", PHONE)):
        dash = dashboards(gp, **({"viewport": viewport} if viewport else {}))
        response = dash.page.goto(dash.url("/pending"))
        assert response.status == 401
        expect(dash.page.locator("h1")).to_contain_text("GreyProxy dashboard")
        expect(dash.page.locator(".login-card")).to_contain_text("greyproxy serve")
        expect(dash.page.locator(".login-card")).to_contain_text(str(gp.data_dir / "api-token"))
        assert MARKER not in dash.page.content()
        dash.shot(name)
        assert dash.errors == []


def test_a_lost_login_is_reported_on_the_page(gp, dashboards):
    dash = dashboards(gp).login("/rules")
    dash.context.clear_cookies()
    dash.page.locator("#rule-filters [name=container]").fill("x")  # triggers a REST call
    expect(dash.page.locator("#banner")).to_contain_text("no longer logged in")
