"""systemd's readiness protocol (sd_notify), without libsystemd (docs/decisions.md#operations).

Under `Type=notify` systemd passes `$NOTIFY_SOCKET`, the path of a datagram unix socket (or an
abstract name when it starts with '@'). A state is one datagram of newline-separated
`KEY=VALUE` lines: `READY=1` once every listener accepts connections, `RELOADING=1` around a
SIGHUP reload, `STOPPING=1` when the drain starts, `STATUS=...` a line shown by `systemctl status`.
Outside systemd the variable is absent and every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("greyproxy")


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock and other schemes are not used by a local service manager


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one state datagram; True if it was sent. Never raises: a service manager that went
    away must not take the proxy down with it."""
    env = os.environ if env is None else env
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not a unix socket path; readiness not reported", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)  # a datagram send does not wait for the reader, but bound it anyway
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", value, exc)
        return False
    return True
