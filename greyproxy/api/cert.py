"""The interception CA: `/api/cert/status|generate|download|reload`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from flask.blueprints import BlueprintSetupState

from greyproxy.api.context import RUNTIME_KEY, runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_arg
from greyproxy.ca.authority import CAExists, ca_mtime, load_ca
from greyproxy.ca.state import MitmState
from greyproxy.trust import is_installed

bp = Blueprint("cert", __name__)
ACK_KEY = "greyproxy.cert_ack"


class ReloadTracker:
    """Which CA `POST /api/cert/reload` last reported. The file watcher may load a new CA a
    moment before the user asks for a reload; the answer should still say it was reloaded,
    since the CA in use changed since they last asked (or since start)."""

    def __init__(self, mitm: MitmState) -> None:
        self.acknowledged = self._mark(mitm)

    @staticmethod
    def _mark(mitm: MitmState) -> float | None:
        return mitm.ca.loaded_mtime if mitm.ca is not None else None

    def reload(self, mitm: MitmState) -> bool:
        changed = mitm.reload()
        mark = self._mark(mitm)
        changed = changed or mark != self.acknowledged
        self.acknowledged = mark
        return changed


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions[ACK_KEY] = ReloadTracker(state.app.extensions[RUNTIME_KEY].mitm)


def _tracker() -> ReloadTracker:
    return current_app.extensions[ACK_KEY]


def cert_status() -> dict[str, Any]:
    return runtime().mitm.status(is_installed())


@bp.get("/api/cert/status")
def status() -> Any:
    return cert_status()


@bp.post("/api/cert/generate")
def generate() -> Any:
    force = bool_arg("force")
    mitm = runtime().mitm
    try:
        mitm.generate(force=force)  # writes the files, then loads them for new connections
    except CAExists:
        raise ApiError(409, "a CA already exists; use ?force=true to replace it") from None
    except OSError as exc:
        raise ApiError(500, f"cannot write the CA: {exc.strerror or exc}") from None
    _tracker().acknowledged = mitm.ca.loaded_mtime if mitm.ca else None
    runtime().bus.publish("cert.reloaded", cert_status())
    return {"message": "new CA generated and loaded" if not force else "CA replaced and loaded",
            "certStatus": cert_status()}


@bp.get("/api/cert/download")
def download() -> Response:
    ca = runtime().mitm.ca
    if ca is None:
        raise ApiError(404, "no CA has been generated (greyproxy cert generate)")
    response = Response(ca.cert_pem, mimetype="application/x-pem-file")
    response.headers["Content-Disposition"] = 'attachment; filename="greyproxy-ca.pem"'
    return response


@bp.post("/api/cert/reload")
def reload() -> Any:
    mitm = runtime().mitm
    changed = _tracker().reload(mitm)
    on_disk = ca_mtime(mitm.data_dir)
    if on_disk is not None and (mitm.ca is None or on_disk > mitm.ca.loaded_mtime):
        # Newer files than the CA in use, yet the reload did not take them: say why.
        try:
            load_ca(mitm.data_dir)
        except (OSError, ValueError) as exc:
            raise ApiError(500, f"cannot load the CA files (the previous CA stays in use): {exc}") from None
    if changed:
        runtime().bus.publish("cert.reloaded", cert_status())
    message = "MITM cert reloaded" if changed else "cert unchanged, no reload needed"
    return {"message": message, "certStatus": cert_status()}
