"""Desktop notifications with a stand-in `notify-send` on PATH: a real shell script that
records its arguments, run by a real greyproxy process."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import websocket

from tests.integration.netutil import socks_connect

# Answers --version like libnotify, then records one line per notification. In "wait" mode (the
# ≥ 0.8 protocol) it prints the clicked action for port 2001, else waits to be interrupted.
FAKE_NOTIFY_SEND = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "notify-send {version}"; exit 0; fi
printf '%s\\n' "$*" >> "{log}"
case "$*" in
  *--wait*:2001) echo default; exit 0 ;;
  *--wait*) trap 'echo "closed $*" >> "{log}"; exit 0' INT; while :; do sleep 0.05; done ;;
esac
"""
FAKE_XDG_OPEN = """#!/bin/sh
printf 'open %s\\n' "$1" >> "{log}"
"""


def _install(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def notified(tmp_path, monkeypatch):
    """Returns start(version) -> (gp, log path); the fakes come first on the child's PATH."""

    def start(gp_factory, version: str):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        log = tmp_path / "notify.log"
        log.touch()
        _install(bin_dir, "notify-send", FAKE_NOTIFY_SEND.format(version=version, log=log))
        _install(bin_dir, "xdg-open", FAKE_XDG_OPEN.format(log=log))
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        return gp_factory(hold_seconds=3), log

    return start


def attempt(gp, port: int) -> threading.Thread:
    """A held SOCKS5 connection to 127.0.0.2:port in the background (blocked when the hold ends)."""

    def run() -> None:
        try:
            _, sock = socks_connect(gp.ports["socks5"], "127.0.0.2", port, timeout=10)
            sock.close()
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def notified_for(log: Path, port: int) -> list[str]:
    return [line for line in lines(log) if line.endswith(f"127.0.0.2:{port}") and "wants to connect" in line]


def test_notify_send_on_new_pending_with_cooldown_claims_and_setting(gp_factory, notified):
    gp, log = notified(gp_factory, "0.7.9")

    attempt(gp, 1001)
    assert gp.wait_for(lambda: notified_for(log, 1001), timeout=10), lines(log)
    line = notified_for(log, 1001)[0]
    assert line.startswith("--app-name=GreyProxy --expire-time=30000 GreyProxy ")
    assert line.endswith("agent1 wants to connect to 127.0.0.2:1001")
    assert "--wait" not in line  # libnotify < 0.8 has no actions

    # The agent tries again within the cooldown: no second notification. A new destination is
    # the sentinel: events are handled in order, so once it shows, the retry was handled too.
    attempt(gp, 1001).join(10)
    attempt(gp, 1002)
    assert gp.wait_for(lambda: notified_for(log, 1002), timeout=10)
    assert len(notified_for(log, 1001)) == 1

    # A companion app claims notifications: quiet until its socket closes.
    ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws",
                                     header=[f"Authorization: Bearer {gp.token}"], timeout=10)
    ws.recv()  # connected
    ws.send(json.dumps({"command": "claim_notifications"}))
    while json.loads(ws.recv())["type"] != "notification_claimed":
        pass
    attempt(gp, 1003).join(10)
    ws.close()
    assert gp.wait_for(lambda: gp.api("GET", "/api/notifications").json()["active_claims"] == 0)
    attempt(gp, 1004)
    assert gp.wait_for(lambda: notified_for(log, 1004), timeout=10)
    assert notified_for(log, 1003) == []

    # Disabled in the settings: quiet; enabled again: back.
    assert gp.api("PUT", "/api/settings", json={"notifications": {"enabled": False}}).status_code == 200
    attempt(gp, 1005).join(10)
    assert gp.api("PUT", "/api/settings", json={"notifications": {"enabled": True}}).status_code == 200
    attempt(gp, 1006)
    assert gp.wait_for(lambda: notified_for(log, 1006), timeout=10)
    assert notified_for(log, 1005) == []


def test_notify_send_actions_open_dashboard_and_close_when_decided(gp_factory, notified):
    gp, log = notified(gp_factory, "0.8.3")

    # Clicked: the helper prints the action and greyproxy opens the pending page (no token in it).
    attempt(gp, 2001)
    opened = gp.wait_for(lambda: [line for line in lines(log) if line.startswith("open ")], timeout=10)
    assert opened, lines(log)
    pending_id = gp.api("GET", "/api/pending").json()["items"][0]["id"]
    assert opened[0] == f"open http://127.0.0.1:{gp.ports['api']}/pending?highlight={pending_id}"
    assert gp.token not in log.read_text()
    assert "--action=default=Open Dashboard --wait" in notified_for(log, 2001)[0]

    # Not clicked, then decided elsewhere: the notification is closed (SIGINT to the helper).
    attempt(gp, 2002)
    assert gp.wait_for(lambda: notified_for(log, 2002), timeout=10)
    item = next(i for i in gp.api("GET", "/api/pending").json()["items"] if i["destination_port"] == 2002)
    assert gp.api("POST", f"/api/pending/{item['id']}/deny", json={}).status_code == 200
    assert gp.wait_for(lambda: [line for line in lines(log) if line.startswith("closed ") and ":2002" in line],
                       timeout=10), lines(log)
