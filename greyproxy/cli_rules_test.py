"""`greyproxy rules test CONTAINER URL [METHOD]`: which rule decides, and why, asked of the
running instance (`POST /api/rules/test`, docs/request-rules.md). With a path in the URL or a
METHOD, the answer is for that request; with neither, for the connection."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_target(url: str) -> tuple[str, int, str | None]:
    """(host, port, path or None): 'https://h/p?q', 'h:8443', 'h' (port 443). ValueError if bad."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    port = parts.port or DEFAULT_PORTS[scheme]  # a bad port raises ValueError
    path = parts.path + (f"?{parts.query}" if parts.query else "") if parts.path else None
    return parts.hostname, port, path


def _rule_text(rule: dict[str, Any] | None) -> str:
    if not rule:
        return "none"
    request = " ".join(x for x in (rule.get("method_pattern"), rule.get("path_pattern")) if x)
    return (f"#{rule['id']} {rule['action']} {rule['container_pattern']} -> {rule['destination_pattern']}:"
            f"{rule['port_pattern']}" + (f" {request}" if request else ""))


def rules_test(instance: Any, container: str, url: str, method: str | None, as_json: bool) -> int:
    try:
        host, port, path = parse_target(url)
    except ValueError as exc:
        print(f"greyproxy: {exc}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"container": container, "destination": host, "port": port}
    if method:
        body["method"] = method
    if path is not None or method:
        body["path"] = path or "/"
    out = instance.call("POST", "/api/rules/test", body)
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    what = f"{method or 'GET'} {path or '/'} on " if out.get("level") == "request" else ""
    print(f"{what}{container} -> {host}:{port}: {out['decision']} ({out['reason']})"
          + (f", {out['would']}" if out.get("would") else ""))
    print(f"  rule: {_rule_text(out.get('rule'))}")
    if out.get("connection"):
        conn = out["connection"]
        print(f"  connection: {conn['decision']} ({conn['reason']}), rule {_rule_text(conn.get('rule'))}")
    return 0
