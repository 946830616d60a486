"""TLS towards real servers: verified against the system trust store plus an optional bundle."""

from __future__ import annotations

import ssl
from functools import lru_cache

ALPN = ("h2", "http/1.1")  # the origin chooses; the other side of the proxy may differ


@lru_cache(maxsize=8)
def upstream_ssl_context(extra_ca_bundle: str | None = None, alpn: tuple[str, ...] = ALPN) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if extra_ca_bundle:
        ctx.load_verify_locations(cafile=extra_ca_bundle)
    ctx.set_alpn_protocols(list(alpn))
    return ctx
