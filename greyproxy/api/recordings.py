"""Capture recordings: `/api/recordings` (named recordings started and stopped by a user, their
traffic as one HAR) and `POST /api/recordings/import` (a HAR file becomes a recording's
transactions). Named apart from the launcher's `/api/sessions`, which are credential sessions.
"""

from __future__ import annotations

from typing import Any

import gevent
from flask import Blueprint, Response, request

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_arg, int_arg, json_body, json_object, no_unknown_keys, path_id, str_arg
from greyproxy.api.transactions import har_response
from greyproxy.capture.har_import import HarInvalid, parse_har
from greyproxy.services.recordings import RecordingConflict, RecordingInvalid, RecordingService
from greyproxy.services.transactions import TxnFilter

bp = Blueprint("recordings", __name__)


def _service() -> RecordingService:
    return runtime().recording_service


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RecordingInvalid as exc:
        raise ApiError(400, str(exc)) from None
    except RecordingConflict as exc:
        raise ApiError(409, str(exc)) from None


@bp.get("/api/recordings")
def list_recordings() -> Any:
    active = bool_arg("active") if str_arg("active") is not None else None
    return _service().list(active, int_arg("limit", 100, minimum=1, maximum=1000), int_arg("offset", 0))


@bp.post("/api/recordings")
def start_recording() -> Any:
    body = json_object()
    no_unknown_keys(body, ("name", "container"))
    return _call(_service().start, body.get("name"), body.get("container")), 201


@bp.get("/api/recordings/<recording_id>")
def get_recording(recording_id: str) -> Any:
    runtime().flush_writes()
    return _service().describe(path_id(recording_id))


@bp.post("/api/recordings/<recording_id>/stop")
def stop_recording(recording_id: str) -> Any:
    return _call(_service().stop, path_id(recording_id))


@bp.delete("/api/recordings/<recording_id>")
def delete_recording(recording_id: str) -> Any:
    return _service().delete(path_id(recording_id), bool_arg("delete_transactions"))


@bp.get("/api/recordings/<recording_id>/har")
def recording_har(recording_id: str) -> Response:
    rec = _service().get(path_id(recording_id))
    runtime().flush_writes()
    return har_response(TxnFilter(recording_id=rec.id), f"greyproxy-recording-{rec.id}.har")


@bp.post("/api/recordings/import")
def import_har() -> Any:
    """The body is the HAR document itself (JSON, at most the API's body limit); `name` and
    `container` (whose traffic it becomes: what rules a replay of it is decided by) are query
    parameters."""
    if not request.get_data(cache=True).strip():
        raise ApiError(400, "request body is required (a HAR document)")
    document = json_body()  # read and checked once (depth, surrogates) by the request guard
    try:
        # A big file: a pause on a timer now and then, so the proxy's sockets are served meanwhile.
        entries = parse_har(document, pause=lambda: gevent.sleep(0.001))
    except HarInvalid as exc:
        raise ApiError(400, f"not an importable HAR: {exc}") from None
    name = str_arg("name") or "HAR import"
    return _call(_service().import_har, entries, name, str_arg("container") or "har-import"), 201
