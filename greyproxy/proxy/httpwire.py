"""HTTP/1.x on the wire, strictly: buffered reads, heads parsed by llhttp, bodies re-framed.

The agent controls every byte it sends, so nothing it sends is forwarded as it arrived:
- a head is parsed by llhttp (through httptools, the parser Node.js uses), which refuses what
  RFC 9112 tells an intermediary to refuse (bare CR or LF in a field, obs-fold, invalid names,
  both Content-Length and Transfer-Encoding, non-digit or repeated lengths, bad chunk sizes);
- what goes on is serialized from the parsed head, so the next hop reads exactly the message
  the proxy checked (see docs/design.md, "One strict HTTP/1 engine");
- a chunked body is fed through llhttp piece by piece (each size line, data run and trailer
  exactly as consumed) and sent on in our own chunk framing: extensions and trailers dropped.

We decide how many bytes llhttp sees (one head, one chunk line, one data run), so it never runs
ahead into the next pipelined message; llhttp decides whether those bytes are valid."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
from gevent import socket as gsocket

Tap = Callable[[bytes], None]  # sees a body's payload bytes (de-chunked) as they pass

MAX_HEAD = 64 * 1024
MAX_HEADERS = 200
MAX_CHUNK_LINE = 4096
READ_SIZE = 64 * 1024

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer",
     "upgrade"}
)


class WireError(Exception):
    """The peer sent something that is not HTTP/1.x we may pass on; `status` is the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


_PLAIN = gsocket.socket  # gevent's plain socket class: not TLS, not an HTTP/2 stream's stand-in


def send_all(sock: socket.socket, data: bytes) -> None:
    """`sock.sendall(data)`, as one send(2) when the kernel takes it all at once (a head or a
    short answer nearly always): gevent's sendall first asks the socket's SO_SNDBUF and sets up
    a deadline, which costs more than the send. The rest, if any, goes through sendall (its
    waits and the socket's timeout)."""
    if type(sock) is _PLAIN:
        try:
            sent = sock._sock.send(data)  # type: ignore[attr-defined]  # the non-blocking C socket
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]  # type: ignore[assignment]
    sock.sendall(data)


class BufferedSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> bool:
        """One read into the buffer; False on EOF."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    def buffered_head(self) -> bytes | None:
        """The next head if it is already whole in the buffer (no read), else None."""
        while self.buf[:2] == b"\r\n":
            del self.buf[:2]
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        return head

    def read_head(self) -> bytes | None:
        """Bytes up to and including the blank line; None on a clean EOF before any byte.
        Empty lines before a request line are skipped (RFC 9112 §2.2)."""
        while True:
            head = self.buffered_head()
            if head is not None:
                return head
            if len(self.buf) > MAX_HEAD:
                raise WireError("header section too large", 431)
            if not self.fill():
                if self.buf:
                    raise WireError("connection closed in the middle of a header section")
                return None

    def readline(self, limit: int = MAX_CHUNK_LINE) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                if end > limit:
                    raise WireError("line too long")
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > limit:
                raise WireError("line too long")
            if not self.fill():
                raise WireError("connection closed in the middle of a line")

    def read_some(self, max_bytes: int) -> bytes:
        if not self.buf and not self.fill():
            return b""
        chunk = bytes(self.buf[:max_bytes])
        del self.buf[:max_bytes]
        return chunk

    def read_exact(self, n: int) -> bytes:
        """Exactly n bytes; WireError if the peer closes first."""
        data = bytearray()
        while len(data) < n:
            chunk = self.read_some(n - len(data))
            if not chunk:
                raise WireError("connection closed in the middle of a message", 502)
            data += chunk
        return bytes(data)

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

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> set[str]:
        name = name.lower()
        out: set[str] = set()
        for key, value in self.headers:
            if key.lower() == name:
                out.update(t.strip().lower() for t in value.split(",") if t.strip())
        return out


class _HeadCollector:
    """httptools callbacks for one head: the target or reason, and the fields in order."""

    __slots__ = ("url", "status", "headers", "complete", "done")

    def __init__(self) -> None:
        self.url = b""
        self.status = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False  # the head is complete
        self.done = False  # the whole message is (no body follows)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADERS:
            raise WireError(f"more than {MAX_HEADERS} header fields", 431)
        self.headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))  # no OWS

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_message_complete(self) -> None:
        self.done = True


def _llhttp_error(exc: Exception) -> WireError:
    cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
    if isinstance(cause, WireError):
        return cause
    return WireError(f"malformed HTTP: {exc}")


def parse_head(raw: bytes, is_request: bool) -> Head:
    """A complete head (ending with the blank line) → Head; WireError if llhttp refuses it or
    it asks for framing we will not pass on."""
    collector = _HeadCollector()
    parser: httptools.HttpRequestParser | httptools.HttpResponseParser
    parser = httptools.HttpRequestParser(collector) if is_request else httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT or Upgrade: the head is complete, what follows is not HTTP
    except httptools.HttpParserError as exc:
        raise _llhttp_error(exc) from None
    if not collector.complete:
        raise WireError("incomplete header section")
    version = parser.get_http_version()
    if version not in ("1.0", "1.1"):
        raise WireError(f"HTTP/{version} is not supported here", 505)
    if is_request:
        start = [parser.get_method().decode("ascii"), collector.url.decode("latin-1"), f"HTTP/{version}"]
    else:
        start = [f"HTTP/{version}", str(parser.get_status_code()), collector.status.decode("latin-1")]
    head = Head(start, collector.headers)
    _check_framing(head, is_request)
    return head


def _check_framing(head: Head, is_request: bool) -> None:
    lengths = head.get_all("content-length")
    codings = head.tokens("transfer-encoding")
    if len(lengths) > 1:  # llhttp refuses most repeats; identical ones never reach the next hop
        raise WireError("more than one Content-Length")
    if lengths and codings:
        raise WireError("both Content-Length and Transfer-Encoding")
    if is_request and codings and (codings != {"chunked"} or len(head.get_all("transfer-encoding")) > 1):
        raise WireError("only Transfer-Encoding: chunked is accepted on a request", 501)


def serialize_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def head_bytes(head: Head) -> bytes:
    """The head as we send it on: rebuilt from what was parsed, never the bytes received."""
    return serialize_head(" ".join(head.start).rstrip(), head.headers)


def wants_close(request: Head) -> bool:
    """The client asked for the connection to end after this exchange."""
    tokens = request.tokens("connection")
    return "close" in tokens or (request.start[2] == "HTTP/1.0" and "keep-alive" not in tokens)


def read_response_head(upstream: BufferedSocket) -> Head:
    raw = upstream.read_head()
    if raw is None:
        raise WireError("upstream closed before answering", 502)
    return parse_head(raw, is_request=False)


def read_final_response(upstream: BufferedSocket, client: socket.socket) -> Head:
    """The response head that answers the request; interim 1xx heads such as 100 Continue go
    straight on to the client (101 is final: the protocol switches)."""
    while True:
        head = read_response_head(upstream)
        if not 100 <= int(head.start[1]) < 200 or head.start[1] == "101":
            return head
        send_all(client, head_bytes(head))


def response_framing(method: str, response: Head) -> tuple[bool, bool]:
    """(no_body, framed): whether the response has no body, and whether its end is known
    without the upstream closing (a length, chunks, or no body at all)."""
    code = int(response.start[1])
    no_body = method.upper() == "HEAD" or code in (204, 304) or 100 <= code < 200
    framed = no_body or body_length(response) is not None or is_chunked(response)
    return no_body, framed


def body_length(head: Head) -> int | None:
    """Content-Length as an int (llhttp checked it is digits), None if absent."""
    value = head.get("content-length")
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise WireError("bad Content-Length")
    return int(value)


def is_chunked(head: Head) -> bool:
    """The body is chunked: chunked is the final transfer coding (RFC 9112 §6.3)."""
    values = head.get_all("transfer-encoding")
    if not values:
        return False
    last = values[-1].rsplit(",", 1)[-1].strip().lower()
    return last == "chunked"


class _ChunkChecker:
    """llhttp primed with a chunked message head; fed each piece of a chunked body as it is
    consumed, it raises on anything RFC 9112 does not allow."""

    def __init__(self) -> None:
        self.done = False
        self._parser = httptools.HttpRequestParser(self)
        self._parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

    def on_message_complete(self) -> None:
        self.done = True

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise _llhttp_error(exc) from None


def _relay_chunked(src: BufferedSocket, dst: socket.socket, tap: Tap | None) -> None:
    checker = _ChunkChecker()
    while True:
        line = src.readline()
        checker.feed(line)
        size = int(line.split(b";", 1)[0].strip(), 16)  # llhttp accepted it: hex digits only
        if size == 0:
            break
        dst.sendall(b"%x\r\n" % size)
        _relay_exact(src, dst, size, tap, checker.feed)
        crlf = src.readline()
        checker.feed(crlf)
        dst.sendall(b"\r\n")
    while not checker.done:  # trailer fields, then the blank line: checked, not passed on
        checker.feed(src.readline(MAX_HEAD))
    dst.sendall(b"0\r\n\r\n")


def relay_body(
    src: BufferedSocket, dst: socket.socket, head: Head, until_close: bool = False, tap: Tap | None = None
) -> None:
    """Forward one message body from src to dst, re-framed; `tap` sees the payload."""
    if is_chunked(head):
        _relay_chunked(src, dst, tap)
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
    src: BufferedSocket, dst: socket.socket, head: Head, *, no_body: bool = False,
    until_close: bool = False, tap: Tap | None = None,
) -> None:
    """Send a message head and its body. A body that is already buffered whole (the common
    small response) goes out in the same write as the head: one syscall instead of two."""
    out = head_bytes(head)
    if not no_body and not is_chunked(head):
        length = body_length(head)
        if length is not None and len(src.buf) >= length:
            body = bytes(src.buf[:length])
            del src.buf[:length]
            send_all(dst, out + body)
            if tap is not None and body:
                tap(body)
            return
    dst.sendall(out)
    if not no_body:
        relay_body(src, dst, head, until_close=until_close, tap=tap)


def _relay_exact(src: BufferedSocket, dst: socket.socket, remaining: int, tap: Tap | None = None,
                 check: Tap | None = None) -> None:
    while remaining > 0:
        chunk = src.read_some(min(remaining, READ_SIZE))
        if not chunk:
            raise WireError("connection closed in the middle of a body")
        if check is not None:
            check(chunk)
        dst.sendall(chunk)
        if tap is not None:
            tap(chunk)
        remaining -= len(chunk)


class _BodyTooLarge(Exception):
    pass


class _Collector:
    """A relay destination that keeps what passes: the re-framed bytes and the payload."""

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
    raw: bytes  # as framed for the next hop (our chunking, or the exact length)
    payload: bytes  # de-chunked


def read_whole_body(src: BufferedSocket, head: Head, limit: int, until_close: bool = False) -> WholeBody | None:
    """Read the body of the message whose head was just read, whole, for a middleware to see.
    None when its payload is over `limit`: then the bytes read so far are put back (re-framed,
    which reads the same), so the body can still be relayed as it arrives."""
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


DISCARD = _Discard()  # a relay destination that drops what it is sent


def discard_body(src: BufferedSocket, head: Head, until_close: bool = False) -> None:
    """Consume a body nobody will forward (a middleware replaced it)."""
    relay_body(src, DISCARD, head, until_close=until_close)  # type: ignore[arg-type]


def unread(src: BufferedSocket, data: bytes) -> None:
    """Put bytes back in front of what is buffered: the next reads return them first."""
    src.buf[:0] = data
