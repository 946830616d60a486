"""TLS towards real servers: verified against the system trust store plus an optional bundle."""

from __future__ import annotations

import ssl
from functools import lru_cache


@lru_cache(maxsize=8)
def upstream_ssl_context(extra_ca_bundle: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if extra_ca_bundle:
        ctx.load_verify_locations(cafile=extra_ca_bundle)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
