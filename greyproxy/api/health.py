"""`GET /api/health`: liveness and ports, the one route that needs no token (docs/decisions.md#the-control-plane-is-not-the-agents).

`status` is `ok`, `degraded` or `unhealthy`. `degraded` (HTTP 200: the proxy still decides
and forwards every connection, so a supervisor must not restart it) comes with `reasons`, e.g.
the store writer's flushes failing (disk full, database locked or read-only): log rows and
pending rows stay queued in memory until a flush succeeds, and then the status is `ok` again by
itself. `unhealthy` (HTTP 503): the database cannot even be read."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.store.executor import OffHubMixin

log = logging.getLogger("greyproxy.api")
bp = Blueprint("health", __name__)
BUSY_AFTER = 1.0  # seconds one holder may keep the database connection before health says "busy"


@bp.get("/api/health")
def health() -> Any:
    rt = runtime()
    ports = rt.ports
    body = {
        "service": "greyproxy",
        "node": rt.node_id,  # which node answered (fleet mode: docs/fleet.md)
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
    busy: list[str] = []
    worker_reasons: list[str] = []
    workers = rt.workers_control.health() if rt.workers_control is not None else None  # docs/workers.md
    try:
        # Health answers at once even while the database is held (a long write, or a lock
        # taken by another process that statements wait up to their busy timeout on).
        held = rt.db.held_for() if isinstance(rt.db, OffHubMixin) else 0.0
        if workers is not None:  # the workers write the traffic
            workers_held, worker_reasons = workers.store()
            held = max(held, workers_held)
        if held > BUSY_AFTER:
            busy = [f"database busy: one statement or transaction has held it for {held:.1f} s (a long "
                    "write, or the file locked by another process)"]
        elif held == 0.0:
            rt.db.execute_sql("SELECT 1").fetchone()
        # else: in use right now, for a short while: working, not worth waiting for
    except Exception as exc:  # any database failure means "unhealthy", never a 500
        log.warning("health check: database ping failed: %s", exc)
        if rt.fleet_link is not None:  # fleet mode: the node still decides from memory (docs/fleet.md)
            return {**body, "status": "degraded", "reasons": [f"database unreachable: {exc}".strip()],
                    "fleet": rt.fleet_link.status()}
        return {**body, "status": "unhealthy", "reasons": [f"database ping failed: {exc}"]}, 503
    reasons = [*busy, *rt.writer.health()]
    if rt.fleet_link is not None:
        body["fleet"] = rt.fleet_link.status()
        if not rt.fleet_link.connected:
            reasons = [*reasons, f"fleet: not receiving other nodes' changes ({rt.fleet_link.last_error})"]
    if rt.workers is not None:  # serve --workers N (docs/workers.md)
        body["workers"] = rt.workers.status()
        reasons = [*reasons, *rt.workers.health(), *worker_reasons]
    upstream = rt.upstream.get()
    if upstream is not None:  # the corporate proxy allowed traffic goes through (docs/upstream-proxy.md)
        status = upstream.status()
        if workers is not None:  # the workers dial it: what the latest of them saw
            status = workers.upstream_status(status)
        body["upstream"] = status
        if status["state"] == "down" and not upstream.cfg.fail_open:
            reasons = [*reasons, f"upstream proxy {upstream.cfg.display_url} unreachable: {status['last_error']}"]
    if reasons:
        return {**body, "status": "degraded", "reasons": reasons}
    return body
