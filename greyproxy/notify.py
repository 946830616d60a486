"""Desktop notifications: tell the person at the machine that a connection is waiting.

Runs `notify-send` (when it is on PATH) for `pending_request.created`, and again for
`pending_request.updated` (the agent tried again) once the last notification for that
destination is COOLDOWN_SECONDS old. Quiet while notifications are disabled in the settings and
while any /ws client holds a claim: a companion app that claimed them shows its own prompt.

With notify-send ≥ 0.8 the notification has an "Open Dashboard" action (the helper waits for
the click, then `xdg-open`s the pending page) and is closed once the request is decided. Older
versions are fire-and-forget. Every helper runs in its own greenlet with a time limit, so a
stuck notification daemon can never hold up the bus or the proxy.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import subprocess

from greyproxy.events import Bus, Event, Subscription

log = logging.getLogger("greyproxy.notify")

TITLE = "GreyProxy"
COOLDOWN_SECONDS = 30.0
EXPIRE_MS = 30_000  # the notification disappears with the hold it announces
HELPER_TIMEOUT = 35.0  # a helper still running after this is killed
PROBE_TIMEOUT = 3.0
EVENTS = (
    "pending_request.created",
    "pending_request.updated",
    "pending_request.allowed",
    "pending_request.dismissed",
    "notification.claims_changed",
)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

Key = tuple[str, str, int]


def message(item: dict[str, Any]) -> str:
    host = item.get("resolved_hostname") or item["destination_host"]
    return f"{item['container_name']} wants to connect to {host}:{item['destination_port']}"


def _markup_safe(text: str) -> str:
    # Most notification daemons render the body as Pango markup; names come from agents, so a
    # container called "<b>…" must show as typed, not as markup (or break the notification).
    text = _CONTROL_CHARS.sub(" ", text)[:300]
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pending_link(dashboard_url: Callable[[], str]) -> Callable[[int], str]:
    """The pending page's URL for one request, from the dashboard URL of the moment (its port is
    known once the API listens)."""
    def link(pending_id: int) -> str:
        # The URL without the token: a process list is readable by every local user.
        base = dashboard_url().split("?", 1)[0].rsplit("/dashboard", 1)[0]
        return f"{base}/pending?highlight={pending_id}"

    return link


def _supports_actions(version_output: str) -> bool:
    """`notify-send 0.8.3` → True: actions and --wait arrived in libnotify 0.8."""
    found = re.search(r"(\d+)\.(\d+)", version_output)
    return found is not None and (int(found[1]), int(found[2])) >= (0, 8)


class DesktopNotifier:
    def __init__(
        self,
        bus: Bus,
        enabled: Callable[[], bool],
        link: Callable[[int], str],
        command: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.enabled = enabled  # read at each event, so a settings change applies at once
        self.link = link
        self.command = command
        self.clock = clock
        self.active_claims = 0
        self.supports_actions = False
        self._last: dict[Key, float] = {}
        self._helpers: dict[int, Any] = {}  # pending id -> helper process waiting for a click
        self._sub: Subscription | None = None
        self._greenlet: gevent.Greenlet | None = None

    def status(self) -> dict[str, Any]:
        """The `notifications` backend fields of GET /api/settings."""
        available = (self.command or shutil.which("notify-send")) is not None
        status: dict[str, Any] = {
            "available": available,
            "backend": "notify-send" if available else "none",
            "supportsActions": self.supports_actions,
        }
        if not available:
            status["installHint"] = "install libnotify-bin (Debian/Ubuntu) or libnotify (Fedora/Arch)"
        return status

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.command = self.command or shutil.which("notify-send")
        if self.command is None:
            log.info("notify-send not found: desktop notifications are off (the dashboard still notifies)")
            return
        self._sub = self.bus.subscribe(128, types=EVENTS)
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self._sub is not None:
            self._sub.close()
        for pending_id in list(self._helpers):
            self._close(pending_id)

    def _run(self) -> None:
        self.supports_actions = self._probe()
        assert self._sub is not None
        while True:
            event = self._sub.get()
            if event is None:
                continue
            try:
                self.handle(event)
            except Exception:  # one bad event must not end notifications for the whole run
                log.exception("desktop notifier failed on %s", event.get("type"))

    def _probe(self) -> bool:
        try:
            out = subprocess.run(
                [self.command, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return _supports_actions(out.stdout + out.stderr)

    # -- events ------------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        kind, data = event["type"], event["data"]
        if kind == "notification.claims_changed":
            self.active_claims = int(data.get("active_claims", 0))
        elif kind == "pending_request.created":
            self._notify(data, cooldown=False)
        elif kind == "pending_request.updated":
            self._notify(data, cooldown=True)
        elif isinstance(data, dict) and isinstance(data.get("pending_id"), int):
            self._close(data["pending_id"])  # allowed, denied or dismissed: the prompt is stale

    def _notify(self, item: dict[str, Any], cooldown: bool) -> None:
        if self.active_claims > 0 or not self.enabled():
            return
        host = item.get("resolved_hostname") or item["destination_host"]
        key = (item["container_name"], host, int(item["destination_port"]))
        now = self.clock()
        last = self._last.get(key)
        if cooldown and last is not None and now - last < COOLDOWN_SECONDS:
            return
        self._last[key] = now
        gevent.spawn(self._show, int(item["id"]), _markup_safe(message(item)))

    # -- the helper process ------------------------------------------------------------------
    def _show(self, pending_id: int, body: str) -> None:
        assert self.command is not None
        args = [self.command, f"--app-name={TITLE}", f"--expire-time={EXPIRE_MS}"]
        if self.supports_actions:
            args += ["--action=default=Open Dashboard", "--wait"]
        args += [TITLE, body]
        try:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            log.warning("notify-send failed to start: %s", exc)
            return
        if self.supports_actions:
            self._close(pending_id)  # one live prompt per request
            self._helpers[pending_id] = proc
        try:
            out, _ = proc.communicate(timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out = ""
        finally:
            if self._helpers.get(pending_id) is proc:
                del self._helpers[pending_id]
        if proc.returncode not in (0, -signal.SIGINT):
            log.debug("notify-send exited with %s", proc.returncode)
        if self.supports_actions and out.strip() == "default":
            self._open(self.link(pending_id))

    def _open(self, url: str) -> None:
        opener = shutil.which("xdg-open")
        if opener is None:
            return
        try:
            subprocess.Popen([opener, url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.warning("xdg-open failed: %s", exc)

    def _close(self, pending_id: int) -> None:
        proc = self._helpers.pop(pending_id, None)
        if proc is not None and proc.poll() is None:
            # notify-send --wait closes its notification when interrupted.
            proc.send_signal(signal.SIGINT)
