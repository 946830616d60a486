"""Every error leaves the API as JSON `{"error": "<what is wrong>"}` with a fitting status.

Handlers raise ApiError (or let a service's NotFound / Conflict / PatternError / DurationError /
ScopeError through); the mapping below turns them into responses, so no route needs its own
try/except and bad input can never become a 500.
"""

from __future__ import annotations

import logging

import peewee
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from greyproxy.policy.durations import DurationError
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.scopes import ScopeError
from greyproxy.services.rules import Conflict
from greyproxy.services.rules import NotFound as MissingError

log = logging.getLogger("greyproxy.api")

# Werkzeug's default descriptions are HTML-ish prose; these say the same thing in one line.
_HTTP_MESSAGES = {
    400: "bad request",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported media type",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(MissingError)
    def _missing(exc: MissingError) -> Response:
        return error_response(404, str(exc))

    @app.errorhandler(Conflict)
    def _conflict(exc: Conflict) -> Response:
        return error_response(409, str(exc))

    @app.errorhandler(PatternError)
    @app.errorhandler(DurationError)
    @app.errorhandler(ScopeError)
    def _bad_value(exc: ValueError) -> Response:
        return error_response(400, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = error_response(status, _HTTP_MESSAGES.get(status, exc.name.lower()))
        allowed = getattr(exc, "valid_methods", None)  # set on 405
        if allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.errorhandler(peewee.OperationalError)
    @app.errorhandler(peewee.InterfaceError)
    def _database_away(exc: peewee.DatabaseError) -> Response:
        # The database cannot be reached or is busy (fleet mode: PostgreSQL restarting, docs/fleet.md;
        # SQLite: locked by another process): not the caller's fault, and worth retrying.
        log.warning("API request: database unavailable: %s", str(exc).strip())
        return error_response(503, "database unavailable; try again shortly", {"Retry-After": "2"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Logged in full here; the client learns only that it was our fault.
        log.exception("unhandled error in API request")
        return error_response(500, "internal server error")
