"""Per-container modes (docs/decisions.md#decisions-on-the-connection-path): `GET/POST /api/container-modes`, `DELETE /api/container-modes/:id`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.parse import choice, json_object, path_id, str_field
from greyproxy.policy.decide import MODES
from greyproxy.policy.patterns import normalize_container_pattern

bp = Blueprint("modes", __name__)


@bp.get("/api/container-modes")
def list_modes() -> Any:
    modes = runtime().modes
    # Entries from the YAML file are shown too (read-only, negative ids) so the answer to
    # "why is this container in report mode?" is visible in one place.
    from_config = [
        {
            "id": e.id,
            "container_pattern": e.container_pattern,
            "mode": e.mode,
            "created_at": None,
            "source": "config",
        }
        for e in modes.from_config
    ]
    stored = [{**item, "source": "api"} for item in modes.list()]
    return {"items": from_config + stored, "total": len(from_config) + len(stored)}


@bp.post("/api/container-modes")
def set_mode() -> Any:
    body = json_object()
    pattern = normalize_container_pattern(str_field(body, "container_pattern", required=True))
    mode = choice(str_field(body, "mode", required=True), "mode", MODES)
    return {**runtime().modes.set(pattern, mode), "source": "api"}, 201


@bp.delete("/api/container-modes/<mode_id>")
def delete_mode(mode_id: str) -> Any:
    runtime().modes.delete(path_id(mode_id))
    return {"status": "ok", "deleted": True}
