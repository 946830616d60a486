"""Notification claims (the `/ws` command `claim_notifications`) and `GET/PUT /api/notifications`.

A companion app that shows its own prompts claims notifications over /ws; while any claim is
held the desktop notifier stays quiet. Claims are counted, not owned, and released when the
claiming socket closes.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import claims, settings_store
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_field, json_object, no_unknown_keys
from greyproxy.events import Bus

bp = Blueprint("notifications", __name__)


class NotificationClaims:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.active = 0

    def acquire(self) -> int:
        self.active += 1
        self._changed()
        return self.active

    def release(self) -> int:
        self.active = max(0, self.active - 1)
        self._changed()
        return self.active

    def _changed(self) -> None:
        self.bus.publish("notification.claims_changed", {"active_claims": self.active})


NO_BACKEND = ("no desktop notification backend: notify-send was not found (install libnotify-bin); "
              "only an open dashboard can notify")


def backend() -> dict[str, Any]:
    """The notifier's backend fields ({available, backend, ...}); none known = none available."""
    info = settings_store().notifier_info
    return info() if info is not None else {"available": False, "backend": "none"}


def _status() -> dict[str, Any]:
    return {"enabled": settings_store().values()["notificationsEnabled"], "active_claims": claims().active}


@bp.get("/api/notifications")
def get_notifications() -> Any:
    return _status()


@bp.put("/api/notifications")
def put_notifications() -> Any:
    body = json_object()
    no_unknown_keys(body, ("enabled",))
    enabled = bool_field(body, "enabled")
    if enabled is None:
        raise ApiError(400, "'enabled' is required")
    if enabled and not backend()["available"]:
        # Success would claim desktop notifications that nothing can show (the reference: cannot
        # enable without a backend). The dashboard's own switch is PUT /api/settings.
        raise ApiError(409, NO_BACKEND)
    settings_store().update({"notificationsEnabled": enabled})
    return {"enabled": settings_store().values()["notificationsEnabled"]}
