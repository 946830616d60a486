"""Runtime settings (§16): `GET/PUT /api/settings`, persisted to `<data_dir>/settings.json`.

The file holds only the keys a user changed, with greyproxy's flat on-disk names
(`theme`, `notificationsEnabled`, `mitmEnabled`); the API speaks the nested shape.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from flask import Blueprint

from greyproxy.api.context import claims, settings_store
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_field, choice, json_object, no_unknown_keys, str_field
from greyproxy.config import Config
from greyproxy.events import Bus

log = logging.getLogger("greyproxy.api")
bp = Blueprint("settings", __name__)

THEMES = ("system", "light", "dark")
SETTINGS_FILE = "settings.json"


class SettingsStore:
    def __init__(self, path: Path, defaults: dict[str, Any], bus: Bus) -> None:
        self.path = path
        self.defaults = defaults
        self.bus = bus
        self.stored = self._load()

    @classmethod
    def for_config(cls, config: Config, bus: Bus) -> SettingsStore:
        defaults = {
            "theme": "system",
            "notificationsEnabled": bool(config.raw.get("notifications", {}).get("enabled", True)),
            "mitmEnabled": config.mitm_enabled,
        }
        return cls(config.data_dir / SETTINGS_FILE, defaults, bus)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # A broken file must not stop the proxy; the defaults apply until the next PUT rewrites it.
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        return {k: v for k, v in data.items() if k in self.defaults} if isinstance(data, dict) else {}

    def values(self) -> dict[str, Any]:
        return {**self.defaults, **self.stored}

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        if changes:
            self.stored.update(changes)
            self._save()
            self.bus.publish("settings.changed", settings_to_json(self.values(), None))
        return self.values()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.stored, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)


def settings_to_json(values: dict[str, Any], active_claims: int | None) -> dict[str, Any]:
    notifications: dict[str, Any] = {
        "enabled": values["notificationsEnabled"],
        "available": False,  # no desktop notifier backend yet
        "backend": "none",
        "supportsActions": False,
    }
    if active_claims is not None:
        notifications["activeClaims"] = active_claims
    return {
        "theme": values["theme"],
        "notifications": notifications,
        "mitm": {"enabled": values["mitmEnabled"]},
    }


def _section_flag(body: dict[str, Any], section: str) -> bool | None:
    """`{"<section>": {"enabled": bool}}` → the bool (None when the section is absent)."""
    value = body.get(section)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"'{section}' must be an object like {{\"enabled\": true}}")
    no_unknown_keys(value, ("enabled",))
    return bool_field(value, "enabled")


def _current() -> dict[str, Any]:
    return settings_to_json(settings_store().values(), claims().active)


@bp.get("/api/settings")
def get_settings() -> Any:
    return _current()


@bp.put("/api/settings")
def put_settings() -> Any:
    body = json_object()
    # Unknown keys are refused (greyproxy silently ignored e.g. flat `mitmEnabled`).
    no_unknown_keys(body, ("theme", "notifications", "mitm"))
    changes: dict[str, Any] = {}
    theme = choice(str_field(body, "theme"), "theme", THEMES)
    if theme is not None:
        changes["theme"] = theme
    for section, key in (("notifications", "notificationsEnabled"), ("mitm", "mitmEnabled")):
        flag = _section_flag(body, section)
        if flag is not None:
            changes[key] = flag
    settings_store().update(changes)
    return _current()
