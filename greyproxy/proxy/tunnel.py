"""Dialling upstream under the guard; the byte relay itself is in greyproxy.proxy.relay."""

from __future__ import annotations

import errno
import os
import socket
import weakref

from gevent import socket as gsocket

from greyproxy.policy.canonical import canonical_ip
from greyproxy.proxy.guard import ControlPlaneGuard
from greyproxy.proxy.resolver import ResolveError, Resolver, system_addresses
from greyproxy.proxy.upstream_proxy import UpstreamDown, UpstreamProxy, UpstreamRefused

DIAL_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 10.0
MAX_DIAL_ADDRESSES = 4  # bounds a dial to a few connect timeouts
# A socket tunnelled through an upstream proxy → the destination IP it was opened to (its peer is
# the upstream; logs name the real destination).
_THROUGH: weakref.WeakKeyDictionary[socket.socket, str] = weakref.WeakKeyDictionary()


class DialError(OSError):
    """Upstream could not be reached; `reason` is what the client is told."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def dial(
    host: str,
    port: int,
    guard: ControlPlaneGuard,
    timeout: float = DIAL_TIMEOUT,
    *,
    resolver: Resolver | None = None,
    rule_pattern: str | None = None,
    upstream: UpstreamProxy | None = None,
) -> socket.socket:
    """Resolve and connect under the guards, checked on every IP actually dialled: never one of
    our own listeners, and no private address the allowing rule does not name.
    The IP dialled is the socket's peer (getpeername), or `peer_ip` for one opened through the
    `upstream` proxy (docs/upstream-proxy.md): the guard runs on the IP the upstream is asked
    for, exactly as on a direct dial."""
    via = upstream if upstream is not None and not upstream.bypassed(host) else None
    if via is not None and via.remote_dns and canonical_ip(host) is None:
        # resolve: upstream — the name goes to the upstream (the guard judged it at decision time)
        try:
            sock = _through(via, host, port, timeout)
        except UpstreamRefused as exc:
            raise DialError("upstream_unreachable", f"cannot connect to {host}:{port}: {exc}") from None
        if sock is not None:
            _THROUGH[sock] = ""  # the upstream resolved the name: no dialled IP is known
            return sock
        via = None  # down, fail_open: directly, like without an upstream
    try:
        addresses = resolver.resolve(host) if resolver is not None else system_addresses(host, RESOLVE_TIMEOUT)
    except ResolveError as exc:
        raise DialError("dns_failure", str(exc)) from None
    last: Exception | None = None
    private: str | None = None
    for ip in addresses[:MAX_DIAL_ADDRESSES]:
        if guard.is_own_address(ip, port):
            raise DialError("control_plane", f"{host}:{port} is this proxy's own listener")
        if guard.private_range_refused(ip, rule_pattern):
            private = private or ip
            continue
        if via is not None and not via.bypassed(ip):
            try:
                sock = _through(via, ip, port, timeout)
            except UpstreamRefused as exc:
                last = exc
                continue
            if sock is not None:
                _THROUGH[sock] = ip
                return sock
            via = None  # down, fail_open: this and the next addresses directly
        try:
            sock = _connect(ip, port, timeout)
        except OSError as exc:
            last = exc
            continue
        set_nodelay(sock)
        return sock
    if private is not None and last is None:
        raise DialError("private_range", f"{host} is the private address {private}, which no rule names")
    raise DialError("upstream_unreachable", f"cannot connect to {host}:{port}: {last}")


def _connect(ip: str, port: int, timeout: float) -> socket.socket:
    """A connected gevent socket. The connect is started on the raw socket and asked once more
    right away: a near peer (loopback, the same host or LAN) has usually answered by then, which
    saves the event-loop round trip gevent's connect() always takes (about a third of a
    connection's dial cost in bench/proxyload.py's connrate). Otherwise gevent waits, bounded
    by `timeout`."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    raw = sock._sock  # type: ignore[attr-defined]  # gevent's C socket, already non-blocking: never waits
    try:
        err = raw.connect_ex((ip, port))
        if err == errno.EINPROGRESS:
            err = raw.connect_ex((ip, port))
            if err == errno.EISCONN:
                err = 0
        if err not in (0, errno.EALREADY, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    if err:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))  # still under way: gevent's loop (EALREADY, then connected)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
    return sock


def _through(via: UpstreamProxy, host: str, port: int, timeout: float) -> socket.socket | None:
    """A tunnel through the upstream; None when it is down and `fail_open` says go direct."""
    try:
        sock = via.open(host, port, timeout)
    except UpstreamDown as exc:
        if via.cfg.fail_open:
            return None
        raise DialError("upstream_proxy_down",
                        f"the upstream proxy {via.cfg.display_url} is unreachable ({exc}); upstream.fail_open is false"
                        ) from None
    set_nodelay(sock)
    return sock


def peer_ip(sock: socket.socket) -> str | None:
    """The IP a connected socket talks to (the one actually dialled), or None if it is gone.
    Through an upstream proxy: the destination IP it was asked for (None when it resolved)."""
    if sock in _THROUGH:
        return _THROUGH[sock] or None
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError):
        return None
