"""Silent mode (docs/user-guide.md#rules-pending-requests-and-holds): a global allow-all or deny-all for a while, in memory only."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import gevent

from greyproxy.events import Bus
from greyproxy.timeutil import iso


class SilentMode:
    def __init__(self, bus: Bus, on_change: Callable[[], None]) -> None:
        self.bus = bus
        self.on_change = on_change
        self.mode: str | None = None
        self.expires_at: float | None = None  # epoch seconds; None = until restart
        self._timer: gevent.Greenlet | None = None

    def status(self) -> dict[str, Any]:
        if self.mode is None:
            return {"active": False}
        out: dict[str, Any] = {"active": True, "mode": self.mode}
        if self.expires_at is not None:
            remaining = max(0, int(self.expires_at - time.time() + 0.999))
            out["expires_at"] = iso(dt.datetime.fromtimestamp(self.expires_at, dt.UTC))
            out["remaining_seconds"] = remaining
        return out

    def enable(self, mode: str, seconds: int | None) -> dict[str, Any]:
        self._cancel_timer()
        self.mode = mode
        self.expires_at = time.time() + seconds if seconds else None
        if seconds:
            self._timer = gevent.spawn_later(seconds, self.disable)
        return self._changed()

    def disable(self) -> dict[str, Any]:
        self._cancel_timer()
        self.mode = None
        self.expires_at = None
        return self._changed()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer is not gevent.getcurrent():
            self._timer.kill(block=False)
        self._timer = None

    def _changed(self) -> dict[str, Any]:
        self.on_change()
        status = self.status()
        self.bus.publish("allowall.changed", status)
        return status
