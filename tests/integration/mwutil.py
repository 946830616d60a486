"""Starting greyproxy with the test middleware (mw_script.py), and reading what it was sent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("mw_script.py")


def middleware_yaml(seen: Path) -> str:
    """Config YAML that runs mw_script.py as a stdio middleware, logging to `seen`."""
    return f"middlewares:\n  - command: {json.dumps([sys.executable, str(SCRIPT), str(seen)])}\n"


def seen_messages(seen: Path) -> list[dict]:
    return [json.loads(line) for line in seen.read_text().splitlines()] if seen.exists() else []
