"""Issue 17 item 10: timeline axis labels that say where the bars are, "Waiting for you" with
"+N more", and form errors in words, all at once."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import HOLD, VIEWPORTS, held, kill_all, rules, wait_pending


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_timeline_labels_and_waiting_more(gp_factory, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=HOLD)
    procs = []
    try:
        for n in range(7):
            procs.append(held(gp, f"http://127.0.0.13:{81 + n}/"))
        wait_pending(gp, 7)
        dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/dashboard")
        page = dash.page
        preview = page.locator("#pending-preview li")
        expect(preview).to_have_count(6)
        expect(preview.last).to_have_text("+2 more waiting →")
        expect(preview.last.locator("a")).to_have_attribute("href", "/pending")

        ticks = page.locator("#timeline-axis .tick")
        expect(ticks.first).to_be_visible()
        labels = ticks.all_inner_texts()
        assert 2 <= len(labels) <= 5 and len(set(labels)) == len(labels), labels
        assert labels[-1] == "now"
        assert re.match(r"^\d{1,2}:00\s?(AM|PM)?$", labels[0]), labels
        expect(page.locator("#timeline")).to_have_attribute("aria-label", re.compile(r"\d+ allowed, \d+ blocked$"))
        page.locator("#period button[data-period='7d']").click()
        expect(ticks.last).to_have_text("now")
        labels = ticks.all_inner_texts()
        assert len(set(labels)) == len(labels), labels
        dash.shot(f"dashboard-waiting-{viewport_name}")
        assert dash.errors == []
    finally:
        kill_all(procs)


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_rule_form_errors_all_at_once(gp, dashboards, viewport_name):
    assert rules(gp) == []
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/rules")
    page = dash.page
    page.locator("#new-rule-toggle").click()
    form = page.locator("#rule-form")
    form.locator("[name=container_pattern]").fill("")
    form.locator("[name=destination_pattern]").fill("bad host")
    form.locator("[name=port_pattern]").fill("80-abc")
    form.locator("button[type=submit]").click()
    error = form.locator(".form-error")
    expect(error).to_contain_text("container_pattern is required")
    expect(error).to_contain_text("destination_pattern: whitespace is not allowed")
    expect(error).to_contain_text("port_pattern: '80-abc' is not a port or range")
    for name in ("container_pattern", "destination_pattern", "port_pattern"):
        expect(form.locator(f"[name={name}]")).to_have_attribute("aria-invalid", "true")
    dash.shot(f"rules-form-errors-{viewport_name}")
    assert rules(gp) == []

    # Fixed one by one, the list shrinks; when all are fixed the rule is saved.
    form.locator("[name=container_pattern]").fill("agent1")
    form.locator("button[type=submit]").click()
    expect(error).not_to_contain_text("container_pattern")
    expect(form.locator("[name=container_pattern]")).not_to_have_attribute("aria-invalid", "true")
    form.locator("[name=destination_pattern]").fill("good.example")
    form.locator("[name=port_pattern]").fill("443")
    form.locator("button[type=submit]").click()
    expect(form).to_be_hidden()
    assert [(r["container_pattern"], r["destination_pattern"], r["port_pattern"]) for r in rules(gp)] == [
        ("agent1", "good.example", "443")]
    assert dash.errors == []
