"""Issue 17 item 8: the Audit page shows readable targets, only the fields a change changed, and
a Verify button that walks the hash chain and finds a tampered entry."""

from __future__ import annotations

import re
import sqlite3

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import VIEWPORTS


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_readable_targets_changed_fields_and_verify(gp, dashboards, viewport_name):
    rule = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "*.github.com",
                                              "port_pattern": "443"}).json()
    assert gp.api("PUT", f"/api/rules/{rule['id']}", json={"port_pattern": "8443", "notes": "moved"}).status_code == 200
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/audit")
    page = dash.page
    update = page.locator("#audit-table tbody tr[data-id]", has=page.locator(".badge", has_text="rule.update"))
    expect(update).to_have_count(1)
    expect(update.locator(".audit-target")).to_have_text(f"rule #{rule['id']} allow agent1 → *.github.com:8443")
    expect(update.locator(".audit-summary")).to_contain_text("port_pattern: 443 → 8443")
    create = page.locator("#audit-table tbody tr[data-id]", has=page.locator(".badge", has_text="rule.create"))
    expect(create.locator(".audit-target")).to_have_text(f"rule #{rule['id']} allow agent1 → *.github.com:443")
    update.click()
    fields = page.locator(".detail-row .audit-fields tbody tr")
    names = sorted(fields.evaluate_all("rows => rows.map(r => r.dataset.field)"))
    assert "port_pattern" in names and "notes" in names
    assert "container_pattern" not in names and "destination_pattern" not in names  # unchanged: not shown
    expect(page.locator('.detail-row .audit-fields tr[data-field=port_pattern] td.before')).to_have_text("443")
    expect(page.locator('.detail-row .audit-fields tr[data-field=port_pattern] td.after')).to_have_text("8443")
    dash.shot(f"audit-detail-{viewport_name}")

    page.locator("#audit-verify").click()
    expect(page.locator("#verify-result")).to_have_text(re.compile(r"^Audit log intact: \d+ entries, each linked"))

    # Someone edits an entry in the database behind greyproxy's back: Verify names it.
    entry_id = int(update.get_attribute("data-id"))
    with sqlite3.connect(gp.data_dir / "greyproxy.db", timeout=10) as db:
        db.execute("UPDATE audit_log SET after = replace(after, '8443', '9999') WHERE id = ?", (entry_id,))
    page.locator("#audit-verify").click()
    expect(page.locator("#verify-result")).to_contain_text(
        f"Audit log BROKEN: entry #{entry_id} (rule.update,")
    expect(page.locator("#verify-result")).to_contain_text("was changed after it was written")
    assert dash.errors == []
