"""External middlewares: programs or WebSocket servers that inspect, deny or rewrite the
HTTP requests and responses greyproxy sees in clear text."""

from greyproxy.middleware.config import MiddlewareConfig, configs_from
from greyproxy.middleware.engine import MiddlewareEngine
from greyproxy.middleware.protocol import (
    FORBIDDEN_HEADERS,
    Headers,
    RequestFacts,
    RequestOutcome,
    ResponseFacts,
    ResponseOutcome,
)

__all__ = [
    "FORBIDDEN_HEADERS",
    "Headers",
    "MiddlewareConfig",
    "MiddlewareEngine",
    "RequestFacts",
    "RequestOutcome",
    "ResponseFacts",
    "ResponseOutcome",
    "configs_from",
]
