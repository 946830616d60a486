"""Issue 17 item 7: the Rules page. Hit counts, sorting, search, export and import, the rule
tester, the dashboard's "Rule…" button never pre-filling "every container", and the provenance
shown for a rule made in the browser matching the audit log's actor."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import VIEWPORTS
from tests.integration.netutil import curl


def through(gp, user: str, url: str) -> str:
    proc = curl("-x", f"http://{user}:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", "-w", "%{http_code}", url,
                timeout=10)
    out, _ = proc.communicate(timeout=15)
    return out.decode()


@pytest.fixture
def ruled_gp(gp, origin):
    made = {}
    for key, rule in (
        ("origin", {"container_pattern": "agent1", "destination_pattern": origin.host, "port_pattern": str(origin.port)}),
        ("tracker", {"container_pattern": "*", "destination_pattern": "*.tracker.example", "action": "deny"}),
        ("quiet", {"container_pattern": "agent1", "destination_pattern": "quiet.example", "notes": "never used"}),
    ):
        made[key] = gp.api("POST", "/api/rules", json=rule).json()
    for n in range(3):
        assert through(gp, "agent1", f"http://{origin.host}:{origin.port}/{n}") == "200"
    assert through(gp, "agent1", "http://ads.tracker.example/") == "403"
    assert through(gp, "agent2", "http://ads.tracker.example/") == "403"
    gp.made = made
    return gp


def row_of(page, rule_id: int):
    return page.locator(f'#rules-table tbody tr[data-id="{rule_id}"]')


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_hits_sort_search_and_tester(ruled_gp, dashboards, viewport_name):
    gp, made = ruled_gp, ruled_gp.made
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/rules")
    page = dash.page
    expect(row_of(page, made["origin"]["id"]).locator("td[data-label=Hits]")).to_have_text("3")
    expect(row_of(page, made["tracker"]["id"]).locator("td[data-label=Hits]")).to_have_text("2")
    expect(row_of(page, made["quiet"]["id"]).locator("td[data-label=Hits]")).to_have_text("0")

    if viewport_name == "phone":
        page.locator("#rules-sort").select_option("hits:desc")
    else:
        page.locator("#rules-table button.sort[data-sort=hits]").click()
    expect(page.locator("#rules-table tbody tr[data-id]").first).to_have_attribute("data-id", str(made["origin"]["id"]))
    assert "sort=hits" in page.url

    page.locator("#rule-filters [name=search]").fill("tracker")
    expect(page.locator("#rules-table tbody tr[data-id]")).to_have_count(1)
    expect(page.locator("#rules-table tbody tr[data-id]")).to_have_attribute("data-id", str(made["tracker"]["id"]))
    page.locator("#rule-filters [name=search]").fill("never used")  # notes are searched too
    expect(page.locator("#rules-table tbody tr[data-id]")).to_have_attribute("data-id", str(made["quiet"]["id"]))
    page.locator("#rule-filters [name=search]").fill("")

    # The tester: which rule decides, and why.
    page.locator("#tester-toggle").click()
    form = page.locator("#tester-form")
    form.locator("[name=container]").fill("agent2")
    form.locator("[name=destination]").fill("cdn.tracker.example")
    form.locator("[name=port]").fill("443")
    form.locator("button[type=submit]").click()
    result = page.locator("#tester-result")
    expected = gp.api("POST", "/api/rules/test", json={"container": "agent2", "destination": "cdn.tracker.example",
                                                       "port": 443}).json()
    assert expected["decision"] == "deny" and expected["rule"]["id"] == made["tracker"]["id"]
    expect(result).to_contain_text("agent2 → cdn.tracker.example:443 is denied")
    expect(result.locator("a")).to_have_attribute("href", f"/rules?rule={made['tracker']['id']}")
    dash.shot(f"rules-tester-{viewport_name}")
    form.locator("[name=destination]").fill("unknown.example")
    form.locator("button[type=submit]").click()
    expect(result).to_contain_text("is held for a decision")
    form.locator("[name=port]").fill("70000")
    form.locator("button[type=submit]").click()
    expect(form.locator(".form-error")).to_contain_text("port")
    assert dash.errors == []


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_export_import_prefill_and_provenance(ruled_gp, dashboards, tmp_path, viewport_name):
    gp, made = ruled_gp, ruled_gp.made
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/rules")
    page = dash.page
    expect(row_of(page, made["quiet"]["id"])).to_be_visible()

    with page.expect_download() as download:
        page.locator("#rules-export").click()
    exported = json.loads(download.value.path().read_text())
    assert {(r["container_pattern"], r["destination_pattern"], r["action"]) for r in exported} == {
        ("agent1", made["origin"]["destination_pattern"], "allow"), ("*", "*.tracker.example", "deny"),
        ("agent1", "quiet.example", "allow")}

    # Import: a bad file changes nothing and says which item; a good one imports the new rule only.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"container_pattern": "agent1", "destination_pattern": "ok.example"},
                               {"container_pattern": "agent1", "destination_pattern": "x.example", "port_pattern": "99999"}]))
    before = gp.api("GET", "/api/rules", params={"limit": 1000}).json()["total"]
    page.locator("#rules-import").set_input_files(str(bad))
    expect(page.locator("#import-result")).to_contain_text("Nothing was imported from bad.json: item 1")
    assert gp.api("GET", "/api/rules", params={"limit": 1000}).json()["total"] == before
    good = tmp_path / "good.json"
    good.write_text(json.dumps([*exported, {"container_pattern": "agent3", "destination_pattern": "new.example"}]))
    page.locator("#rules-import").set_input_files(str(good))
    expect(page.locator("#import-result")).to_contain_text("Imported 1 rule from good.json (3 already there)")
    expect(page.locator("#rules-table td[data-label=Destination]", has_text="new.example")).to_have_count(1)

    # "Rule…" on a host blocked for two containers: the form does not pre-fill every container.
    dash.goto("/dashboard")
    link = page.locator("#top-blocked a", has_text="Rule…").first
    expect(link).to_be_visible()
    link.click()
    form = page.locator("#rule-form")
    expect(form).to_be_visible()
    expect(form.locator("[name=destination_pattern]")).to_have_value("ads.tracker.example")
    expect(form.locator("[name=container_pattern]")).to_have_value("")
    expect(page.locator("#prefill-hint")).to_contain_text("Blocked for: agent1, agent2")

    # Made here, its source is the audit log's actor for this browser.
    form.locator("[name=container_pattern]").fill("agent2")
    form.locator("button[type=submit]").click()
    row = page.locator("#rules-table tbody tr", has=page.locator("td[data-label=Container]", has_text="agent2"))
    expect(row.locator("td[data-label=Source]")).to_have_text("dashboard")
    rule_id = int(row.get_attribute("data-id"))
    audit = gp.api("GET", "/api/audit", params={"limit": 50}).json()["items"]
    actors = {e["actor"] for e in audit if e["kind"] == "rule.create" and str(rule_id) in str(e["target"])}
    assert actors == {"dashboard"}
    # One made over the API with the token says "token", as its audit entry does (not created_by "admin").
    quiet = gp.api("GET", "/api/audit", params={"limit": 200}).json()["items"]
    quiet_actor = next(e["actor"] for e in quiet if e["kind"] == "rule.create" and e["target"] == f"rule:{made['quiet']['id']}")
    page.locator("#rule-filters [name=search]").fill("quiet.example")
    expect(row_of(page, made["quiet"]["id"]).locator("td[data-label=Source]")).to_have_text(quiet_actor)
    assert quiet_actor == "token"
    assert dash.errors == []


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_switch_a_rule_off_and_on(gp_factory, origin, dashboards, viewport_name):
    gp = gp_factory(hold_seconds=2)
    rule = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port)}).json()
    assert rule["enabled"] is True
    assert through(gp, "agent1", f"http://{origin.host}:{origin.port}/on") == "200"
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/rules")
    page = dash.page
    toggle = row_of(page, rule["id"]).locator(".enabled-toggle")
    expect(toggle).to_be_checked()

    toggle.uncheck()
    expect(row_of(page, rule["id"])).to_have_class(re.compile(r"\bis-disabled\b"))
    assert gp.api("GET", f"/api/rules/{rule['id']}").json()["enabled"] is False
    # Off: the rule decides nothing, so the request is held (then refused): the origin sees nothing.
    assert through(gp, "agent1", f"http://{origin.host}:{origin.port}/off") == "403"
    assert [r["path"] for r in origin.requests] == ["/on"]
    dash.shot(f"rules-disabled-{viewport_name}")

    row_of(page, rule["id"]).locator(".enabled-toggle").check()
    expect(row_of(page, rule["id"])).not_to_have_class(re.compile(r"\bis-disabled\b"))
    assert through(gp, "agent1", f"http://{origin.host}:{origin.port}/again") == "200"
    assert [r["path"] for r in origin.requests] == ["/on", "/again"]
    audit = gp.api("GET", "/api/audit", params={"limit": 20}).json()["items"]
    assert [e["actor"] for e in audit if e["kind"] == "rule.update"] == ["dashboard", "dashboard"]

    # Making the same rule again while it is off (a pending Allow, a POST, an import) makes an
    # active one in its place, rather than handing back the switched-off row.
    row_of(page, rule["id"]).locator(".enabled-toggle").uncheck()
    expect(row_of(page, rule["id"])).to_have_class(re.compile(r"\bis-disabled\b"))
    again = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                               "port_pattern": str(origin.port)}).json()
    assert again["enabled"] is True and again["id"] != rule["id"]
    assert gp.api("GET", f"/api/rules/{rule['id']}").status_code == 404
    expect(row_of(page, again["id"]).locator(".enabled-toggle")).to_be_checked()
    assert through(gp, "agent1", f"http://{origin.host}:{origin.port}/third") == "200"
    assert dash.errors == []
