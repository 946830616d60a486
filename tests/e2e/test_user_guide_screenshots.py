"""Screenshots of every dashboard page at 1440x900 and 390x844 for the user guide, from a
greyproxy with rules, allowed and blocked traffic, captured HTTP and requests waiting.

They go to test-artifacts/screenshots/guide/; with GREYPROXY_SCREENSHOTS=docs they replace the
committed ones in docs/screenshots/ (run that after a visible change to the dashboard)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import SCREENSHOTS
from tests.e2e.pendingutil import HOLD, held, kill_all, wait_pending
from tests.integration.netutil import curl

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SIZES = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
# (file name, path, what must be on screen before the picture)
SHOTS = [
    ("dashboard", "/dashboard", "#recent li .badge"),
    ("pending", "/pending", ".pending-card"),
    ("pending-grouped", "/pending?view=grouped", ".pending-group"),
    ("rules", "/rules", "#rules-table td[data-label=Hits]"),
    ("logs", "/logs", "#log-table tbody tr[data-id]"),
    ("activity", "/activity", "#activity-table tbody tr[data-id]"),
    ("activity-traffic", "/activity?tab=traffic", "#traffic-table tbody tr[data-id]"),
    ("conversations", "/conversations", "#conv-empty:not([hidden]), #conv-list li"),
    ("sessions", "/sessions", "#sessions-empty:not([hidden]), #sessions-table tbody tr"),
    ("credentials", "/credentials", "#creds-empty:not([hidden]), #creds-table tbody tr"),
    ("audit", "/audit", "#audit-table tbody tr[data-id]"),
    ("settings", "/settings", "#silent-status:not(:text('…'))"),
]


def through(gp, user: str, url: str) -> None:
    proc = curl("-x", f"http://{user}:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", url, timeout=10)
    proc.communicate(timeout=15)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_user_guide_screenshots(gp_factory, origin, dashboards, size):
    out = DOCS if os.environ.get("GREYPROXY_SCREENSHOTS") == "docs" else SCREENSHOTS / "guide"
    out.mkdir(parents=True, exist_ok=True)
    gp = gp_factory(hold_seconds=HOLD)
    for rule in (
        {"container_pattern": "agent1", "destination_pattern": origin.host, "port_pattern": str(origin.port),
         "notes": "the test origin"},
        {"container_pattern": "*", "destination_pattern": "*.tracker.example", "action": "deny", "notes": "ads"},
        {"container_pattern": "agent*", "destination_pattern": "api.github.com", "port_pattern": "443",
         "rule_type": "temporary", "expires_in_seconds": 7200},
    ):
        assert gp.api("POST", "/api/rules", json=rule).status_code == 201
    for n in range(6):
        through(gp, "agent1", f"http://{origin.host}:{origin.port}/v1/items/{n}")
    for n in range(4):
        through(gp, "agent2", f"http://ads{n}.tracker.example/")
    procs = [held(gp, "http://api.openai.example:443/", user="agent1"), held(gp, "http://cdn.openai.example:443/"),
             held(gp, "http://registry.npmjs.example:443/", user="build-7")]
    try:
        wait_pending(gp, 3)
        dash = dashboards(gp, viewport=SIZES[size]).login()
        for name, path, ready in SHOTS:
            dash.goto(path)
            expect(dash.page.locator(ready).first).to_be_visible()
            dash.page.wait_for_timeout(300)  # the lists and the live dot settle
            dash.page.screenshot(path=str(out / f"{name}-{size}.png"))
        assert dash.errors == []
    finally:
        kill_all(procs)
