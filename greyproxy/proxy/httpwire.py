"""Minimal HTTP/1.x wire handling for the proxy: buffered reads, heads, and body framing.

Bodies are relayed as they arrive (never buffered whole); chunked bodies are forwarded
byte-exact, chunk framing included."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

Tap = Callable[[bytes], None]  # sees a body's payload bytes (de-chunked) as they pass

MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer",
     "upgrade"}
)


class WireError(Exception):
    """The peer sent something that is not HTTP/1.x we can handle."""


class BufferedSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self) -> bytes | None:
        """Bytes up to and including the blank line; None on a clean EOF before any byte."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise WireError("header section too large")
            if not self._fill():
                if self.buf:
                    raise WireError("connection closed in the middle of a header section")
                return None

    def readline(self, limit: int = 8192) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > limit:
                raise WireError("line too long")
            if not self._fill():
                raise WireError("connection closed in the middle of a line")

    def read_some(self, max_bytes: int) -> bytes:
        if not self.buf and not self._fill():
            return b""
        chunk = bytes(self.buf[:max_bytes])
        del self.buf[:max_bytes]
        return chunk

    def take_buffered(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data


@dataclass
class Head:
    start: list[str]  # request: [method, target, version]; response: [version, code, reason]
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        name = name.lower()
        out: set[str] = set()
        for key, value in self.headers:
            if key.lower() == name:
                out.update(t.strip().lower() for t in value.split(",") if t.strip())
        return out


def parse_head(raw: bytes, is_request: bool) -> Head:
    try:
        text = raw.decode("iso-8859-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise WireError(str(exc)) from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if is_request:
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise WireError(f"bad request line {lines[0][:100]!r}")
    else:
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise WireError(f"bad status line {lines[0][:100]!r}")
        parts = parts + [""] * (3 - len(parts))
    head = Head(parts)
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise WireError(f"bad header line {line[:100]!r}")
        head.headers.append((name, value.strip()))
    return head


def serialize_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def wants_close(request: Head) -> bool:
    """The client asked for the connection to end after this exchange."""
    tokens = request.tokens("connection")
    return "close" in tokens or (request.start[2] == "HTTP/1.0" and "keep-alive" not in tokens)


def read_final_response(upstream: BufferedSocket, client: socket.socket) -> tuple[bytes, Head]:
    """The response head that answers the request (raw, parsed); interim 1xx heads such as
    100 Continue go straight on to the client (101 is final: the protocol switches)."""
    while True:
        raw = upstream.read_head()
        if raw is None:
            raise WireError("upstream closed before answering")
        head = parse_head(raw, is_request=False)
        if not 100 <= int(head.start[1]) < 200 or head.start[1] == "101":
            return raw, head
        client.sendall(raw)


def response_framing(method: str, response: Head) -> tuple[bool, bool]:
    """(no_body, framed): whether the response has no body, and whether its end is known
    without the upstream closing (a length, chunks, or no body at all)."""
    code = int(response.start[1])
    no_body = method.upper() == "HEAD" or code in (204, 304) or 100 <= code < 200
    framed = no_body or response.get("content-length") is not None or "chunked" in response.tokens(
        "transfer-encoding")
    return no_body, framed


def body_length(head: Head) -> int | None:
    """Content-Length as an int, None if absent; WireError if malformed or conflicting."""
    values = {v.strip() for k, v in head.headers if k.lower() == "content-length"}
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise WireError("bad Content-Length")
    return int(next(iter(values)))


def is_chunked(head: Head) -> bool:
    te = head.tokens("transfer-encoding")
    if te and te != {"chunked"} and "chunked" not in te:
        raise WireError("unsupported Transfer-Encoding")
    return "chunked" in te


def relay_body(
    src: BufferedSocket, dst: socket.socket, head: Head, until_close: bool = False, tap: Tap | None = None
) -> None:
    """Forward one message body from src to dst, framing preserved; `tap` sees the payload."""
    if is_chunked(head):
        while True:
            line = src.readline()
            dst.sendall(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise WireError("bad chunk size") from None
            if size == 0:
                while True:  # trailers, then the final blank line
                    trailer = src.readline()
                    dst.sendall(trailer)
                    if trailer == b"\r\n":
                        return
            _relay_exact(src, dst, size, tap)
            crlf = src.readline()
            if crlf != b"\r\n":
                raise WireError("chunk not followed by CRLF")
            dst.sendall(crlf)
        return
    length = body_length(head)
    if length is not None:
        _relay_exact(src, dst, length, tap)
    elif until_close:
        while True:
            chunk = src.read_some(READ_SIZE)
            if not chunk:
                return
            dst.sendall(chunk)
            if tap is not None:
                tap(chunk)


def forward_message(
    src: BufferedSocket, dst: socket.socket, raw_head: bytes, head: Head, *, no_body: bool = False,
    until_close: bool = False, tap: Tap | None = None,
) -> None:
    """Send a message head and its body. A body that is already buffered whole (the common
    small response) goes out in the same write as the head: one syscall instead of two."""
    if not no_body and not is_chunked(head):
        length = body_length(head)
        if length is not None and len(src.buf) >= length:
            body = bytes(src.buf[:length])
            del src.buf[:length]
            dst.sendall(raw_head + body)
            if tap is not None and body:
                tap(body)
            return
    dst.sendall(raw_head)
    if not no_body:
        relay_body(src, dst, head, until_close=until_close, tap=tap)


def _relay_exact(src: BufferedSocket, dst: socket.socket, remaining: int, tap: Tap | None = None) -> None:
    while remaining > 0:
        chunk = src.read_some(min(remaining, READ_SIZE))
        if not chunk:
            raise WireError("connection closed in the middle of a body")
        dst.sendall(chunk)
        if tap is not None:
            tap(chunk)
        remaining -= len(chunk)


class _BodyTooLarge(Exception):
    pass


class _Collector:
    """A relay destination that keeps what passes: the raw bytes and the payload."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.raw = bytearray()
        self.payload = bytearray()

    def sendall(self, data: bytes) -> None:
        self.raw += data

    def feed(self, chunk: bytes) -> None:
        self.payload += chunk
        if len(self.payload) > self.limit:
            raise _BodyTooLarge


@dataclass
class WholeBody:
    raw: bytes  # as it came off the wire, framing included
    payload: bytes  # de-chunked


def read_whole_body(src: BufferedSocket, head: Head, limit: int, until_close: bool = False) -> WholeBody | None:
    """Read the body of the message whose head was just read, whole, for a middleware to see.
    None when its payload is over `limit`: then the bytes read so far are put back, so the
    stream is as if nothing had been read and the body can still be relayed as it arrives."""
    sink = _Collector(limit)
    try:
        relay_body(src, sink, head, until_close=until_close, tap=sink.feed)  # type: ignore[arg-type]
    except _BodyTooLarge:
        unread(src, bytes(sink.raw))
        return None
    return WholeBody(bytes(sink.raw), bytes(sink.payload))


class _Discard:
    def sendall(self, data: bytes) -> None:
        pass


def discard_body(src: BufferedSocket, head: Head, until_close: bool = False) -> None:
    """Consume a body nobody will forward (a middleware replaced it)."""
    relay_body(src, _Discard(), head, until_close=until_close)  # type: ignore[arg-type]


def unread(src: BufferedSocket, data: bytes) -> None:
    """Put bytes back in front of what is buffered: the next reads return them first."""
    src.buf[:0] = data
