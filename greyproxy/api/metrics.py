"""`GET /metrics` (Prometheus text format) and `GET /api/metrics` (the same figures as JSON).

Both need the API token like every other route: Prometheus sends it with
`authorization: {type: Bearer, credentials_file: <data>/api-token}` in its scrape config.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request
from prometheus_client.exposition import choose_encoder

from greyproxy.api.context import runtime

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def prometheus() -> Response:
    # The text format Prometheus asks for (Accept): classic 0.0.4 by default, OpenMetrics on request.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    rt = runtime()
    rt.gather_metrics()  # serve --workers N: theirs too (docs/workers.md)
    return Response(encode(rt.metrics.registry), content_type=content_type,
                    headers={"Cache-Control": "no-store"})


@bp.get("/api/metrics")
def metrics_json() -> Any:
    rt = runtime()
    rt.gather_metrics()
    # `policy`: how the index was kept up to date (full rebuilds vs in-place patches), issue 13.
    return {**rt.metrics.snapshot(), "policy": rt.policy.counters()}
