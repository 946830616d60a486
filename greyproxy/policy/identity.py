"""Client identity from the proxy credentials (the username, else `unknown-<ip>`; the Docker lookup lives elsewhere)."""

from __future__ import annotations

# Clients that send no real identity: greywall and curl-style defaults use the literal 'proxy'.
ANONYMOUS_USERNAMES = frozenset({"", "proxy"})


def container_from_username(username: str | None, source_ip: str) -> str:
    """The proxy username, or `unknown-<source ip>` when the client did not name itself."""
    if username is None or username in ANONYMOUS_USERNAMES:
        return f"unknown-{source_ip}"
    return username
