"""Every page renders, on a laptop and a phone, in light and dark; logs, activity, settings and
browser notifications work. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import json
import re
import time

import pytest
import websocket
from playwright.sync_api import expect

from tests.e2e.conftest import DESKTOP, PHONE
from tests.integration.llmutil import HOST as LLM_HOST
from tests.integration.llmutil import agent_session, chat_server
from tests.integration.mwutil import middleware_yaml
from tests.integration.netutil import curl

PAGES = ["dashboard", "pending", "rules", "logs", "activity", "conversations", "sessions", "credentials", "audit",
         "settings"]
HOLD = 30.0


def through_proxy(gp, url: str, wait: bool = True):
    proc = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", "-w", "%{http_code}", url,
                timeout=int(HOLD) + 10)
    if wait:
        out, _ = proc.communicate(timeout=15)
        return out.decode()
    return proc


@pytest.fixture
def busy_gp(gp_factory, origin):
    """A greyproxy with rules, allowed and blocked log rows, and one request held right now."""
    gp = gp_factory(hold_seconds=HOLD)
    for rule in (
        {"container_pattern": "agent1", "destination_pattern": origin.host, "port_pattern": str(origin.port),
         "notes": "local test origin"},
        {"container_pattern": "*", "destination_pattern": "*.tracker.example", "action": "deny"},
        {"container_pattern": "agent*", "destination_pattern": "api.github.com", "port_pattern": "443",
         "rule_type": "temporary", "expires_in_seconds": 7200},
    ):
        assert gp.api("POST", "/api/rules", json=rule).status_code == 201
    for n in range(3):
        assert through_proxy(gp, f"http://{origin.host}:{origin.port}/page{n}") == "200"
    for n in range(52):  # more than one page of blocked rows
        assert through_proxy(gp, f"http://ads{n % 4}.tracker.example/") == "403"
    held = through_proxy(gp, "http://127.0.0.5:8080/", wait=False)
    assert gp.wait_for(lambda: gp.api("GET", "/api/pending/count").json()["count"] == 1, timeout=10)
    yield gp
    held.kill()


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_every_page_renders(busy_gp, dashboards, viewport_name):
    viewport = {"desktop": DESKTOP, "phone": PHONE}[viewport_name]
    dash = dashboards(busy_gp, viewport=viewport).login()
    page = dash.page
    for name in PAGES:
        dash.goto(f"/{name}")
        expect(page.locator("h1")).to_have_text(name.capitalize())
        expect(page.locator(f'.nav a[aria-current=page][href="/{name}"]')).to_have_count(1)
        ready = {
            "dashboard": "#recent li .badge",
            "pending": ".pending-card",
            "rules": "#rules-table td[data-label=Destination]",
            "logs": "#log-table tbody tr[data-id]",
            "activity": "#activity-table tbody tr[data-id]",
            "conversations": "#conv-empty:not([hidden]), #conv-list li",
            "sessions": "#sessions-empty:not([hidden]), #sessions-table tbody tr",
            "credentials": "#creds-empty:not([hidden]), #creds-table tbody tr",
            "audit": "#audit-table tbody tr[data-id]",
            "settings": "#silent-status:not(:text('…'))",
        }[name]
        expect(page.locator(ready).first).to_be_visible()
        assert no_horizontal_overflow(page), f"{name} scrolls sideways on {viewport_name}"
        dash.shot(f"{name}-{viewport_name}")
    assert dash.errors == []


def test_dark_theme_screenshots(busy_gp, dashboards):
    assert busy_gp.api("PUT", "/api/settings", json={"theme": "dark"}).status_code == 200
    for viewport_name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        dash = dashboards(busy_gp, viewport=viewport).login()
        for name in ("dashboard", "pending", "rules"):
            dash.goto(f"/{name}")
            assert dash.page.locator("html").get_attribute("data-theme") == "dark"
            assert dash.page.evaluate("getComputedStyle(document.body).colorScheme") == "dark"
            expect(dash.page.locator("main .card:visible, main .pending-card:visible").first).to_be_visible()
            dash.page.wait_for_timeout(300)  # let the lists fill before the picture
            dash.shot(f"{name}-{viewport_name}-dark")
        assert dash.errors == []


def test_logs_filters_pagination_and_detail(busy_gp, dashboards):
    dash = dashboards(busy_gp).login("/logs")
    page = dash.page
    table = page.locator("#log-table")
    expect(page.locator("#log-table-pager")).to_contain_text("Page 1 of 2 · 55 total")

    page.locator("#log-filters [name=result]").select_option("allowed")
    expect(page.locator("#log-table-pager")).to_be_hidden()
    expect(table.locator("tbody tr[data-id]")).to_have_count(3)
    expect(table.locator("td[data-label=Result] .badge", has_text="blocked")).to_have_count(0)
    assert "result=allowed" in page.url  # the view is in the address bar

    page.locator("#log-filters [name=result]").select_option("blocked")
    page.locator("#log-filters [name=destination]").fill("ads1")
    expect(table.locator("tbody tr[data-id]")).to_have_count(13)
    page.locator("#log-filters [name=destination]").fill("")
    expect(page.locator("#log-table-pager")).to_contain_text("Page 1 of 2 · 52 total")
    page.locator("#log-table-pager button", has_text="Next").click()
    expect(page.locator("#log-table-pager")).to_contain_text("Page 2 of 2")
    expect(table.locator("tbody tr[data-id]")).to_have_count(2)

    table.locator("tbody tr[data-id]").first.click()
    detail = table.locator(".detail-row")
    expect(detail).to_contain_text("denied_by_rule")
    expect(detail.locator("a", has_text="Create a rule")).to_have_attribute("href", re.compile(r"^/rules\?new=1&"))
    dash.shot("logs-detail")
    assert dash.errors == []


def test_activity_connections_and_traffic(busy_gp, dashboards, origin):
    dash = dashboards(busy_gp).login("/activity")
    page = dash.page
    expect(page.locator("#activity-table tbody tr[data-id]").first).to_be_visible()
    page.locator("#tab-traffic").click()
    assert "tab=traffic" in page.url
    if busy_gp.api("GET", "/api/transactions").status_code == 404:
        expect(page.locator("#traffic-empty")).to_contain_text("Traffic capture arrives with TLS interception")
    else:
        # Plain HTTP through the proxy is captured: open one and see its headers and body.
        row = page.locator("#traffic-table tbody tr[data-id]", has_text="/page1")
        expect(row).to_have_count(1)
        row.click()
        detail = page.locator("#txn-detail")
        expect(detail).to_contain_text("Request headers")
        expect(detail.locator("pre.body")).to_contain_text("hello from origin")
        expect(detail.locator("a", has_text="Download HAR")).to_be_visible()
    dash.shot("activity-traffic")
    assert dash.errors == []


def test_pages_for_missing_apis_show_their_empty_state(gp, dashboards):
    dash = dashboards(gp).login()
    for name, prefix, api in (("conversations", "conv", "/api/conversations"),
                              ("sessions", "sessions", "/api/sessions"),
                              ("credentials", "creds", "/api/credentials")):
        dash.goto(f"/{name}")
        empty = dash.page.locator(f"#{prefix}-empty")
        if gp.api("GET", api).status_code == 404:  # this API has not landed in this build
            expect(empty).to_be_visible()
            expect(empty).to_contain_text(re.compile(r"arrives? with"))
            expect(dash.page.locator(f"#{prefix}-body")).to_be_hidden()
        else:
            expect(dash.page.locator(f"#{prefix}-empty:visible, #{prefix}-body:visible").first).to_be_visible()
    assert dash.errors == []


def test_a_late_settings_answer_never_undoes_a_newer_change(gp, dashboards):
    """The answer to the page's own save is held back until a newer change made elsewhere has
    reached the page: the older answer must not put the page back (CI saw the theme, and a
    checkbox just clicked, reverted by a slow answer or a re-read arriving late)."""
    dash = dashboards(gp).login("/settings")
    page = dash.page
    late = []  # (route, the server's answer), fulfilled when the test says

    def hold_the_answer(route):
        if route.request.method == "PUT":
            late.append((route, route.fetch()))  # the server has applied it; the page waits
        else:
            route.continue_()

    page.route("**/api/settings", hold_the_answer)
    page.locator("#theme-choice label", has_text="Dark").click()
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["theme"] == "dark")
    gp.api("PUT", "/api/settings", json={"theme": "light"})  # newer, from another dashboard
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    page.wait_for_timeout(200)
    assert len(late) == 1
    route, answer = late[0]
    route.fulfill(response=answer)  # {"theme": "dark", ...}: older than what the page shows
    expect(page.locator(".toast")).to_contain_text("Theme saved")
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    expect(page.locator("#theme-choice input[value=light]")).to_be_checked()

    # A checkbox just clicked keeps its new state when a re-read asked before the click lands.
    page.unroute("**/api/settings")
    box = page.locator("#conv-enabled")
    expect(box).to_be_checked()
    reads = []

    def hold_the_read(route):
        if route.request.method == "GET":
            reads.append((route, route.fetch()))  # conversations still on
        else:
            route.continue_()

    page.route("**/api/settings", hold_the_read)
    page.once("dialog", lambda d: d.accept())
    page.locator("#cert-replace").click()  # then the page re-reads its settings: held
    expect(page.locator(".toast").last).to_contain_text("CA replaced")
    page.wait_for_timeout(200)
    assert len(reads) == 1
    box.uncheck()
    expect(page.locator(".toast").last).to_contain_text("Conversations saved")  # its answer is in
    assert gp.api("GET", "/api/settings").json()["conversations"]["enabled"] is False
    route, answer = reads[0]
    route.fulfill(response=answer)
    page.wait_for_timeout(500)  # the old answer is in
    assert not box.is_checked()


def test_settings_theme_toggles_and_silent_mode(gp, dashboards):
    dash = dashboards(gp).login("/settings")
    page = dash.page
    page.locator("#theme-choice label", has_text="Dark").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["theme"] == "dark")
    dash.goto("/pending")  # the server renders the saved theme: no flash of the wrong one
    assert page.locator("html").get_attribute("data-theme") == "dark"
    dash.goto("/settings")

    expect(page.locator("#notify-enabled")).to_be_checked()
    page.locator("#notify-enabled").uncheck()
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["notifications"]["enabled"] is False)
    page.locator("#notify-enabled").check()
    assert gp.wait_for(lambda: gp.api("GET", "/api/settings").json()["notifications"]["enabled"] is True)

    form = page.locator("#silent-form")
    form.locator("[name=mode]").select_option("deny")
    form.locator("[name=duration]").select_option("15m")
    form.locator("button[type=submit]").click()
    expect(page.locator("#silent-status")).to_contain_text("Denying everything")
    status = gp.api("GET", "/api/allowall").json()
    assert status["active"] and status["mode"] == "deny"
    dash.shot("settings-silent-on")
    page.locator("#silent-off").click()
    expect(page.locator("#silent-status")).to_contain_text("Off")
    assert gp.api("GET", "/api/allowall").json()["active"] is False

    if "redactedHeaders" in gp.api("GET", "/api/settings").json():
        form = page.locator("#redact-form")
        form.locator("textarea").fill("not a header!")
        form.locator("button[type=submit]").click()
        expect(form.locator(".form-error")).to_contain_text("redactedHeaders")
        form.locator("textarea").fill("x-internal-*")
        form.locator("button[type=submit]").click()
        expect(form.locator(".form-error")).to_be_hidden()
        assert gp.wait_for(lambda: "x-internal-*" in gp.api("GET", "/api/settings").json()["redactedHeaders"])

    # A change made elsewhere shows up live.
    gp.api("PUT", "/api/settings", json={"theme": "light"})
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    expect(page.locator("#theme-choice input[value=light]")).to_be_checked()
    assert dash.errors == []


# Records notifications instead of showing them, and pretends the tab is in the background.
FAKE_NOTIFICATIONS = """
window.__notes = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__notes.push({ title, ...options }); }
  close() {}
};
Object.defineProperty(document, "hidden", { get: () => true });
"""


def test_browser_notification_for_a_background_tab_honours_claims(gp_factory, dashboards):
    gp = gp_factory(hold_seconds=HOLD)
    dash = dashboards(gp, init_script=FAKE_NOTIFICATIONS).login("/rules")
    page = dash.page

    def notes(count: int) -> list[dict]:
        # Polled through evaluate(): wait_for_function() needs eval, which the page's CSP forbids.
        deadline = time.monotonic() + 10
        while len(found := page.evaluate("window.__notes")) < count and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        return found

    procs = [through_proxy(gp, "http://127.0.0.6:81/", wait=False)]
    try:
        found = notes(1)
        assert len(found) == 1
        note = found[0]
        assert note["title"] == "GreyProxy"
        assert note["body"] == "agent1 wants to connect to 127.0.0.6:81"
        assert note["tag"].startswith("greyproxy-pending-")

        # While a companion app holds a claim, the dashboard stays quiet too.
        ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws",
                                         header=[f"Authorization: Bearer {gp.token}"], timeout=10)
        ws.send(json.dumps({"command": "claim_notifications"}))
        while json.loads(ws.recv())["type"] != "notification_claimed":
            pass
        procs.append(through_proxy(gp, "http://127.0.0.6:82/", wait=False))
        assert gp.wait_for(lambda: gp.api("GET", "/api/pending/count").json()["count"] == 2, timeout=10)
        ws.close()
        assert gp.wait_for(lambda: gp.api("GET", "/api/notifications").json()["active_claims"] == 0)
        procs.append(through_proxy(gp, "http://127.0.0.6:83/", wait=False))
        assert [n["body"][-3:] for n in notes(2)] == [":81", ":83"]
    finally:
        for proc in procs:
            proc.kill()
    assert dash.errors == []


def test_credentials_page_adds_lists_and_deletes(gp, dashboards):
    if gp.api("GET", "/api/credentials").status_code == 404:
        pytest.skip("the credentials API is not in this build; the page shows its empty state (tested above)")
    dash = dashboards(gp).login("/credentials")
    page = dash.page
    form = page.locator("#cred-form")
    form.locator("[name=label]").fill("GITHUB_TOKEN")
    form.locator("[name=value]").fill("ghp_supersecretvalue123")
    form.locator("[name=hosts]").fill("api.github.com")
    form.locator("[name=containers]").fill("claude, build-*")
    form.locator("button[type=submit]").click()
    row = page.locator("#creds-table tbody tr", has_text="GITHUB_TOKEN")
    expect(row).to_have_count(1)
    expect(row.locator("td[data-label=Containers]")).to_have_text("claude, build-*")
    expect(row.locator("td[data-label=Value]")).to_have_text("ghp_***")  # at most 4 characters
    expect(row.locator(".placeholder")).to_contain_text("greyproxy:credential:v1:global:")
    assert "ghp_supersecretvalue123" not in page.content()  # the value is never shown back
    dash.shot("credentials-added")

    form.locator("[name=label]").fill("GITHUB_TOKEN")
    form.locator("[name=value]").fill("another")
    form.locator("button[type=submit]").click()
    expect(form.locator(".form-error")).to_be_visible()  # the API's message for a duplicate label

    page.once("dialog", lambda d: d.accept())
    row.locator("button", has_text="Delete").click()
    expect(row).to_have_count(0)
    assert gp.api("GET", "/api/credentials").json() == []
    assert dash.errors == []


def test_audit_page_shows_who_changed_what(busy_gp, dashboards):
    dash = dashboards(busy_gp).login("/audit")
    page = dash.page
    rows = page.locator("#audit-table tbody tr[data-id]")
    expect(rows).to_have_count(3)  # the three rules busy_gp created over REST
    expect(rows.first.locator("td[data-label=Actor]")).to_have_text("token")
    expect(rows.first.locator("td[data-label=Change]")).to_have_text("rule.create")

    # a change made from this dashboard appears live, with the dashboard as its actor
    dash.goto("/settings")
    page.locator("input[name=theme][value=dark]").check()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dash.goto("/audit")
    expect(rows).to_have_count(4)
    first = rows.first
    expect(first.locator("td[data-label=Actor]")).to_have_text("dashboard")
    expect(first.locator("td[data-label=Change]")).to_have_text("settings.update")
    first.click()
    detail = page.locator("#audit-table .detail-row")
    expect(detail).to_contain_text("Before")
    expect(detail.locator("pre").nth(1)).to_contain_text('"theme": "dark"')

    page.locator("#audit-filters [name=kind]").select_option("rule")
    expect(rows).to_have_count(3)
    dash.shot("audit-detail")
    assert dash.errors == []


def test_middleware_badges_in_activity_and_status_in_settings(gp_factory, dashboards, origin, tmp_path):
    gp = gp_factory(config_yaml=middleware_yaml(tmp_path / "seen.jsonl"))
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port)}).status_code == 201
    assert through_proxy(gp, f"http://{origin.host}:{origin.port}/mw/rewrite-response") == "299"
    assert through_proxy(gp, f"http://{origin.host}:{origin.port}/mw/block-response") == "502"

    dash = dashboards(gp).login("/activity?tab=traffic")
    page = dash.page
    row = page.locator("#traffic-table tbody tr[data-id]", has_text="/mw/rewrite-response")
    expect(row.locator(".badge-mw")).to_have_text("rewrite")
    blocked = page.locator("#traffic-table tbody tr[data-id]", has_text="/mw/block-response")
    expect(blocked.locator(".badge-mw.badge-bad")).to_have_text("block")
    row.click()
    expect(page.locator("#txn-detail")).to_contain_text("Middlewares")
    dash.shot("activity-middleware")

    dash.goto("/settings")
    item = page.locator("#mw-list li")
    expect(item).to_contain_text("test-mw")
    expect(item.locator(".badge")).to_have_text("connected")
    expect(item).to_contain_text("stdio")
    dash.shot("settings-middleware")
    assert dash.errors == []


def test_conversation_page_shows_turns_and_tool_calls(gp, dashboards):
    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": LLM_HOST}
                  ).status_code == 201
    with chat_server() as llm:
        agent_session(gp, llm)
        assert gp.wait_for(lambda: (lambda c: c and c[0]["turn_count"] == 2)(
            gp.api("GET", "/api/conversations").json()["items"]), timeout=10)
    dash = dashboards(gp).login("/conversations")
    page = dash.page
    item = page.locator("#conv-list .conv-item")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("hello")
    item.click()
    detail = page.locator("#conv-detail")
    expect(detail.locator(".turn")).to_have_count(2)
    expect(detail).to_contain_text("how many files are there?")
    expect(detail).to_contain_text("bash")
    expect(detail).to_contain_text("There are two files.")
    dash.shot("conversation-detail")
    assert dash.errors == []
