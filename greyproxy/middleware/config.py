"""Middleware configuration: one external program (stdio) or server (WebSocket) per entry.

Entries come from `--middleware URL`, `--middleware-cmd 'cmd args'` and the YAML `middlewares:`
list; `configs_from` puts them in the cascade order.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

ON_DISCONNECT = ("deny", "allow")
DEFAULT_TIMEOUT_MS = 10_000
_KEYS = {"command", "url", "auth_header", "timeout_ms", "on_disconnect"}
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


@dataclass(frozen=True)
class MiddlewareConfig:
    command: tuple[str, ...] | None = None  # stdio transport (argv, never through a shell)
    url: str | None = None  # WebSocket transport, always ws:// or wss:// once built
    auth_header: str | None = None  # "Name: value" sent on the WS upgrade
    timeout_ms: int = DEFAULT_TIMEOUT_MS  # per message
    on_disconnect: str = "deny"  # what applies on timeout/disconnect/error

    @classmethod
    def parse(cls, entry: object, where: str) -> MiddlewareConfig:
        """One YAML `middlewares:` entry; ValueError(f"{where}: ...") names what is wrong."""
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a mapping with `command` or `url`")
        unknown = sorted(str(k) for k in entry if k not in _KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})")
        has_command, has_url = entry.get("command") is not None, entry.get("url") is not None
        if has_command == has_url:
            raise ValueError(f"{where}: exactly one of `command` or `url` is required")
        command = _command(entry["command"], f"{where}.command") if has_command else None
        url = _ws_url(entry["url"], f"{where}.url") if has_url else None
        auth = entry.get("auth_header")
        if auth is not None:
            if command is not None:
                raise ValueError(f"{where}.auth_header: only applies to a `url` middleware")
            _check_auth_header(auth, f"{where}.auth_header")
        return cls(command=command, url=url, auth_header=auth,
                   timeout_ms=_timeout(entry.get("timeout_ms", DEFAULT_TIMEOUT_MS), f"{where}.timeout_ms"),
                   on_disconnect=_on_disconnect(entry.get("on_disconnect", "deny"), f"{where}.on_disconnect"))

    @classmethod
    def from_cli_url(cls, url: str) -> MiddlewareConfig:
        return cls(url=_ws_url(url, "--middleware"))

    @classmethod
    def from_cli_command(cls, command: str) -> MiddlewareConfig:
        return cls(command=_command(command, "--middleware-cmd"))

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "websocket"

    def label(self) -> str:
        """A name safe for status and logs: no credentials, no query string, no arguments."""
        if self.command is not None:
            return os.path.basename(self.command[0]) or self.command[0]
        parts = urlsplit(self.url or "")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def configs_from(cli_urls: list[str], cli_commands: list[str], yaml_entries: list) -> list[MiddlewareConfig]:
    """The cascade order: CLI URLs, then CLI commands, then YAML entries."""
    configs = [MiddlewareConfig.from_cli_url(u) for u in cli_urls]
    configs += [MiddlewareConfig.from_cli_command(c) for c in cli_commands]
    configs += [MiddlewareConfig.parse(e, f"middlewares[{i}]") for i, e in enumerate(yaml_entries or [])]
    return configs


def _command(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:  # an unclosed quote
            raise ValueError(f"{where}: cannot split {value!r}: {exc}") from None
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise ValueError(f"{where}: must be a list of strings or a command string")
    if not argv or not argv[0]:
        raise ValueError(f"{where}: must not be empty")
    return tuple(argv)


def _ws_url(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: must be a ws://, wss://, http:// or https:// URL")
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{where}: not a valid URL: {exc}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"{where}: unsupported scheme {parts.scheme!r} (use ws, wss, http or https)")
    if not parts.hostname:
        raise ValueError(f"{where}: the URL has no host")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


def _check_auth_header(value: object, where: str) -> None:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"{where}: must be a string 'Name: value'")
    name = value.split(":", 1)[0].strip()
    if not name or any(c.isspace() for c in name) or "\r" in value or "\n" in value:
        raise ValueError(f"{where}: must be a single 'Name: value' header")
    try:
        value.encode("latin-1")  # what an HTTP header can carry
    except UnicodeEncodeError:
        raise ValueError(f"{where}: must be Latin-1 text") from None


def _timeout(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: must be a positive integer (milliseconds)")
    return value


def _on_disconnect(value: object, where: str) -> str:
    if value not in ON_DISCONNECT:
        raise ValueError(f"{where}: must be 'deny' or 'allow'")
    return str(value)
