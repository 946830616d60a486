"""docs/configuration.md documents every configuration key greyproxy accepts (a key added to
config.py without a line there fails here), and config/greyproxy.yml names every top-level key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from greyproxy.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += leaves(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


def test_every_key_is_in_the_configuration_page():
    text = (ROOT / "docs" / "configuration.md").read_text()
    # the limits table names its keys without the `limits.` prefix, under a `limits:` heading
    missing = [k for k in leaves(DEFAULTS)
               if f"`{k}`" not in text and not (k.startswith("limits.") and f"`{k.split('.', 1)[1]}`" in text)]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_every_top_level_key_is_in_the_default_file():
    text = (ROOT / "config" / "greyproxy.yml").read_text()
    missing = [k for k in DEFAULTS if f"\n{k}:" not in f"\n{text}"]
    assert not missing, f"config/greyproxy.yml does not name {missing}"
