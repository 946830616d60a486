"""Silent mode (docs/user-guide.md#rules-pending-requests-and-holds): `GET/POST/DELETE /api/allowall`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.parse import choice, json_object, str_field
from greyproxy.policy.durations import silent_mode_duration

bp = Blueprint("allowall", __name__)

MODES = ("allow", "deny")


@bp.get("/api/allowall")
def status() -> Any:
    return runtime().silent.status()


@bp.post("/api/allowall")
def enable() -> Any:
    body = json_object()
    mode = choice(str_field(body, "mode", required=True), "mode", MODES)
    # Go duration up to 8h, or "restart" (= until the process stops); DurationError is a 400.
    seconds = silent_mode_duration(str_field(body, "duration", required=True))
    return runtime().silent.enable(mode, seconds)


@bp.delete("/api/allowall")
def disable() -> Any:
    return runtime().silent.disable()
