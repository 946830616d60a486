"""Held HTTP requests on the Pending page (docs/request-rules.md): a card appears live with the
method, URL, redacted headers and body preview; Allow once releases the waiting client; Deny
with a reason answers it 403 with that reason."""

from __future__ import annotations

import subprocess

from playwright.sync_api import expect

from tests.conftest import Origin


def _rules(gp, origin) -> None:
    for body in ({"container_pattern": "agent1", "destination_pattern": origin.host},
                 {"container_pattern": "agent1", "destination_pattern": origin.host, "action": "hold",
                  "method_pattern": "POST"}):
        assert gp.api("POST", "/api/rules", json=body).status_code == 201


def _post(gp, origin, path: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["curl", "-sS", "-i", "--noproxy", "", "--max-time", "30", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
         "-H", "Authorization: Bearer sk-do-not-show", "--data-binary", '{"delete": "everything"}',
         f"http://{origin.host}:{origin.port}{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})


def test_held_request_cards_allow_and_deny(gp_factory, dashboards):
    origin = Origin()
    try:
        gp = gp_factory(hold_seconds=25)
        _rules(gp, origin)
        dash = dashboards(gp).login("/pending")
        page = dash.page
        client = _post(gp, origin, "/v1/repos/x/delete")
        card = page.locator(".held-request")
        expect(card).to_have_count(1)
        expect(card.locator("h3")).to_contain_text(f"POST http://{origin.host}:{origin.port}/v1/repos/x/delete")
        expect(card.locator(".held-body")).to_have_text('{"delete": "everything"}')
        expect(card).not_to_contain_text("sk-do-not-show")
        dash.shot("pending-held-request")
        card.get_by_role("button", name="Allow once").click()
        out, _ = client.communicate(timeout=30)
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b'{"delete": "everything"}')
        expect(page.locator(".held-request")).to_have_count(0)

        client = _post(gp, origin, "/v1/other")
        expect(page.locator(".held-request")).to_have_count(1)
        page.get_by_label("Reason for a denial").fill("ask the owner first")
        page.locator(".held-request").get_by_role("button", name="Deny", exact=True).click()
        out, _ = client.communicate(timeout=30)
        assert out.startswith(b"HTTP/1.1 403") and b"ask the owner first" in out
        expect(page.locator("#held-requests")).to_be_hidden()
        assert [r["path"] for r in origin.requests] == ["/v1/repos/x/delete"]
        assert dash.errors == []
    finally:
        origin.close()
