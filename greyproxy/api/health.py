"""`GET /api/health`: liveness and ports, the one route that needs no token (D9)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime

log = logging.getLogger("greyproxy.api")
bp = Blueprint("health", __name__)


@bp.get("/api/health")
def health() -> Any:
    rt = runtime()
    ports = rt.ports
    body = {
        "service": "greyproxy",
        "version": rt.version,
        "status": "ok",
        "ports": {
            "api": ports.get("api"),
            "http-proxy": ports.get("http"),
            "socks5-proxy": ports.get("socks5"),
            "dns-proxy-udp": ports.get("dns"),
            "dns-proxy-tcp": ports.get("dns"),
        },
    }
    try:
        rt.db.execute_sql("SELECT 1").fetchone()
    except Exception as exc:  # any database failure means "unhealthy", never a 500
        log.warning("health check: database ping failed: %s", exc)
        return {**body, "status": "unhealthy"}, 503
    return body
