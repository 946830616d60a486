"""The node id: which node wrote a log row or a transaction, and which one answers /api/health.

Given by `fleet.node_id` (or GREYPROXY_NODE_ID); otherwise made once from the host name and a
random suffix and kept in `<data>/node-id`, so it survives restarts and two nodes on one host
(with their own data dirs) never share it."""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

from greyproxy.files import write_file

NODE_FILE = "node-id"
MAX_LEN = 64
_BAD = re.compile(r"[^A-Za-z0-9._:-]")


def clean(value: str) -> str:
    """Printable, short, no separators a log line or a NOTIFY payload would trip on."""
    return _BAD.sub("-", value.strip())[:MAX_LEN]


def node_id(configured: str | None, data_dir: Path) -> str:
    if configured and clean(configured):
        return clean(configured)
    path = data_dir / NODE_FILE
    try:
        stored = clean(path.read_text())
        if stored:
            return stored
    except OSError:
        pass
    made = clean(f"{socket.gethostname() or 'node'}-{secrets.token_hex(3)}")
    write_file(path, made + "\n")
    return made
