"""Byte-exact relays between two sockets, and dialling upstream under the guard."""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import socket
import weakref
from collections.abc import Callable

import gevent
from gevent import socket as gsocket

from greyproxy.policy.canonical import canonical_ip
from greyproxy.proxy.guard import ControlPlaneGuard
from greyproxy.proxy.resolver import ResolveError, Resolver, system_addresses
from greyproxy.proxy.upstream_proxy import UpstreamDown, UpstreamProxy, UpstreamRefused

DIAL_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 10.0
MAX_DIAL_ADDRESSES = 4  # bounds a dial to a few connect timeouts
BULK_BUFFER = 256 * 1024
SMALL_READ = 64 * 1024
# splice(2): a bulky tunnel between two plain sockets moves its bytes through a pipe in the
# kernel, never through Python (docs/benchmarks.md). The pipe is made only once a tunnel turns
# bulky, so idle tunnels cost no extra fds. 1 MiB (the default pipe-max-size) costs about a
# fifth less CPU per GiB than 256 KiB; past an unprivileged user's pipe budget
# (pipe-user-pages-soft, 64 MiB of pipe capacity) a pipe gets the smaller sizes, then the default.
PIPE_SIZES = (1024 * 1024, 256 * 1024)
PIPE_SIZE = PIPE_SIZES[0]
FAIR_BYTES = 8 * 1024 * 1024  # yield to other greenlets after this much without waiting
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
# GREYPROXY_SPLICE=0 keeps every tunnel on the recv/send copy (a comparison, or an odd kernel).
SPLICE = hasattr(os, "splice") and os.environ.get("GREYPROXY_SPLICE", "1") != "0"
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
    raw = _socket.socket(family, socket.SOCK_STREAM)  # the C type: never monkey-patched, never waits
    try:
        raw.setblocking(False)
        err = raw.connect_ex((ip, port))
        if err == errno.EINPROGRESS:
            err = raw.connect_ex((ip, port))
            if err == errno.EISCONN:
                err = 0
        if err not in (0, errno.EALREADY, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except BaseException:
        raw.close()
        raise
    sock = gsocket.socket(family, socket.SOCK_STREAM, fileno=raw.detach())
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


Watch = Callable[[bytes], "bool | None"]  # None: keep watching; True: pipe on; False: cut


def _pump(src: socket.socket, dst: socket.socket, counter: list[int], index: int, watch: Watch | None = None) -> None:
    """Copy src→dst until EOF, then half-close dst. Small reads allocate per read (idle tunnels
    keep no buffer); once traffic is bulky, switch to splice(2) when both ends are plain
    sockets, else to one reused buffer."""
    buf: bytearray | None = None
    try:
        while True:
            if buf is None:
                data = src.recv(SMALL_READ)
                if not data:
                    break
                if watch is not None:
                    verdict = watch(data)
                    if verdict is False:
                        raise ConnectionAbortedError("the watched stream turned out to need inspection")
                    if verdict is True:
                        watch = None
                dst.sendall(data)
                counter[index] += len(data)
                if len(data) >= SMALL_READ // 2 and watch is None:
                    if _spliceable(src) and _spliceable(dst) and _splice(src, dst, counter, index):
                        break  # src reached EOF
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


def _spliceable(sock: socket.socket) -> bool:
    # Exactly gevent's plain socket: an SSL socket (a subclass) or a buffering wrapper holds
    # bytes the kernel does not see.
    return SPLICE and type(sock) is gsocket.socket and sock.type == socket.SOCK_STREAM


def _open_pipe() -> tuple[int, int] | None:
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # out of fds: the copy needs none
    for size in PIPE_SIZES:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
            break
        except OSError:
            continue  # over the user's pipe budget or pipe-max-size: smaller, or the default, still works
    return r, w


def _wait(sock: socket.socket, write: bool) -> None:
    """Wait on the socket's own event-loop watcher, so a close from another greenlet (a revoked
    rule's closer, the other direction's error) cancels the wait with EBADF and the fd number,
    soon free for reuse, is never spliced again."""
    event = sock._write_event if write else sock._read_event  # type: ignore[attr-defined]
    if event is None:  # closed meanwhile
        raise OSError(errno.EBADF, "the socket was closed")
    sock._wait(event)  # type: ignore[attr-defined]


def _check_open(*socks: socket.socket) -> None:
    """After any yield: a socket closed meanwhile (its watchers dropped) ends the splice."""
    for sock in socks:
        if sock._read_event is None:  # type: ignore[attr-defined]
            raise OSError(errno.EBADF, "the socket was closed")


def _splice(src: socket.socket, dst: socket.socket, counter: list[int], index: int) -> bool:
    """Move src→dst through a pipe until src's EOF (True). False: splice cannot be used here,
    nothing was moved, the caller copies. Raises OSError as recv/send would."""
    pipe = _open_pipe()
    if pipe is None:
        return False
    r, w = pipe
    src_fd, dst_fd = src.fileno(), dst.fileno()
    moved = 0
    unwaited = 0
    try:
        while True:
            try:
                n = os.splice(src_fd, w, PIPE_SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                unwaited = 0
                _wait(src, write=False)
                _check_open(src, dst)
                continue
            except OSError as exc:
                if not moved and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return False
                raise
            if n == 0:
                return True
            while n:  # the pipe is emptied before the next read: its bytes are never lost on EOF
                try:
                    m = os.splice(r, dst_fd, n, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    unwaited = 0
                    _wait(dst, write=True)
                    _check_open(src, dst)
                    continue
                n -= m
                moved += m
                counter[index] += m
                unwaited += m
            if unwaited >= FAIR_BYTES:  # a sender and receiver that never block must not starve the rest
                unwaited = 0
                gevent.sleep(0)
                _check_open(src, dst)
    finally:
        os.close(r)
        os.close(w)


def relay(client: socket.socket, upstream: socket.socket, watch: Watch | None = None) -> tuple[int, int]:
    """Relay both ways until both directions are done; returns (bytes up, bytes down).
    `watch`, when given, sees the client's bytes before they go on, until it decides."""
    counter = [0, 0]
    client.settimeout(None)
    upstream.settimeout(None)
    down = gevent.spawn(_pump, upstream, client, counter, 1)
    try:
        _pump(client, upstream, counter, 0, watch)
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
