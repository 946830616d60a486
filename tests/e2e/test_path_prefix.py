"""The dashboard under `api.path_prefix`: every page loads, goes live over `<prefix>/ws`, and the
browser asks for nothing outside the prefix (no 404 for a script, a stylesheet or an API call)."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Dashboard

PREFIX = "/behind/proxy"
PAGES = ["/dashboard", "/pending", "/rules", "/logs", "/activity", "/conversations", "/sessions",
         "/credentials", "/audit", "/settings"]


class PrefixedDashboard(Dashboard):
    def url(self, path: str) -> str:
        return f"{self.gp.api_url}{PREFIX}{path}"


def test_dashboard_works_under_a_prefix(browser: Any, gp_factory):
    gp = gp_factory(config_yaml=f"api: {{path_prefix: {PREFIX}}}\n")
    rule = {"container_pattern": "agent1", "destination_pattern": "under-prefix.example"}
    made = gp.session.post(f"{gp.api_url}{PREFIX}/api/rules", json=rule, timeout=10,
                           headers={"Authorization": f"Bearer {gp.token}"})
    assert made.status_code == 201, made.text
    dash = PrefixedDashboard(browser, gp)
    seen: list[tuple[int, str]] = []
    dash.page.on("response", lambda r: seen.append((r.status, r.url)))
    try:
        dash.login()
        for path in PAGES:
            dash.goto(path)
            assert dash.page.url.startswith(f"{gp.api_url}{PREFIX}{path}")
        dash.goto("/rules")
        dash.page.get_by_text("under-prefix.example").first.wait_for()
        outside = [u for _, u in seen if not u.startswith(f"{gp.api_url}{PREFIX}/")]
        failed = [(s, u) for s, u in seen if s >= 400]
        assert not outside, outside
        assert not failed, failed
        assert not dash.errors, dash.errors
    finally:
        dash.close()
