"""Byte-exact relays between two sockets, and dialling upstream under the guard."""

from __future__ import annotations

import socket

import gevent
from gevent import socket as gsocket

from greyproxy.proxy.guard import ControlPlaneGuard

DIAL_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 10.0
BULK_BUFFER = 256 * 1024
SMALL_READ = 64 * 1024


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


def dial(host: str, port: int, guard: ControlPlaneGuard, timeout: float = DIAL_TIMEOUT) -> socket.socket:
    """Resolve and connect, refusing any address that is one of our own listeners (D11)."""
    try:
        with gevent.Timeout(RESOLVE_TIMEOUT):
            infos = gsocket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (OSError, gevent.Timeout) as exc:
        raise DialError("dns_failure", f"cannot resolve {host}: {exc}") from None
    last: Exception | None = None
    for family, type_, proto, _name, sockaddr in infos:
        if guard.is_own_address(sockaddr[0], port):
            raise DialError("control_plane", f"{host}:{port} is this proxy's own listener")
        sock = gsocket.socket(family, type_, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.settimeout(None)
        set_nodelay(sock)
        return sock
    raise DialError("upstream_unreachable", f"cannot connect to {host}:{port}: {last}")


def _pump(src: socket.socket, dst: socket.socket, counter: list[int], index: int) -> None:
    """Copy src→dst until EOF, then half-close dst. Small reads allocate per read (idle tunnels
    keep no buffer); once traffic is bulky, switch to one reused buffer."""
    buf: bytearray | None = None
    try:
        while True:
            if buf is None:
                data = src.recv(SMALL_READ)
                if not data:
                    break
                dst.sendall(data)
                counter[index] += len(data)
                if len(data) >= SMALL_READ // 2:
                    buf = bytearray(BULK_BUFFER)
            else:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(memoryview(buf)[:n])
                counter[index] += n
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    except OSError:
        # A reset or a cancel on one leg ends both directions.
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def relay(client: socket.socket, upstream: socket.socket) -> tuple[int, int]:
    """Relay both ways until both directions are done; returns (bytes up, bytes down)."""
    counter = [0, 0]
    client.settimeout(None)
    upstream.settimeout(None)
    down = gevent.spawn(_pump, upstream, client, counter, 1)
    try:
        _pump(client, upstream, counter, 0)
        down.join()
    finally:
        down.kill(block=False)
        for s in (client, upstream):
            try:
                s.close()
            except OSError:
                pass
    return counter[0], counter[1]


def closer(*socks: socket.socket):
    """A callable that tears the given sockets down (used to cancel a live tunnel)."""

    def close() -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    return close
