"""The ClientHello reader (tlshello): real hellos from Python's TLS client, split and
fragmented every way, and hostile bytes that must end as need_more / malformed, never raise."""

from __future__ import annotations

import random
import socket
import ssl
import sys
import time

import gevent
import pytest
from gevent import socket as gsocket

from greyproxy.proxy.tlshello import (
    MAX_HELLO_BYTES,
    MAX_RECORD,
    HelloParser,
    parse_hello,
    peek_hello,
)


def client_hello(server_name: str | None = "b.test", alpn: list[str] | None = None,
                 maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> bytes:
    """The first flight of Python's TLS client (one record, as sent on the wire)."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def refragment(hello: bytes, sizes: list[int]) -> bytes:
    """The same handshake message, carried in records of the given payload sizes (the last
    record takes the rest): legal TLS, as a hostile client might send it."""
    header, payload = hello[:5], hello[5:]
    out, pos = b"", 0
    for size in [*sizes, len(payload)]:
        chunk = payload[pos:pos + size]
        if not chunk:
            break
        out += header[:3] + len(chunk).to_bytes(2, "big") + chunk
        pos += len(chunk)
    return out


def with_server_name(hello: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and hello.count(old) == 1
    return hello.replace(old, new)


def test_server_name_of_a_real_hello():
    hello = client_hello("b.test", alpn=["h2", "http/1.1"])
    result = parse_hello(hello)
    assert (result.status, result.server_name) == ("ok", "b.test")


def test_hello_without_server_name_is_ok_with_none():
    result = parse_hello(client_hello(None))
    assert (result.status, result.server_name) == ("ok", None)


def test_tls12_only_client():
    result = parse_hello(client_hello("old.test", maximum=ssl.TLSVersion.TLSv1_2))
    assert (result.status, result.server_name) == ("ok", "old.test")


def test_bytes_after_the_hello_are_not_looked_at():
    hello = client_hello("b.test")
    assert parse_hello(hello + b"\x17\x03\x03\x00\x03abc" + b"garbage").server_name == "b.test"


def test_split_at_every_byte_into_two_pieces():
    hello = client_hello("split.example")
    for cut in range(len(hello) + 1):
        parser = HelloParser()
        first = parser.feed(hello[:cut])
        if cut < len(hello):
            assert first.status == "need_more", cut
            # what is asked for is never more than the record
            assert cut < first.need <= len(hello), cut
            assert parse_hello(hello[:cut]).status == "need_more"
        second = parser.feed(hello[cut:])
        assert (second.status, second.server_name) == ("ok", "split.example"), cut


def test_one_byte_at_a_time():
    hello = client_hello("drip.example")
    parser = HelloParser()
    for i in range(len(hello) - 1):
        assert parser.feed(hello[i:i + 1]).status == "need_more"
    assert parser.feed(hello[-1:]).server_name == "drip.example"


@pytest.mark.parametrize("sizes", [[1], [40], [100, 100], [1] * 300])
def test_hello_fragmented_over_several_records(sizes):
    hello = refragment(client_hello("frag.example"), sizes)
    result = parse_hello(hello)
    assert (result.status, result.server_name) == ("ok", "frag.example")
    for cut in (1, 7, len(hello) // 2, len(hello) - 1):
        parser = HelloParser()
        assert parser.feed(hello[:cut]).status == "need_more"
        assert parser.feed(hello[cut:]).server_name == "frag.example"


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x00\x05hello",          # a record, but no hello inside
    b"\x17\x03\x03\x00\x05hello",          # application data first
    b"\x15\x03\x03\x00\x02\x02\x28",        # an alert
    b"\x16\x02\x00\x00\x05hello",          # not version 3.x
    b"\x16\x03\x01\x00\x00",               # an empty record
    b"\x16\x03\x01\x40\x01" + b"\x01" * 16385,  # longer than a record may be
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_garbage_is_malformed(data):
    assert parse_hello(data).status == "malformed"


def test_truncated_records_need_more():
    hello = client_hello("b.test")
    for n in (0, 1, 4, 5, 6, len(hello) // 2, len(hello) - 1):
        result = parse_hello(hello[:n])
        assert result.status == "need_more" and result.need > n


def test_a_record_that_is_not_handshake_in_the_middle_is_malformed():
    hello = refragment(client_hello("b.test"), [50])
    second = 5 + 50
    broken = hello[:second] + b"\x17" + hello[second + 1:]
    assert parse_hello(broken).status == "malformed"


def test_hello_larger_than_the_bound_is_malformed_without_waiting_for_it():
    # A handshake message announcing 100 KB, in full records: refused once the bound is passed.
    body = b"\x01" + (100_000).to_bytes(3, "big") + b"\x03\x03" + b"\x00" * (MAX_RECORD - 6)
    records = b"".join(b"\x16\x03\x01" + MAX_RECORD.to_bytes(2, "big") + (body if i == 0 else b"\x00" * MAX_RECORD)
                       for i in range(5))
    assert parse_hello(records).status == "malformed"
    assert len(records) > MAX_HELLO_BYTES


def test_non_ascii_server_name_is_malformed_and_quiet(capsys):
    hello = with_server_name(client_hello("bxxest.test"), b"bxxest", "bées".encode() + b"t")
    seen = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        result = parse_hello(hello)
    finally:
        sys.unraisablehook = previous
    assert result.status == "malformed"
    assert seen == [] and sys.unraisablehook is previous
    assert capsys.readouterr().err == ""


def test_server_name_with_a_nul_byte_is_malformed():
    hello = with_server_name(client_hello("ab.test"), b"ab.test", b"a\x00.test")
    assert parse_hello(hello).status == "malformed"


def test_random_corruption_never_raises():
    rng = random.Random(1234)
    hello = client_hello("fuzz.example", alpn=["h2"])
    for _ in range(3000):
        data = bytearray(hello)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        result = parse_hello(bytes(data))
        assert result.status in ("ok", "need_more", "malformed")
    for _ in range(500):
        noise = b"\x16\x03" + rng.randbytes(rng.randrange(0, 600))
        assert parse_hello(noise).status in ("need_more", "malformed")


def test_cost_per_hello_is_small():
    hello = client_hello("cost.example", alpn=["h2", "http/1.1"])
    parse_hello(hello)
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        parse_hello(hello)
    per_hello = (time.perf_counter() - start) / rounds
    print(f"tlshello: {per_hello * 1e6:.1f} µs per {len(hello)}-byte hello")
    assert per_hello < 500e-6  # generous for slow CI; measured ~20 µs


# -- peeking a real socket: nothing is consumed ----------------------------------------


def tcp_pair() -> tuple[gsocket.socket, gsocket.socket]:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    writer = gsocket.create_connection(listener.getsockname())
    reader, _ = listener.accept()
    listener.close()
    for s in (writer, reader):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return writer, reader


def test_peek_waits_for_a_hello_in_pieces_and_consumes_nothing():
    hello = refragment(client_hello("peek.example"), [300])
    writer, reader = tcp_pair()
    pieces = [hello[:3], hello[3:200], hello[200:310], hello[310:]]

    def send():
        for piece in pieces:
            gevent.sleep(0.05)
            writer.sendall(piece)

    sender = gevent.spawn(send)
    start = time.monotonic()
    result = peek_hello(reader, timeout=5)
    sender.join()
    assert (result.status, result.server_name) == ("ok", "peek.example")
    assert time.monotonic() - start < 2
    # SO_RCVLOWAT is back to 1 and every byte is still there to read
    assert reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    reader.settimeout(2)
    got = b""
    while len(got) < len(hello):
        got += reader.recv(65536)
    assert got == hello
    writer.close()
    reader.close()


def test_peek_with_early_bytes_already_read():
    hello = client_hello("early.example")
    writer, reader = tcp_pair()
    writer.sendall(hello[100:])
    result = peek_hello(reader, early=hello[:100], timeout=5)
    assert (result.status, result.server_name) == ("ok", "early.example")
    reader.settimeout(2)
    assert reader.recv(65536) == hello[100:]
    writer.close()
    reader.close()


def test_peek_gives_up_on_a_stalled_or_closed_client():
    hello = client_hello("stall.example")
    writer, reader = tcp_pair()
    writer.sendall(hello[:50])
    start = time.monotonic()
    assert peek_hello(reader, timeout=0.5).status == "incomplete"
    assert 0.4 < time.monotonic() - start < 2
    writer.shutdown(socket.SHUT_WR)
    start = time.monotonic()
    assert peek_hello(reader, timeout=1.0).status == "incomplete"
    writer.close()
    reader.close()
    writer, reader = tcp_pair()
    writer.close()
    assert peek_hello(reader, timeout=5).status == "incomplete"
    reader.close()
