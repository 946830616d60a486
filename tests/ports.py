"""Listening ports for the tests' own servers.

The control-plane guard treats every loopback address with a port greyproxy listens on as the control plane: an
origin on 127.0.0.5:P is refused when greyproxy happens to listen on 127.0.0.1:P. The kernel
hands out port-0 binds on different addresses independently, so a test origin and a greyproxy
listener could share a number by chance and the test would fail once in a few thousand runs.
Test servers therefore take their port from below the ephemeral range, which port-0 binds
(greyproxy's) never use.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str, kind: int = socket.SOCK_STREAM, attempts: int = 200) -> int:
    """A port free on `host` that no port-0 bind will ever be given."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = _ephemeral_low() - 1
    for _ in range(attempts):
        port = random.randint(LOWEST, max(LOWEST, high))
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port on {host} between {LOWEST} and {high}")
