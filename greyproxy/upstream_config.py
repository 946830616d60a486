"""`upstream:` in the configuration: a corporate proxy that allowed traffic is chained through
(docs/upstream-proxy.md). Parsed here, with no I/O, so config.py can validate it at load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from greyproxy.policy.patterns import PatternError, normalize_destination_pattern

SCHEMES = ("http", "socks5", "socks5h")  # socks5h: the upstream resolves names (as curl spells it)
RESOLVE = ("local", "upstream")
DEFAULT_PORTS = {"http": 8080, "socks5": 1080, "socks5h": 1080}


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    scheme: str  # 'http' (CONNECT) or 'socks5'
    host: str
    port: int
    username: str | None
    password: str | None
    bypass_hosts: tuple[str, ...]  # destination patterns (the rules' dialect) dialled directly
    fail_open: bool  # the upstream unreachable: True dials directly, False refuses
    resolve: str  # 'local': greyproxy resolves and guards, the upstream gets the IP; 'upstream': the name

    @property
    def display_url(self) -> str:
        """The proxy URL without its password (health, logs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{user}{host}:{self.port}"


def parse_upstream(raw: Mapping[str, Any]) -> UpstreamConfig | None:
    """None when no `proxy_url` is set; ValueError naming the key when something is wrong."""
    url = raw.get("proxy_url")
    fail_open = raw.get("fail_open", False)
    if not isinstance(fail_open, bool):
        raise ValueError("'upstream.fail_open' must be true or false")
    resolve = raw.get("resolve", "local")
    if resolve not in RESOLVE:
        raise ValueError(f"'upstream.resolve' must be one of {', '.join(RESOLVE)}")
    bypass_raw = raw.get("bypass_hosts") or []
    if not isinstance(bypass_raw, list) or not all(isinstance(b, str) for b in bypass_raw):
        raise ValueError("'upstream.bypass_hosts' must be a list of destination patterns")
    bypass = []
    for i, pattern in enumerate(bypass_raw):
        try:
            bypass.append(normalize_destination_pattern(pattern))
        except PatternError as exc:
            raise ValueError(f"'upstream.bypass_hosts[{i}]': {exc}") from None
    if url in (None, ""):
        return None
    if not isinstance(url, str) or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("'upstream.proxy_url' must be a URL like http://user:pass@proxy.corp:3128")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"'upstream.proxy_url': {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"'upstream.proxy_url': scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
    if not parts.hostname:
        raise ValueError("'upstream.proxy_url' names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("'upstream.proxy_url' must be scheme://[user:pass@]host:port, nothing after the port")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username and len(username) > 255 or password and len(password) > 255:
        raise ValueError("'upstream.proxy_url': user name and password are at most 255 bytes (SOCKS5)")
    if scheme == "socks5h":
        resolve = "upstream"
    return UpstreamConfig(
        scheme="socks5" if scheme == "socks5h" else scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        username=username,
        password=password,
        bypass_hosts=tuple(bypass),
        fail_open=fail_open,
        resolve=resolve,
    )
