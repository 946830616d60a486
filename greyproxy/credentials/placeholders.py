"""Placeholder format (docs/sessions.md): `greyproxy:credential:v1:<scope>:<32 lowercase hex>`."""

from __future__ import annotations

import re
import secrets

PREFIX = "greyproxy:credential:"
PLACEHOLDER_RE = re.compile(r"greyproxy:credential:v1:[A-Za-z0-9_.-]{1,128}:[0-9a-f]{32}")


def new_placeholder(scope: str) -> str:
    return f"{PREFIX}v1:{scope}:{secrets.token_hex(16)}"


def is_placeholder(text: str) -> bool:
    return PLACEHOLDER_RE.fullmatch(text) is not None


PREVIEW_MIN_LENGTH = 12  # shorter values show nothing of themselves
PREVIEW_CHARS = 4  # at most this many characters of a value are ever shown


def value_preview(value: str) -> str:
    """Enough to recognise a secret, never enough to use it: its first 4 characters
    (a key's kind, like `sk-p` or `ghp_`) then `***` when it has at least 12, else `***` alone.
    Never the end: first and last characters together would narrow a guess for no real gain."""
    if len(value) >= PREVIEW_MIN_LENGTH:
        return f"{value[:PREVIEW_CHARS]}***"
    return "***"


def mask_stored_preview(preview: str) -> str:
    """A stored preview cut to what the current rule allows, without the value (the migration,
    or a row whose value cannot be decrypted): a preview already in the current form stays;
    an older one (first 6 + `***` + last 3, or `***` + last 2) becomes `***`, since the old form
    does not tell whether the value had 12 characters."""
    head, sep, tail = preview.partition("***")
    if sep and not tail and len(head) in (0, PREVIEW_CHARS):
        return preview
    return "***"
