"""TLS towards real servers: verified against the system trust store plus an optional bundle,
with the origins' TLS sessions kept for resumption."""

from __future__ import annotations

import ssl
from collections import OrderedDict
from functools import lru_cache

ALPN = ("h2", "http/1.1")  # the origin chooses; the other side of the proxy may differ


@lru_cache(maxsize=8)
def upstream_ssl_context(extra_ca_bundle: str | None = None, alpn: tuple[str, ...] = ALPN) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if extra_ca_bundle:
        ctx.load_verify_locations(cafile=extra_ca_bundle)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


class OriginSessions:
    """The last TLS session of each origin, so the next connection resumes it: no certificate
    chain to send and verify again (a resumed handshake costs the proxy a fraction of a full one).

    Keyed by the context (its trust settings) and the server name and port the session was
    verified for: a session is only ever offered to the name it was verified against, and only
    a server holding that session's secret can accept it; any other answer is a full, verified
    handshake. Bounded: least recently used names go first."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._sessions: OrderedDict[tuple[ssl.SSLContext, str, int], ssl.SSLSession] = OrderedDict()

    def get(self, ctx: ssl.SSLContext, name: str, port: int) -> ssl.SSLSession | None:
        key = (ctx, name.lower(), port)
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def keep(self, ctx: ssl.SSLContext, name: str, port: int, sock: ssl.SSLSocket) -> None:
        """After a connection that completed its handshake (TLS 1.3 tickets arrive with the
        first reads, so this is called when the connection ends). A connection that resumed the
        kept session leaves it in place: reading a session out of ssl copies it through DER
        (the certificate chain parsed again, about as dear as what resuming saves), so that is
        only done when there is none yet or the origin would not resume it (expired, rotated keys)."""
        key = (ctx, name.lower(), port)
        if key in self._sessions and sock.session_reused:
            self._sessions.move_to_end(key)
            return
        try:
            session = sock.session
        except (OSError, ValueError, AttributeError):
            return
        if session is None or not session.has_ticket and not session.id:
            return
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.max_entries:
            self._sessions.popitem(last=False)

    def forget(self, ctx: ssl.SSLContext, name: str, port: int) -> None:
        self._sessions.pop((ctx, name.lower(), port), None)

    def __len__(self) -> int:
        return len(self._sessions)


def wrap_origin(ctx: ssl.SSLContext, raw: object, server_name: str, port: int,
                sessions: OriginSessions | None) -> ssl.SSLSocket:
    """`raw` wrapped for a handshake with the origin, offering its last session if there is one."""
    session = sessions.get(ctx, server_name, port) if sessions is not None else None
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False,  # type: ignore[arg-type]
                               session=session)
    except ValueError:  # a session the context refuses: no resumption this time
        return ctx.wrap_socket(raw, server_hostname=server_name, do_handshake_on_connect=False)  # type: ignore[arg-type]
