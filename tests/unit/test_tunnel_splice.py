"""byte_relay.relay() on real loopback sockets in this process: a bulky tunnel between plain
sockets moves through a kernel pipe (splice), a tunnel torn down mid-transfer (a revoked rule's
closer) ends the relay at once, and no pipe fd outlives its tunnel."""

from __future__ import annotations

import hashlib
import os

import gevent
import pytest
from gevent import socket as gsocket

from greyproxy.proxy import relay as byte_relay

pytestmark = pytest.mark.skipif(not byte_relay.SPLICE, reason="no splice(2) here")

SIZE = 32 << 20


def _pipes() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


def _pair() -> tuple[gsocket.socket, gsocket.socket]:
    """Two ends of one loopback TCP connection (gevent sockets, as the listeners hand out)."""
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    a = gsocket.create_connection(listener.getsockname(), timeout=5)
    b, _ = listener.accept()
    listener.close()
    return a, b


def test_bulk_goes_through_a_pipe_byte_for_byte():
    data = os.urandom(SIZE)
    agent, client = _pair()  # agent ↔ proxy's client side
    upstream, origin = _pair()  # proxy's upstream side ↔ origin
    before = _pipes()
    relay = gevent.spawn(byte_relay.relay, client, upstream)

    def serve() -> None:
        origin.sendall(data)
        origin.close()

    gevent.spawn(serve)
    agent.shutdown(gsocket.SHUT_WR)  # nothing up: the other direction ends at once
    got, buf, seen_pipe = hashlib.sha256(), bytearray(1 << 20), False
    total = 0
    with gevent.Timeout(60):
        while True:
            n = agent.recv_into(buf)
            if not n:
                break
            got.update(memoryview(buf)[:n])
            total += n
            seen_pipe = seen_pipe or _pipes() > before
        assert relay.get() == (0, SIZE)
    agent.close()
    assert total == SIZE and got.digest() == hashlib.sha256(data).digest()
    assert seen_pipe, "a bulky plain tunnel should splice through a pipe"
    assert _pipes() == before


def test_a_tunnel_closed_mid_splice_ends_and_leaks_no_pipe():
    agent, client = _pair()
    upstream, origin = _pair()
    before = _pipes()
    relay = gevent.spawn(byte_relay.relay, client, upstream)
    chunk = b"z" * (1 << 20)

    def flood() -> None:  # far more than the socket buffers hold: the relay ends up waiting to write
        try:
            for _ in range(512):
                origin.sendall(chunk)
        except OSError:
            pass

    feeder = gevent.spawn(flood)
    with gevent.Timeout(30):
        first = agent.recv(1 << 16)  # the tunnel is flowing, then the agent stops reading
        while _pipes() == before:
            gevent.sleep(0.01)
        byte_relay.closer(client, upstream)()  # what revoking the rule does
        up, down = relay.get()
    assert first and up == 0 and 0 < down < 512 * len(chunk)
    feeder.kill()
    for sock in (agent, origin):
        sock.close()
    assert _pipes() == before


def test_plain_copy_when_splice_is_off(monkeypatch):
    monkeypatch.setattr(byte_relay, "SPLICE", False)
    data = os.urandom(4 << 20)
    agent, client = _pair()
    upstream, origin = _pair()
    before = _pipes()
    relay = gevent.spawn(byte_relay.relay, client, upstream)
    gevent.spawn(lambda: (origin.sendall(data), origin.close()))
    agent.shutdown(gsocket.SHUT_WR)
    received = bytearray()
    with gevent.Timeout(60):
        while chunk := agent.recv(1 << 20):
            received += chunk
            assert _pipes() == before
        assert relay.get() == (0, len(data))
    agent.close()
    assert bytes(received) == data


def test_many_bulky_tunnels_at_once_each_get_their_own_bytes():
    """Concurrent spliced tunnels share one event loop: each carries its own bytes, whole, and
    every pipe is gone after."""
    count, size = 24, 4 << 20
    payloads = [os.urandom(size) for _ in range(count)]
    before = _pipes()
    relays, agents = [], []
    for data in payloads:
        agent, client = _pair()
        upstream, origin = _pair()
        relays.append(gevent.spawn(byte_relay.relay, client, upstream))
        gevent.spawn(lambda o=origin, d=data: (o.sendall(d), o.close()))
        agent.shutdown(gsocket.SHUT_WR)
        agents.append(agent)

    def drain(agent: gsocket.socket) -> bytes:
        got = bytearray()
        while chunk := agent.recv(1 << 20):
            got += chunk
        agent.close()
        return bytes(got)

    with gevent.Timeout(120):
        readers = [gevent.spawn(drain, a) for a in agents]
        gevent.joinall(readers, raise_error=True)
        assert [r.get() for r in relays] == [(0, size)] * count
    assert [hashlib.sha256(r.value).digest() for r in readers] == [hashlib.sha256(d).digest() for d in payloads]
    assert _pipes() == before
