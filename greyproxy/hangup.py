"""Whether the peer of a socket has gone: used by the hold (a held client that hangs up) and by
the API's event streams (a subscriber that left), so neither plane imports the other."""

from __future__ import annotations

import select
import socket

from gevent.monkey import get_original

# The OS poll, not gevent's cooperative one: only the real one reports POLLRDHUP, and a
# zero-timeout poll never blocks the hub.
_os_poll = get_original("select", "poll")
_HANGUP_MASK = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def client_hung_up(sock: socket.socket) -> bool:
    """True when the peer closed or reset, even with unread bytes buffered (POLLRDHUP)."""
    try:
        poller = _os_poll()
        poller.register(sock.fileno(), _HANGUP_MASK)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
