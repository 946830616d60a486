"""The byte relay of a tunnel: both directions between two sockets until each is done, moving
bulk through a kernel pipe (splice) between plain sockets, or a reused buffer otherwise."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

import gevent
from gevent import socket as gsocket

# The copy's one reused buffer once a tunnel turns bulky: 1 MiB between plain sockets (with the
# 4 MiB socket buffers below, a quarter fewer recv/send pairs and about a fifth less CPU per GiB
# than 256 KiB); an SSL socket returns at most one 16 KiB record per read, so it keeps 256 KiB.
BULK_BUFFER = 1024 * 1024
TLS_BULK_BUFFER = 256 * 1024
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
# A bulky leg to a near peer (loopback, the same host or LAN) gets fixed 4 MiB socket buffers.
# TCP autotuning sizes a buffer to rate × RTT, so on such a leg it stays at a few hundred KiB and
# the relay wakes, and moves a little, for every few hundred KiB; with 4 MiB each wake-up moves
# megabytes, which costs about a third less proxy CPU per GiB (docs/benchmarks.md). A far leg
# keeps autotuning: a fixed buffer would cap its window below what autotuning reaches on a
# long path. Never set below what the kernel already gives (rmem_max/wmem_max may clamp it).
BULK_SOCKET_BUFFER = 4 * 1024 * 1024
NEAR_RTT_US = 1000
_TCPI_RTT = 68  # offset of tcpi_rtt (µs) in struct tcp_info (linux/tcp.h)
# GREYPROXY_SPLICE=0 keeps every tunnel on the recv/send copy (a comparison, or an odd kernel).
SPLICE = hasattr(os, "splice") and os.environ.get("GREYPROXY_SPLICE", "1") != "0"

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
                    _widen(src, socket.SO_RCVBUF)
                    _widen(dst, socket.SO_SNDBUF)
                    if _spliceable(src) and _spliceable(dst) and _splice(src, dst, counter, index):
                        break  # src reached EOF
                    buf = bytearray(BULK_BUFFER if _plain(src) else TLS_BULK_BUFFER)
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


def _sysctl(name: str, default: int) -> int:
    try:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


_BUFFER_MAX = {  # what an unprivileged SO_RCVBUF/SO_SNDBUF is clamped to
    socket.SO_RCVBUF: _sysctl("rmem_max", 212992),
    socket.SO_SNDBUF: _sysctl("wmem_max", 212992),
}


def _widen(sock: socket.socket, option: int) -> None:
    """Give a bulky leg to a near peer a big fixed buffer (see BULK_SOCKET_BUFFER)."""
    want = min(BULK_SOCKET_BUFFER, _BUFFER_MAX[option])
    try:
        if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, option) >= 2 * want:
            return  # the kernel doubles what is set: already as big
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        if len(info) < _TCPI_RTT + 4 or struct.unpack_from("I", info, _TCPI_RTT)[0] >= NEAR_RTT_US:
            return
        sock.setsockopt(socket.SOL_SOCKET, option, want)
    except OSError:
        pass  # not TCP, closed, or refused: autotuning stays


def _plain(sock: socket.socket) -> bool:
    # Exactly gevent's plain socket: an SSL socket (a subclass) or a buffering wrapper holds
    # bytes the kernel does not see.
    return type(sock) is gsocket.socket and sock.type == socket.SOCK_STREAM


def _spliceable(sock: socket.socket) -> bool:
    return SPLICE and _plain(sock)


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
