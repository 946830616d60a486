"""Placeholder format (§11.1): `greyproxy:credential:v1:<scope>:<32 lowercase hex>`."""

from __future__ import annotations

import re
import secrets

PREFIX = "greyproxy:credential:"
PLACEHOLDER_RE = re.compile(r"greyproxy:credential:v1:[A-Za-z0-9_.-]{1,128}:[0-9a-f]{32}")


def new_placeholder(scope: str) -> str:
    return f"{PREFIX}v1:{scope}:{secrets.token_hex(16)}"


def is_placeholder(text: str) -> bool:
    return PLACEHOLDER_RE.fullmatch(text) is not None


def value_preview(value: str) -> str:
    """Enough to recognise a secret, never enough to use it (§11.4)."""
    if len(value) >= 9:
        return f"{value[:6]}***{value[-3:]}"
    if len(value) > 2:
        return f"***{value[-2:]}"
    return "***"
