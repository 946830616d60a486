"""The dashboard in a real browser against a real `greyproxy serve` (issue 7)."""

from __future__ import annotations

import re
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import WAIT_MS
from tests.integration.netutil import curl

HOLD = 30.0  # long enough that only a click can end a held request inside these tests


def held_curl(gp, url: str):
    """curl through the HTTP proxy as agent1; it waits, held, until someone decides."""
    return curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-w", "\\n%{http_code}", url,
                timeout=int(HOLD) + 10)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """(body, http status) of a curl started with held_curl(), bounded in time."""
    out, err = proc.communicate(timeout=timeout)
    body, _, status = out.decode().rpartition("\n")
    return body, status


def card_for(dash, host: str, port: int):
    return dash.page.locator(".pending-card", has=dash.page.locator(".dest-host", has_text=host)).filter(
        has=dash.page.locator(".dest-port", has_text=f":{port}"))


def test_allow_and_deny_held_requests_from_the_pending_page(gp_factory, origin, dashboards):
    gp = gp_factory(hold_seconds=HOLD)
    dash = dashboards(gp).login("/pending")
    page = dash.page
    expect(page.locator(".pending-list .empty")).to_be_visible()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    proc = held_curl(gp, f"http://{origin.host}:{origin.port}/")
    try:
        card = card_for(dash, origin.host, origin.port)
        expect(card).to_be_visible(timeout=WAIT_MS)
        expect(card.locator(".chip-container")).to_have_text("agent1")
        expect(card.locator(".waiting")).to_contain_text(re.compile(r"1 waiting · \d+ s left"))
        assert page.evaluate("window.__sameDocument") is True  # it arrived live, no reload
        expect(page.locator("#pending-badge")).to_have_text("1")
        dash.shot("pending-held")

        # Allow any port of this host for 1 hour: the same held curl completes.
        card.locator("details.more summary").click()
        card.locator("select[name=scope]").select_option("any_port")
        card.locator("select[name=duration]").select_option("1h")
        dash.shot("pending-more-options")
        card.locator('button[data-action=allow][data-chosen][data-scope=any_port][data-duration="1h"]').click()
        body, status = finish(proc, timeout=10)
        assert status == "200" and body.encode() == origin.body
        expect(card).to_have_count(0)
        expect(page.locator(".toast")).to_contain_text("Allowed")
    finally:
        proc.kill()

    # The rule is on the rules page, with its expiry.
    dash.goto("/rules")
    row = page.locator("#rules-table tbody tr", has=page.locator("td[data-label=Destination]", has_text=origin.host))
    expect(row).to_have_count(1)
    expect(row.locator("td[data-label=Port]")).to_have_text("*")
    expect(row.locator("td[data-label=Container]")).to_have_text("agent1")
    expect(row.locator("td[data-label=Expires]")).to_have_text(re.compile(r"^in (59 min|1 h)$"))
    dash.shot("rules-after-allow")

    # Deny another one: its curl is refused at once, long before the hold would end.
    dash.goto("/pending")
    proc = held_curl(gp, "http://127.0.0.3:9/")
    try:
        card = card_for(dash, "127.0.0.3", 9)
        expect(card).to_be_visible(timeout=WAIT_MS)
        started = time.monotonic()
        card.locator('button[data-action=deny][data-scope=exact][data-duration="permanent"]').click()
        _, status = finish(proc, timeout=10)
        assert status == "403"
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
    rules = gp.api("GET", "/api/rules", params={"destination": "127.0.0.3"}).json()["items"]
    assert [(r["action"], r["port_pattern"]) for r in rules] == [("deny", "9")]
    assert dash.errors == []


def test_highlight_from_a_notification_link(gp_factory, dashboards):
    gp = gp_factory(hold_seconds=HOLD)
    procs = [held_curl(gp, f"http://127.0.0.4:{port}/") for port in (81, 82)]
    try:
        items = gp.wait_for(lambda: (r := gp.api("GET", "/api/pending").json()["items"]) and len(r) == 2 and r,
                            timeout=10)
        target = next(i for i in items if i["destination_port"] == 81)
        dash = dashboards(gp).login(f"/pending?highlight={target['id']}")
        expect(dash.page.locator(f"#pending-{target['id']}")).to_have_class(re.compile(r"\bhighlight\b"))
        expect(dash.page.locator(".pending-card.highlight")).to_have_count(1)

        # Bulk: select both and dismiss them; both curls are refused.
        dash.page.locator("#select-all").check()
        expect(dash.page.locator("#selected-count")).to_have_text("2 selected")
        dash.page.locator("#bulk-dismiss").click()
        for proc in procs:
            assert finish(proc, timeout=10)[1] == "403"
        expect(dash.page.locator(".pending-card")).to_have_count(0)
        dash.goto("/pending?highlight=999999")
        expect(dash.page.locator("#highlight-missing")).to_contain_text("no longer pending")
        assert dash.errors == []
    finally:
        for proc in procs:
            proc.kill()


