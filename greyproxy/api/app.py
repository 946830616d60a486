"""The control-plane application: `create_app(runtime)` builds the Flask app the runtime serves.

One blueprint per resource; the request guard (auth.py) runs before every route and the error
handlers (errors.py) make every failure a JSON `{"error": ...}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider

from greyproxy.api import (
    allowall,
    audit,
    cert,
    conversations,
    dashboard,
    endpoint_rules,
    events,
    health,
    logs,
    maintenance,
    metrics,
    middlewares,
    modes,
    notifications,
    openapi,
    pages,
    pending,
    pending_http,
    prefix,
    recordings,
    rule_test,
    rules,
    sessions,
    settings,
    transactions,
    version,
    ws,
)
from greyproxy.api.auth import install_guard
from greyproxy.api.context import CLAIMS_KEY, RUNTIME_KEY, SETTINGS_KEY
from greyproxy.api.errors import register_error_handlers

if TYPE_CHECKING:
    from greyproxy.api.context import Runtime  # the API's one reference to the composition root
    from greyproxy.workers.pool import WorkerPool

BLUEPRINTS = (
    health.bp,
    dashboard.bp,
    pending.bp,
    pending_http.bp,
    rule_test.bp,  # before rules.bp: /api/rules/test is not a rule id
    rules.bp,
    logs.bp,
    allowall.bp,
    settings.bp,
    notifications.bp,
    modes.bp,
    events.bp,
    ws.bp,
    transactions.bp,
    cert.bp,
    maintenance.bp,
    pages.bp,
    sessions.bp,
    metrics.bp,
    middlewares.bp,
    audit.bp,
    conversations.bp,
    recordings.bp,
    endpoint_rules.bp,
    version.bp,
    openapi.bp,
)
MAX_BODY_BYTES = 8 * 1024 * 1024


class _JSONProvider(DefaultJSONProvider):
    sort_keys = False  # keep fields in the documented order


def _workers_caught_up(workers: WorkerPool) -> Callable[[Response], Response]:
    """`serve --workers N` (docs/workers.md): a change is answered once every worker applies
    it, so a client told "rule created" never reaches a worker deciding by the old rules."""

    def after(response: Response) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            workers.barrier()
        return response

    return after


def create_app(runtime: Runtime) -> Flask:
    # static_folder=None: the dashboard blueprint (pages.py) serves /static/ from greyproxy/web.
    app = Flask("greyproxy.api", static_folder=None)
    app.json = _JSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SOCK_SERVER_OPTIONS=ws.SERVER_OPTIONS,
    )
    app.extensions[RUNTIME_KEY] = runtime
    app.extensions[CLAIMS_KEY] = notifications.NotificationClaims(runtime.bus)
    app.extensions[SETTINGS_KEY] = runtime.settings
    # Strict routing would turn "/api/rules/" into a 308 redirect; a trailing slash is harmless.
    app.url_map.strict_slashes = False
    install_guard(app)
    register_error_handlers(app)
    if runtime.workers is not None:
        app.after_request(_workers_caught_up(runtime.workers))
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    prefix.install(app, runtime.config.path_prefix)  # api.path_prefix: everything under one path
    return app
