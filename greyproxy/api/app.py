"""The control-plane application: `create_app(runtime)` builds the Flask app the runtime serves.

One blueprint per resource; the request guard (auth.py) runs before every route and the error
handlers (errors.py) make every failure a JSON `{"error": ...}`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from greyproxy.api import (
    allowall,
    dashboard,
    events,
    health,
    logs,
    modes,
    notifications,
    pending,
    rules,
    settings,
    ws,
)
from greyproxy.api.auth import install_guard
from greyproxy.api.context import CLAIMS_KEY, RUNTIME_KEY, SETTINGS_KEY
from greyproxy.api.errors import register_error_handlers

if TYPE_CHECKING:
    from greyproxy.runtime import Runtime

BLUEPRINTS = (
    health.bp,
    dashboard.bp,
    pending.bp,
    rules.bp,
    logs.bp,
    allowall.bp,
    settings.bp,
    notifications.bp,
    modes.bp,
    events.bp,
    ws.bp,
)
MAX_BODY_BYTES = 8 * 1024 * 1024


class _JSONProvider(DefaultJSONProvider):
    sort_keys = False  # keep fields in the documented order


def create_app(runtime: Runtime) -> Flask:
    app = Flask("greyproxy.api")
    app.json = _JSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SOCK_SERVER_OPTIONS=ws.SERVER_OPTIONS,
    )
    app.extensions[RUNTIME_KEY] = runtime
    app.extensions[CLAIMS_KEY] = notifications.NotificationClaims(runtime.bus)
    app.extensions[SETTINGS_KEY] = settings.SettingsStore.for_config(runtime.config, runtime.bus)
    # Strict routing would turn "/api/rules/" into a 308 redirect; a trailing slash is harmless.
    app.url_map.strict_slashes = False
    install_guard(app)
    register_error_handlers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app
