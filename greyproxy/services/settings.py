"""Runtime settings (docs/configuration.md), persisted to `<data_dir>/settings.json`.

The file holds only the keys a user changed, with greyproxy's flat on-disk names (`theme`,
`notificationsEnabled`, `mitmEnabled`, `conversationsEnabled`, `redactedHeaders`, plus our
`mitmBypass`); the API
speaks the nested shape. The runtime owns the store because the proxy acts on it (MITM
toggle, bypass list, redaction patterns): listeners registered with `on_change` apply a
change at once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greyproxy.capture.redact import DEFAULT_REDACTED_HEADERS
from greyproxy.config import Config
from greyproxy.events import Bus

log = logging.getLogger("greyproxy.settings")

SETTINGS_FILE = "settings.json"


class SettingsStore:
    def __init__(self, path: Path, defaults: dict[str, Any], bus: Bus) -> None:
        self.path = path
        self.defaults = defaults
        self.bus = bus
        self.stored = self._load()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        # False in a worker process (docs/workers.md): it follows the control plane's file.
        self.persist = True
        # Set by the runtime: the CA part of `mitm` in the JSON shape (needs the MITM state).
        self.cert_info: Callable[[], dict[str, Any]] | None = None
        # Set by the runtime: the desktop notifier's backend fields of `notifications`.
        self.notifier_info: Callable[[], dict[str, Any]] | None = None

    @classmethod
    def for_config(cls, config: Config, bus: Bus) -> SettingsStore:
        defaults = {
            "theme": "system",
            "notificationsEnabled": bool(config.raw.get("notifications", {}).get("enabled", True)),
            "mitmEnabled": config.mitm_enabled,
            "mitmBypass": [str(p) for p in (config.raw.get("mitm", {}).get("bypass") or [])],
            "conversationsEnabled": True,
            "redactedHeaders": [],  # custom patterns only; the defaults always apply
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
        if not isinstance(data, dict):
            return {}
        out = {}
        for key, value in data.items():
            default = self.defaults.get(key)
            # A hand-edited value of the wrong type is ignored rather than crashing a reader later.
            if key in self.defaults and type(value) is type(default):
                if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                    continue
                out[key] = value
        return out

    def values(self) -> dict[str, Any]:
        return {**self.defaults, **self.stored}

    def on_change(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        if changes:
            self.stored.update(changes)
            if self.persist:
                self._save()
            values = self.values()
            for listener in list(self._listeners):
                listener(values)
            self.bus.publish("settings.changed", self.to_json(None))
        return self.values()

    def to_json(self, active_claims: int | None) -> dict[str, Any]:
        return settings_to_json(self.values(), active_claims, self.cert_info() if self.cert_info else None,
                                self.notifier_info() if self.notifier_info else None)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.stored, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)


def redacted_header_list(values: dict[str, Any]) -> list[str]:
    """What GET shows: the built-in patterns, then the custom ones."""
    return [*DEFAULT_REDACTED_HEADERS, *values.get("redactedHeaders", [])]


def settings_to_json(values: dict[str, Any], active_claims: int | None,
                     cert: dict[str, Any] | None = None, notifier: dict[str, Any] | None = None) -> dict[str, Any]:
    notifications: dict[str, Any] = {
        "enabled": values["notificationsEnabled"],
        "available": False,
        "backend": "none",
        "supportsActions": False,
        **(notifier or {}),
    }
    if active_claims is not None:
        notifications["activeClaims"] = active_claims
    mitm: dict[str, Any] = {"enabled": values["mitmEnabled"], "bypass": list(values.get("mitmBypass", []))}
    if cert is not None:
        mitm["certGenerated"] = cert["generated"]
        if cert.get("expiresAt"):
            mitm["certExpiry"] = cert["expiresAt"][:10]  # YYYY-MM-DD, as greyproxy's settings show it
        mitm["certPath"] = cert["certPath"]
        mitm["installed"] = cert["installed"]
    return {
        "theme": values["theme"],
        "notifications": notifications,
        "mitm": mitm,
        "conversations": {"enabled": values.get("conversationsEnabled", True)},
        "redactedHeaders": redacted_header_list(values),
    }
