"""tunnel._connect on real loopback sockets: connected at once to a listening peer, refused as
an OSError, and a connect the peer does not answer (its accept queue is full) waits in the event
loop, other greenlets running, until the dial timeout."""

from __future__ import annotations

import socket
import time

import gevent
import pytest
from gevent import socket as gsocket

from greyproxy.proxy import tunnel


def test_connects_and_carries_bytes():
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sock = tunnel._connect("127.0.0.1", listener.getsockname()[1], 5.0)
    peer, _ = listener.accept()
    assert type(sock) is gsocket.socket and sock.gettimeout() is None
    sock.sendall(b"ping")
    assert peer.recv(4) == b"ping"
    for s in (sock, peer, listener):
        s.close()


def test_refused_is_an_oserror():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # bound, never listening: nothing answers there now
    with pytest.raises(ConnectionRefusedError):
        tunnel._connect("127.0.0.1", port, 5.0)


def test_an_unanswered_connect_waits_cooperatively_until_the_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):  # fill the accept queue: further SYNs are dropped, connects stay pending
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    gevent.sleep(0.2)
    ticks = [0]

    def tick() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0.05)

    ticker = gevent.spawn(tick)
    started = time.monotonic()
    try:
        with pytest.raises(OSError):
            tunnel._connect("127.0.0.1", listener.getsockname()[1], 1.0)
    finally:
        ticker.kill()
        for s in (*fillers, listener):
            s.close()
    assert 0.9 <= time.monotonic() - started < 5
    assert ticks[0] >= 10  # the hub ran other greenlets meanwhile
