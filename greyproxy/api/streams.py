"""Helpers shared by the two push channels (SSE and the control WebSocket)."""

from __future__ import annotations

import json
import socket
from typing import Any

from greyproxy.timeutil import iso, utcnow

# 128 events per subscriber; a client that cannot keep up loses events, the proxy never waits.
SUBSCRIBER_QUEUE = 128


def to_json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def timestamp() -> str:
    return iso(utcnow()) or ""


def client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client's socket under gevent's WSGI server (wsgi.input -> makefile -> SocketIO), if reachable."""
    rfile = getattr(environ.get("wsgi.input"), "rfile", None)
    sock = getattr(getattr(rfile, "raw", None), "_sock", None)
    return sock if hasattr(sock, "fileno") else None
