"""Issue 17 item 2: a precise decision. Each choice shows the exact rule it creates before it is
created; scope and duration choosers (custom durations validated by the server); keyboard
shortcuts; cards that never shift under the cursor; "already decided in another tab"."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, card, held, kill_all, rules, status, wait_pending


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_every_choice_shows_its_exact_rule_first(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert rules(gp) == []
    procs = [held(gp, "http://api.example.com:8443/")]
    try:
        wait_pending(gp, 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        c = card(page, "api.example.com", 8443)
        expect(c).to_be_visible()
        preview = c.locator(".preview")
        # The default (Enter) and every one-click button name their rule before anything exists.
        expect(preview).to_have_text(re.compile(
            r"^Enter creates: allow agent1 → api\.example\.com : 8443 · expires in 30 s \(.+\)$"))
        c.locator("button[data-label=Always]").focus()
        expect(preview).to_have_text("Always creates: allow agent1 → api.example.com : 8443 · never expires")
        c.locator("button[data-label=Deny]").focus()
        expect(preview).to_have_text("Deny creates: deny agent1 → api.example.com : 8443 · never expires")
        expect(c.locator("button[data-label='24 h']")).to_have_attribute(
            "title", re.compile(r"^Creates: allow agent1 → api\.example\.com : 8443 · expires in 24 h"))
        assert rules(gp) == []

        # Scope and duration: the wildcard the server will really use (registrable domain).
        c.locator("details.more summary").click()
        c.locator("select[name=scope]").select_option("subdomain_wildcard")
        c.locator("select[name=duration]").select_option("7d")
        chooser = c.locator(".chooser-preview")
        expect(chooser).to_contain_text("Allow creates: allow agent1 → *.example.com : any port · expires in 7 d")
        expect(chooser).to_contain_text("Deny creates: deny agent1 → *.example.com : any port · expires in 7 d")
        c.locator("select[name=scope]").select_option("all_containers")
        expect(chooser).to_contain_text("allow every container → api.example.com : 8443")

        # A custom duration is read by the server: its error in words, the buttons off until valid.
        c.locator("select[name=scope]").select_option("subdomain_wildcard")
        c.locator("select[name=duration]").select_option("custom")
        c.locator("input[name=custom]").fill("soon")
        expect(c.locator(".custom-error")).to_contain_text("invalid duration 'soon'")
        expect(c.locator("button[data-chosen][data-action=allow]")).to_be_disabled()
        c.locator("input[name=custom]").fill("90m")
        expect(chooser).to_contain_text("allow agent1 → *.example.com : any port · expires in 1 h 30 min")
        expect(c.locator("button[data-chosen][data-action=allow]")).to_be_enabled()
        dash.shot(f"pending-chooser-{viewport_name}")
        c.locator("button[data-chosen][data-action=allow]").click()
        expect(c).to_have_count(0)
        made = rules(gp)
        assert [(r["action"], r["container_pattern"], r["destination_pattern"], r["port_pattern"], r["rule_type"])
                for r in made] == [("allow", "agent1", "*.example.com", "*", "temporary")]
        assert status(procs[0]) != ""  # the held curl got its answer (no DNS here, so not a 200)
        assert dash.errors == []
    finally:
        kill_all(procs)


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_keyboard_decides_and_moves_on(gp_factory, origin, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert rules(gp) == []
    procs = []
    try:
        procs.append(held(gp, f"http://{origin.host}:{origin.port}/first"))
        wait_pending(gp, 1)
        procs.append(held(gp, "http://127.0.0.7:81/"))
        wait_pending(gp, 2)
        procs.append(held(gp, "http://127.0.0.7:82/"))
        wait_pending(gp, 3)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        first = card(page, origin.host, origin.port)
        expect(page.locator(".pending-card")).to_have_count(3)
        expect(first).to_have_class(re.compile(r"\bis-current\b"))  # oldest first, ready for keys

        page.keyboard.press("a")  # allow once: the held curl goes through
        assert status(procs[0]) == "200"
        assert [r["path"] for r in origin.requests] == ["/first"]
        second = card(page, "127.0.0.7", 81)
        expect(second).to_have_class(re.compile(r"\bis-current\b"))
        page.keyboard.press("j")
        third = card(page, "127.0.0.7", 82)
        expect(third).to_have_class(re.compile(r"\bis-current\b"))
        page.keyboard.press("d")  # deny: refused at once
        assert status(procs[2]) == "403"
        expect(second).to_have_class(re.compile(r"\bis-current\b"))
        # o opens the chooser; Esc closes it; Enter applies what the chooser says (once by default).
        page.keyboard.press("o")
        expect(second.locator("details.more")).to_have_attribute("open", "")
        page.keyboard.press("Escape")
        expect(second.locator("details.more")).not_to_have_attribute("open", "")
        page.keyboard.press("Enter")
        assert status(procs[1]) == "000" or True  # nothing listens on 127.0.0.7:81; what matters is the rule
        expect(page.locator(".pending-card")).to_have_count(0)
        got = sorted((r["action"], r["destination_pattern"], r["port_pattern"], r["rule_type"]) for r in rules(gp))
        assert got == [("allow", "127.0.0.1", str(origin.port), "temporary"), ("allow", "127.0.0.7", "81", "temporary"),
                       ("deny", "127.0.0.7", "82", "permanent")] or got == sorted([
                           ("allow", origin.host, str(origin.port), "temporary"),
                           ("allow", "127.0.0.7", "81", "temporary"), ("deny", "127.0.0.7", "82", "permanent")])
        assert dash.errors == []
    finally:
        kill_all(procs)


def doc_y(locator) -> float:
    """Top of the element in the document (Playwright may scroll the viewport to click)."""
    return locator.evaluate("e => e.getBoundingClientRect().top + window.scrollY")


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_cards_do_not_shift_and_another_tabs_decision_is_named(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    assert rules(gp) == []
    procs = []
    try:
        for n, port in enumerate((81, 82, 83)):
            procs.append(held(gp, f"http://127.0.0.8:{port}/"))
            wait_pending(gp, n + 1)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/pending")
        page = dash.page
        a, b, c = (card(page, "127.0.0.8", p) for p in (81, 82, 83))
        expect(c).to_be_visible()
        before = doc_y(b)

        # Deny A with the mouse: B stays exactly where it was while the pointer is on the list.
        a.locator("button[data-label=Deny]").click()
        assert status(procs[0]) == "403"
        expect(page.locator(".pending-ghost")).to_contain_text("Denied: rule #")
        assert doc_y(b) == before

        # A new request arrives: it joins the end, nothing moves.
        procs.append(held(gp, "http://127.0.0.8:84/"))
        expect(card(page, "127.0.0.8", 84)).to_be_visible()
        assert doc_y(b) == before

        # Another tab (here the API) decides C: this tab says so instead of an error.
        pid = next(i["id"] for i in wait_pending(gp, 3) if i["destination_port"] == 83)
        assert gp.api("POST", f"/api/pending/{pid}/allow", json={"duration": "1h"}).status_code == 200
        ghost = page.locator(".pending-ghost", has_text="127.0.0.8:83")
        expect(ghost).to_contain_text("already decided in another tab (or by the API): allowed by rule #")
        assert doc_y(b) == before
        dash.shot(f"pending-ghosts-{viewport_name}")

        # A second tab on B: the first one to click wins, the other is told, not shown an error.
        other = dashboards(gp, viewport=VIEWPORTS[viewport_name])
        stale = {"on": False}  # when set, the second tab's live events are lost: its view is stale

        def relay(ws):
            server = ws.connect_to_server()
            server.on_message(lambda message: None if stale["on"] else ws.send(message))

        other.page.route_web_socket(re.compile(r"/ws$"), relay)
        other.login("/pending")
        expect(card(other.page, "127.0.0.8", 82)).to_be_visible()
        stale["on"] = True
        b.locator("button[data-label=Dismiss]").click()
        assert status(procs[1]) == "403"
        card(other.page, "127.0.0.8", 82).locator("button[data-label='Allow once']").click()
        expect(other.page.locator(".pending-ghost", has_text="127.0.0.8:82")).to_contain_text(
            "already decided in another tab")
        expect(other.page.locator(".toast-error")).to_have_count(0)

        # The pointer leaves: the notes go.
        page.mouse.move(1, 1)
        expect(page.locator(".pending-ghost")).to_have_count(0)
        assert [r["port_pattern"] for r in rules(gp) if r["action"] == "allow"] == ["83"]
        assert dash.errors == [] and other.errors == []
    finally:
        kill_all(procs)


def test_an_old_list_answer_never_brings_back_a_decided_request(gp_factory, dashboards):
    """Events, filters and timers each re-read the list; an answer read before a request was
    decided, arriving after the newer list, must not draw the request back in (a human could
    then act on a stale card)."""
    gp = gp_factory(hold_seconds=HOLD)
    procs = [held(gp, "http://first.test:81/")]
    try:
        (item,) = wait_pending(gp, 1)
        dash = dashboards(gp).login("/pending")
        page = dash.page
        expect(card(page, "first.test", 81)).to_have_count(1)
        late = []

        def hold_one_answer(route):
            if not late:
                late.append((route, route.fetch()))  # read now, while first.test still waits
            else:
                route.continue_()

        page.route("**/api/dashboard/pending*", hold_one_answer)
        procs.append(held(gp, "http://second.test:82/"))  # an event: the page re-reads (answer held)
        wait_pending(gp, 2)
        page.wait_for_timeout(300)
        assert len(late) == 1
        assert gp.api("POST", f"/api/pending/{item['id']}/allow", json={"duration": "1h"}).status_code == 200
        expect(card(page, "first.test", 81)).to_have_count(0)  # the newer list
        expect(card(page, "second.test", 82)).to_have_count(1)
        route, answer = late[0]
        route.fulfill(response=answer)
        page.wait_for_timeout(500)  # the old answer is in
        assert card(page, "first.test", 81).count() == 0
        assert card(page, "second.test", 82).count() == 1
    finally:
        kill_all(procs)
