"""Writing files that hold secrets: atomically, and with their final mode from the first byte."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace `path` atomically (temp file + rename); readers never see a partial file, and a
    secret is never readable by others, not even for an instant."""
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask; the intent is exact
    os.replace(tmp, path)
