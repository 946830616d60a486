"""Access to the objects the app was built with, from inside a request.

create_app() stores them on `app.extensions`; routes reach them through these functions rather
than module globals, so several apps (tests) can live in one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

from greyproxy.services.audit import current_actor

if TYPE_CHECKING:
    from greyproxy.api.notifications import NotificationClaims
    from greyproxy.api.settings import SettingsStore
    from greyproxy.runtime import Runtime

RUNTIME_KEY = "greyproxy.runtime"
CLAIMS_KEY = "greyproxy.claims"
SETTINGS_KEY = "greyproxy.settings"

# Who the audit trail and `created_by` name for changes made through REST with the token.
API_ACTOR = "api"


def rule_creator() -> str:
    """`created_by` of a rule a decision makes: `dashboard` when the browser session made it (as
    its audit entry says), else `api`."""
    return "dashboard" if current_actor.get() == "dashboard" else API_ACTOR


def runtime() -> Runtime:
    return current_app.extensions[RUNTIME_KEY]


def claims() -> NotificationClaims:
    return current_app.extensions[CLAIMS_KEY]


def settings_store() -> SettingsStore:
    return current_app.extensions[SETTINGS_KEY]
