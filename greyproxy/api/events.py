"""`GET /api/events`: the bus as Server-Sent Events (docs/decisions.md#audit-observability-traffic-tools), one `event:`/`data:` pair per event.

`?types=a,b` limits the stream to those event types. A comment line goes out every 15 s so
proxies keep the connection open, and the subscription ends as soon as the client hangs up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from greyproxy.api.context import runtime
from greyproxy.api.streams import SUBSCRIBER_QUEUE, client_socket, to_json
from greyproxy.events import Bus
from greyproxy.hangup import client_hung_up

bp = Blueprint("events", __name__)

KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.5  # how quickly a vanished client is noticed


def _types_arg() -> set[str] | None:
    text = request.args.get("types", "")
    types = {t.strip() for t in text.split(",") if t.strip()}
    return types or None


def _stream(bus: Bus, types: set[str] | None, sock: Any) -> Iterator[str]:
    # Subscribed inside the generator, so the finally below always runs for a subscription that exists.
    sub = bus.subscribe(SUBSCRIBER_QUEUE, types=types)
    try:
        yield "retry: 3000\n: connected\n\n"
        last_write = time.monotonic()
        while True:
            event = sub.get(timeout=POLL_SECONDS)
            if event is not None:
                yield f"event: {event['type']}\ndata: {to_json(event['data'])}\n\n"
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
            if sock is not None and client_hung_up(sock):
                return
    finally:
        sub.close()


@bp.get("/api/events")
def events() -> Response:
    stream = _stream(runtime().bus, _types_arg(), client_socket(request.environ))
    response = Response(stream, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # tell reverse proxies not to buffer the stream
    return response
