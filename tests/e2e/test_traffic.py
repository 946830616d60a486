"""Issue 17 item 5: traffic search, sortable columns, sizes and timings, deep links (transaction,
filters, conversation) in the URL, HAR export of everything filtered, links to the connection and
the rule."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.pendingutil import VIEWPORTS
from tests.integration.netutil import curl


@pytest.fixture
def traffic_gp(gp, origin):
    rule = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": origin.host,
                                              "port_pattern": str(origin.port)}).json()
    for n in range(60):  # more than one page (50)
        path = f"/alpha{n}" if n % 3 == 0 else f"/beta{n}"
        proc = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null",
                    f"http://{origin.host}:{origin.port}{path}", timeout=10)
        proc.communicate(timeout=15)
    for text in ("payload with needle-one inside", "another payload"):
        proc = curl("-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", "--data", text,
                    f"http://{origin.host}:{origin.port}/upload", timeout=10)
        proc.communicate(timeout=15)
    if gp.api("GET", "/api/transactions").status_code == 404:
        pytest.skip("no transactions API in this build")
    gp.rule = rule
    return gp


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_search_sort_deep_link_and_har_of_the_filter(traffic_gp, origin, dashboards, viewport_name):
    gp = traffic_gp
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/activity?tab=traffic")
    page = dash.page
    rows = page.locator("#traffic-table tbody tr[data-id]")
    expect(rows).to_have_count(50)
    expect(page.locator("#traffic-summary")).to_contain_text("62 matching")

    # Search inside bodies: only the POST that carried the word.
    page.locator("#traffic-filters [name=body]").fill("needle-one")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td[data-label=Method]")).to_have_text("POST")
    expect(page.locator("#har-export")).to_have_text("Export HAR (clear the body search)")
    page.locator("#traffic-filters [name=body]").fill("")
    expect(rows).to_have_count(50)

    # Search by URL: the filter goes to the address bar.
    page.locator("#traffic-filters [name=search]").fill("alpha")
    expect(rows).to_have_count(20)
    expect(page.locator("#traffic-summary")).to_contain_text("20 matching")
    assert "t_search=alpha" in page.url
    page.locator("#traffic-filters [name=status]").select_option("4xx")
    expect(rows).to_have_count(0)
    page.locator("#traffic-filters [name=status]").select_option("2xx")
    expect(rows).to_have_count(20)

    # Sort by URL, both ways; sizes and timings are columns.
    def sort_by_url(direction: str) -> None:
        if viewport_name == "phone":  # no header row on a phone: the sort list
            page.locator("#traffic-sort").select_option(f"url:{direction}")
        else:
            page.locator("#traffic-table button.sort[data-sort=url]").click()

    sort_by_url("desc")
    urls = [u.rsplit("/", 1)[1] for u in rows.locator("td[data-label=URL]").all_inner_texts()]
    assert urls == sorted(urls, reverse=True)
    sort_by_url("asc")
    urls = [u.rsplit("/", 1)[1] for u in rows.locator("td[data-label=URL]").all_inner_texts()]
    assert urls == sorted(urls)
    assert "sort=url" in page.url and "dir=asc" in page.url
    expect(rows.first.locator("td[data-label=Size]")).to_have_text(re.compile(r"^\d+(\.\d)? (B|KB)$"))
    expect(rows.first.locator("td[data-label=Took]")).to_have_text(re.compile(r"^\d+ ms$"))

    # HAR of everything the filter selects, not only this page.
    href = page.locator("#har-export").get_attribute("href")
    assert "search=alpha" in href and "status_min=200" in href
    expect(page.locator("#har-export")).to_have_text("Export HAR (all 20 matching)")
    har = json.loads(page.request.get(gp.api_url + href).text())
    assert sorted(e["request"]["url"].rsplit("/", 1)[1] for e in har["log"]["entries"]) == sorted(urls)

    # Open one: its link, the connection and the rule that let it through.
    rows.first.click()
    detail = page.locator("#txn-detail")
    expect(detail).to_contain_text("/alpha")
    txn = re.search(r"txn=(\d+)", page.url).group(1)
    expect(detail.locator("a.link-connection")).to_have_attribute(
        "href", f"/logs?container=agent1&destination={origin.host}")
    expect(detail.locator("a.link-rule")).to_have_attribute("href", f"/rules?rule={gp.rule['id']}")
    dash.shot(f"activity-traffic-{viewport_name}")
    deep = page.url

    # The deep link reopens the same view in a fresh tab: filters, sort and the open transaction.
    other = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login()
    other.page.goto(deep)
    expect(other.page.locator("#traffic-filters [name=search]")).to_have_value("alpha")
    expect(other.page.locator("#traffic-table tbody tr[data-id]")).to_have_count(20)
    expect(other.page.locator("#txn-detail")).to_be_visible()
    expect(other.page.locator(f'#traffic-table tbody tr[data-id="{txn}"]')).to_have_class(re.compile("is-selected"))

    # The rule link lands on that rule, marked.
    detail.locator("a.link-rule").click()
    expect(page.locator(f'#rules-table tbody tr[data-id="{gp.rule["id"]}"]')).to_have_class(re.compile("is-selected"))
    assert dash.errors == [] and other.errors == []


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_conversation_deep_link(gp, dashboards, viewport_name):
    from tests.integration.llmutil import HOST as LLM_HOST
    from tests.integration.llmutil import agent_session, chat_server

    assert gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": LLM_HOST}
                  ).status_code == 201
    with chat_server() as llm:
        agent_session(gp, llm)
        assert gp.wait_for(lambda: (lambda c: c and c[0]["turn_count"] == 2)(
            gp.api("GET", "/api/conversations").json()["items"]), timeout=10)
    dash = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login("/conversations")
    page = dash.page
    page.locator("#conv-list .conv-item").click()
    expect(page.locator("#conv-detail .turn")).to_have_count(2)
    conv_id = gp.api("GET", "/api/conversations").json()["items"][0]["id"]
    assert f"id={conv_id}" in page.url.replace("%3A", ":")
    box = page.locator("#conv-detail").bounding_box()
    assert 0 <= box["y"] < VIEWPORTS[viewport_name]["height"] * 0.5  # opened where the user is

    other = dashboards(gp, viewport=VIEWPORTS[viewport_name]).login()
    other.page.goto(page.url)
    expect(other.page.locator("#conv-detail .turn")).to_have_count(2)
    expect(other.page.locator("#conv-detail")).to_contain_text("There are two files.")
    assert dash.errors == [] and other.errors == []
