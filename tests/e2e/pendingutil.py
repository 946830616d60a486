"""Helpers for the Pending page tests: held curls and finding cards."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.e2e.conftest import DESKTOP, PHONE
from tests.integration.netutil import curl

HOLD = 30.0  # long enough that only a click ends a held request inside these tests
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}


def held(gp: Any, url: str, user: str = "agent1") -> subprocess.Popen:
    """curl through the HTTP proxy as `user`; it waits, held, until someone decides."""
    return curl("-x", f"http://{user}:x@127.0.0.1:{gp.ports['http']}", "-o", "/dev/null", "-w", "%{http_code}", url,
                timeout=int(HOLD) + 10)


def status(proc: subprocess.Popen, timeout: float = 10) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out.decode()


def wait_pending(gp: Any, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = gp.api("GET", "/api/pending", params={"limit": 1000}).json()["items"]
        return len(found) >= count

    assert gp.wait_for(ready, timeout=15), f"{len(found)} of {count} requests pending"
    return found


def card(page: Any, host: str, port: int, container: str | None = None) -> Any:
    loc = page.locator(".pending-card", has=page.locator(".dest-host", has_text=host)).filter(
        has=page.locator(".dest-port", has_text=f":{port}"))
    if container:
        loc = loc.filter(has=page.locator(".chip-container", has_text=container))
    return loc


def rules(gp: Any) -> list[dict[str, Any]]:
    """The rules a test made: all but the built-in ones every greyproxy starts with."""
    items = gp.api("GET", "/api/rules", params={"limit": 1000}).json()["items"]
    builtin = getattr(gp, "builtin_rule_ids", None)
    if builtin is None:  # first call, before the test made any
        builtin = gp.builtin_rule_ids = {r["id"] for r in items}
    return sorted((r for r in items if r["id"] not in builtin), key=lambda r: r["id"])


def kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(timeout=5)
