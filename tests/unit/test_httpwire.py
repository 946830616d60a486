"""The strict HTTP/1 engine (proxy/httpwire.py): tables of what RFC 9112 says to refuse, and
properties over generated input — never an exception other than WireError, and whatever is
accepted is passed on in a form that parses back to the same message."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greyproxy.proxy.httpwire import (
    BufferedSocket,
    Head,
    WireError,
    head_bytes,
    parse_head,
    relay_body,
)


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data


def buffered(data: bytes) -> BufferedSocket:
    a, b = socket.socketpair()
    a.sendall(data)
    a.close()
    b.settimeout(2)
    return BufferedSocket(b)


def relay(head: Head, body: bytes) -> tuple[bytes, bytes]:
    """(what goes on, the payload the tap saw)."""
    sink, payload = Sink(), bytearray()
    src = buffered(body)
    try:
        relay_body(src, sink, head, tap=payload.extend)  # type: ignore[arg-type]
    finally:
        src.sock.close()
    return bytes(sink.data), bytes(payload)


REFUSED_HEADS = {
    "bare LF in a field": b"POST / HTTP/1.1\r\nHost: a\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n",
    "bare CR in a field": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "space in a name": b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "NUL in a name": b"GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: z\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "CL and TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "two lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "same length twice": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    "length list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
    "signed length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
    "superscript length": "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \u00b2\r\n\r\n".encode(),
    "TE not chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "TE chunked twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/2.0 line": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED_HEADS))
def test_refused_heads(name):
    with pytest.raises(WireError):
        parse_head(REFUSED_HEADS[name], is_request=True)


@pytest.mark.parametrize("size_line", [b"0x5", b"+5", b"5_0", b"-1", b" 5", b"5 ", b"", b"g", b"5\n"])
def test_bad_chunk_sizes_are_refused(size_line):
    head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", True)
    with pytest.raises(WireError):
        relay(head, size_line + b"\r\nhello\r\n0\r\n\r\n")


def test_chunked_is_reframed_without_extensions_or_trailers():
    head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", True)
    out, payload = relay(head, b"5;a=b\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: x\r\n\r\nNEXT")
    assert out == b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n"
    assert payload == b"hello0123456789"


def test_head_is_rebuilt_not_copied():
    head = parse_head(b"\r\nGET /x HTTP/1.1\r\nHost:   a  \r\nX-A:b\r\n\r\n", True)
    assert head.start == ["GET", "/x", "HTTP/1.1"]
    assert head_bytes(head) == b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n"


def test_response_reason_and_version():
    head = parse_head(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", False)
    assert head.start == ["HTTP/1.0", "404", "Not Found"]


# -- properties -----------------------------------------------------------------------------

TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=20)
ANY_BYTES = st.binary(max_size=300)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=60)), max_size=12), ANY_BYTES)
def test_any_head_parses_or_is_refused_and_round_trips(fields, target):
    raw = b"GET /" + target + b" HTTP/1.1\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in fields) + b"\r\n"
    try:
        head = parse_head(raw, is_request=True)
    except WireError:
        return
    out = head_bytes(head)
    assert b"\n" not in out.replace(b"\r\n", b"") and b"\r" not in out.replace(b"\r\n", b"")
    again = parse_head(out, is_request=True)
    assert again == head


@settings(max_examples=300, deadline=None)
@given(ANY_BYTES)
def test_any_bytes_as_a_head(raw):
    try:
        parse_head(raw + b"\r\n\r\n", is_request=True)
    except WireError:
        pass
    try:
        parse_head(raw + b"\r\n\r\n", is_request=False)
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=6), st.lists(TOKEN, max_size=3))
def test_chunked_payload_survives_reframing(chunks, extensions):
    head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", True)
    ext = "".join(f";{e}" for e in extensions).encode()
    body = b"".join(b"%x" % len(c) + ext + b"\r\n" + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    out, payload = relay(head, body)
    assert payload == b"".join(chunks)
    # What goes on is itself valid chunked framing with the same payload.
    again, payload2 = relay(head, out)
    assert again == out and payload2 == payload


@settings(max_examples=300, deadline=None)
@given(ANY_BYTES)
def test_any_chunked_body_is_relayed_or_refused(body):
    head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", True)
    try:
        out, payload = relay(head, body)
    except WireError:
        return
    assert out.endswith(b"0\r\n\r\n")
