"""`GET /api/version`: what this engine is and what it can do, so a client can check before it
relies on a route (the engine version, the version of this API, and a list of capabilities)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime

bp = Blueprint("version", __name__)

# Bumped when a route or a JSON shape changes in a way an existing client would notice.
API_VERSION = "1"
# One name per feature a client may want to detect; a name is never reused for something else.
CAPABILITIES = (
    "rules", "rules.expiry", "rules.ingest", "pending", "hold", "pending.bulk", "silent_mode",
    "container_modes", "sessions", "credentials", "identity_binding", "websocket", "sse",
    "transactions", "har_export", "curl_export", "replay", "mitm", "conversations", "dissectors",
    "endpoint_rules", "middlewares", "audit", "metrics", "maintenance", "openapi", "path_prefix",
    "log_filters",
)


@bp.get("/api/version")
def version() -> Any:
    rt = runtime()
    return {
        "engine": "greyproxy",
        "version": rt.version,
        "api_version": API_VERSION,
        "capabilities": list(CAPABILITIES),
        "mitm_enabled": bool(rt.settings.values()["mitmEnabled"]),
        "path_prefix": getattr(rt.config, "path_prefix", "") or "/",
    }
