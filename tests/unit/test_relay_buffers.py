"""relay's socket buffers on real loopback sockets: a bulky tunnel between near peers gets big
fixed buffers on the legs it reads from and writes to; a leg to a far peer (here: every peer,
by lowering the threshold) keeps the kernel's autotuning; an idle tunnel is left alone."""

from __future__ import annotations

import os
import socket

import gevent
import pytest
from gevent import socket as gsocket

from greyproxy.proxy import relay

SIZE = 8 << 20


def _pair() -> tuple[gsocket.socket, gsocket.socket]:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    a = gsocket.create_connection(listener.getsockname(), timeout=5)
    b, _ = listener.accept()
    listener.close()
    return a, b


def _run(size: int) -> tuple[int, int, tuple[int, int]]:
    """Origin → upstream → relay → client → agent: `size` bytes down, nothing up. Returns the
    client leg's send buffer and the upstream leg's receive buffer, seen while the relay runs,
    and the relay's counts."""
    data = os.urandom(size)
    agent, client = _pair()
    upstream, origin = _pair()
    job = gevent.spawn(relay.relay, client, upstream)
    gevent.spawn(lambda: (origin.sendall(data), origin.close()))
    agent.shutdown(socket.SHUT_WR)
    got = bytearray()
    sndbuf = rcvbuf = 0
    with gevent.Timeout(60):
        while chunk := agent.recv(1 << 20):
            got += chunk
            try:  # the relay closes both once done
                sndbuf = max(sndbuf, client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
                rcvbuf = max(rcvbuf, upstream.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            except OSError:
                pass
        counts = job.get()
    agent.close()
    assert bytes(got) == data
    return sndbuf, rcvbuf, counts


def _want(option: int) -> int:
    return 2 * min(relay.BULK_SOCKET_BUFFER, relay._BUFFER_MAX[option])


def test_a_bulky_tunnel_between_near_peers_gets_big_buffers():
    sndbuf, rcvbuf, counts = _run(SIZE)
    assert counts == (0, SIZE)
    assert sndbuf >= _want(socket.SO_SNDBUF)
    assert rcvbuf >= _want(socket.SO_RCVBUF)


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_a_far_leg_keeps_autotuning(monkeypatch, splice):
    monkeypatch.setattr(relay, "NEAR_RTT_US", 0)  # every peer counts as far
    monkeypatch.setattr(relay, "SPLICE", splice and relay.SPLICE)
    widened: list[int] = []
    real = gsocket.socket.setsockopt

    def spy(self, level, option, value, *rest):  # type: ignore[no-untyped-def]
        if level == socket.SOL_SOCKET and option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            widened.append(option)
        return real(self, level, option, value, *rest)

    monkeypatch.setattr(gsocket.socket, "setsockopt", spy)
    _, _, counts = _run(SIZE)
    assert counts == (0, SIZE)
    assert widened == []


def test_an_idle_tunnel_keeps_its_buffers(monkeypatch):
    widened: list[int] = []
    monkeypatch.setattr(relay, "_widen", lambda sock, option: widened.append(option))
    _, _, counts = _run(1000)  # small reads only: never bulky
    assert counts == (0, 1000)
    assert widened == []