def test_rule_form_shows_the_api_message_and_saves_nothing(gp, dashboards):
    dash = dashboards(gp).login("/rules")
    page = dash.page
    before = gp.api("GET", "/api/rules", params={"include_expired": "true"}).json()["total"]
    expect(page.locator("#rules-table tbody tr").first).to_be_visible()  # the built-in rules, once loaded
    rows_before = page.locator("#rules-table tbody tr").count()
    bad = {"container_pattern": "agent1", "destination_pattern": "example.com", "port_pattern": "80-abc"}
    expected = gp.api("POST", "/api/rules", json=bad)
    assert expected.status_code == 400

    page.locator("#new-rule-toggle").click()
    form = page.locator("#rule-form")
    for name, value in bad.items():
        form.locator(f"[name={name}]").fill(value)
    form.locator("button[type=submit]").click()
    error = form.locator(".form-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(expected.json()["error"])
    dash.shot("rules-form-error")

    assert gp.api("GET", "/api/rules", params={"include_expired": "true"}).json()["total"] == before
    expect(page.locator("#rules-table tbody tr")).to_have_count(rows_before)

    # Corrected, it is saved and listed without a reload.
    form.locator("[name=port_pattern]").fill("443")
    form.locator("button[type=submit]").click()
    expect(page.locator("#rule-form")).to_be_hidden()
    row = page.locator("#rules-table tbody tr", has=page.locator("td[data-label=Destination]", has_text="example.com"))
    expect(row).to_have_count(1)
    expect(row.locator("td[data-label=Expires]")).to_have_text("never")
    assert dash.errors == []


def test_rule_edit_and_delete(gp, dashboards):
    created = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "edit.example",
                                                  "port_pattern": "443"}).json()
    dash = dashboards(gp).login("/rules")
    page = dash.page
    page.locator(f"button[data-edit='{created['id']}']").click()
    dialog = page.locator("#rule-dialog")
    dialog.locator("[name=port_pattern]").fill("not-a-port")
    dialog.locator("button[type=submit]").click()
    expect(dialog.locator(".form-error")).to_be_visible()
    assert gp.api("GET", f"/api/rules/{created['id']}").json()["port_pattern"] == "443"
    dialog.locator("[name=port_pattern]").fill("8443")
    dialog.locator("[name=notes]").fill("edited in the browser")
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_be_hidden()
    rule = gp.api("GET", f"/api/rules/{created['id']}").json()
    assert (rule["port_pattern"], rule["notes"]) == ("8443", "edited in the browser")

    page.once("dialog", lambda d: d.accept())
    page.locator(f"button[data-delete='{created['id']}']").click()
    expect(page.locator(f"button[data-delete='{created['id']}']")).to_have_count(0)
    assert gp.api("GET", f"/api/rules/{created['id']}").status_code == 404
    assert dash.errors == []


def test_rule_changes_elsewhere_appear_live(gp, dashboards):
    dash = dashboards(gp).login("/rules")
    gp.api("POST", "/api/rules", json={"container_pattern": "*", "destination_pattern": "live.example"})
    expect(dash.page.locator("#rules-table td[data-label=Destination]", has_text="live.example")).to_have_count(1)


@pytest.mark.parametrize("path", ["/", "/traffic"])
def test_redirects(gp, dashboards, path):
    dash = dashboards(gp).login()
    dash.goto(path)
    assert urlsplit(dash.page.url).path == {"/": "/dashboard", "/traffic": "/activity"}[path]


def test_live_indicator_reports_a_lost_connection(gp, dashboards):
    dash = dashboards(gp).login("/pending")
    expect(dash.page.locator("#live-status")).to_have_attribute("data-state", "live")
    gp.stop()
    # The page keeps retrying with backoff and says so instead of silently going stale.
    expect(dash.page.locator("#live-status")).to_have_attribute("data-state", re.compile("offline|connecting"))
    expect(dash.page.locator("#live-status .live-text")).to_have_text(re.compile("reconnecting|connecting"))
