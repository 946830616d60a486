"""Where HTTP/2 meets the one exchange pipeline (docs/design.md, "One exchange pipeline").

The pipeline speaks HTTP/1.1 to two BufferedSockets. An HTTP/2 stream takes part by being
translated at its edges, never by a second copy of the pipeline's steps:

- a client stream's header block becomes an HTTP/1.1 head that is serialized and parsed again
  by the strict HTTP/1 engine (so an HTTP/2 request is refused for exactly what an HTTP/1 one
  would be), and its DATA frames become a body framed with its Content-Length or as chunks;
- what the pipeline writes back (its own serialization: interim heads, the final head, a body
  framed by length, by chunks or by the end of the exchange) is decoded by `Http1Reader` and
  sent as HEADERS and DATA frames;
- towards an HTTP/2 origin the same happens the other way round.
"""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import urlsplit

from greyproxy.proxy.httpwire import (
    MAX_HEAD,
    Head,
    WireError,
    body_length,
    is_chunked,
    parse_head,
    serialize_head,
)

# Fields HTTP/2 forbids (connection-specific) or that only make sense on one HTTP/1 hop.
CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host",
     "proxy-authorization", "proxy-authenticate", "http2-settings", "trailer"}
)
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def canonical_name(name: str) -> str:
    """`content-type` → `Content-Type`: HTTP/2 names are lower case; what the pipeline, the
    middlewares, the stored rows and an HTTP/1.1 peer see is spelled as HTTP/1 clients do."""
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def request_head(headers: list[tuple[bytes, bytes]], ended: bool) -> Head:
    """A client stream's header block as the HTTP/1.1 request head the pipeline checks and
    forwards. The h2 library has already refused what RFC 9113 calls malformed (upper-case or
    connection-specific names, CR/LF/NUL in values, :authority and Host that differ); what is
    left goes through the HTTP/1 parser too (method token, target characters, framing fields),
    so both protocols refuse the same requests. WireError if it does not pass."""
    pseudo: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = _text(raw_name), _text(raw_value)
        if name.startswith(":"):
            pseudo[name] = value
        elif name not in CONNECTION_SPECIFIC:
            fields.append((canonical_name(name), value))
    method = pseudo.get(":method", "")
    authority = pseudo.get(":authority")
    if authority is None:
        # h2 checked :authority or Host is there; a request with only Host names it that way
        authority = next((_text(v) for k, v in headers if _text(k) == "host"), "")
    scheme = pseudo.get(":scheme", "")
    path = pseudo.get(":path")
    if path is None:  # CONNECT (no :path): the authority-form target the pipeline refuses
        target = authority
    elif scheme.lower() == "https" or path == "*":
        target = path
    else:  # another scheme: absolute, so the authority check sees and refuses the mismatch
        target = f"{scheme}://{authority}{path}"
    framing: list[tuple[str, str]] = []
    declared = [v for k, v in fields if k == "Content-Length"]
    if not declared:
        if not ended:
            framing = [("Transfer-Encoding", "chunked")]
        elif method.upper() not in BODYLESS_METHODS:
            framing = [("Content-Length", "0")]
    raw = serialize_head(f"{method} {target} HTTP/1.1", [("Host", authority), *fields, *framing])
    if len(raw) > MAX_HEAD:
        raise WireError("header section too large", 431)
    try:
        return parse_head(raw, is_request=True)
    except UnicodeEncodeError:
        raise WireError("a header field is not Latin-1") from None


def response_fields(head: Head) -> list[tuple[str, str]]:
    """An HTTP/1 response head as an HTTP/2 header block (without the body framing)."""
    named = head.tokens("connection")  # fields the Connection header calls hop-by-hop
    fields = [(":status", head.start[1])]
    for name, value in head.headers:
        low = name.lower()
        if low in CONNECTION_SPECIFIC or low in named or low == "proxy-agent" and value == "greyproxy":
            continue
        fields.append((low, value))
    return fields


def upstream_fields(head: Head) -> list[tuple[str, str]]:
    """The pipeline's HTTP/1 request head (already checked, substituted) for an HTTP/2 origin."""
    method, target, _version = head.start
    authority = head.get("host") or ""
    if target.startswith("/") or target == "*":
        path = target
    else:  # an absolute target the pipeline passed on as the client sent it
        parts = urlsplit(target)
        authority = parts.netloc.rpartition("@")[2] or authority
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    named = head.tokens("connection")
    fields = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
    for name, value in head.headers:
        low = name.lower()
        if low in CONNECTION_SPECIFIC and not (low == "te" and value.strip().lower() == "trailers"):
            continue
        if low in named:
            continue
        fields.append((low, value))
    return fields


def response_head(headers: list[tuple[bytes, bytes]], method: str) -> tuple[bytes, bool]:
    """An HTTP/2 origin's response header block as HTTP/1.1 head bytes for the pipeline, and
    whether its body is sent chunked (no Content-Length: the end of the stream ends it)."""
    status = ""
    fields: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = _text(raw_name), _text(raw_value)
        if name == ":status":
            status = value
        elif not name.startswith(":") and name not in CONNECTION_SPECIFIC:
            fields.append((canonical_name(name), value))
    if not (len(status) == 3 and status.isdigit()):
        raise WireError("the origin answered without a valid :status", 502)
    code = int(status)
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    bodyless = method.upper() == "HEAD" or code in (204, 304) or 100 <= code < 200
    chunked = not bodyless and not any(k == "Content-Length" for k, _ in fields)
    if chunked:
        fields.append(("Transfer-Encoding", "chunked"))
    return serialize_head(f"HTTP/1.1 {code} {phrase}", fields), chunked


class Http1Reader:
    """Decodes HTTP/1.1 messages the pipeline itself wrote into (kind, value) events:
    ("interim", Head) for a 1xx response, ("head", Head), ("data", bytes), ("end", None).
    A response body without framing ("until close") ends with the exchange: `until_close`."""

    def __init__(self, is_request: bool, method: str = "") -> None:
        self.is_request = is_request
        self.method = method
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.head: Head | None = None

    @property
    def until_close(self) -> bool:
        return self.state == "close"

    @property
    def complete(self) -> bool:
        return self.state == "done"

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        self.buf += data
        events: list[tuple[str, object]] = []
        while self._step(events):
            pass
        return events

    def _framing(self, head: Head, events: list[tuple[str, object]]) -> None:
        if self.is_request:
            no_body = False
        else:
            code = int(head.start[1])
            no_body = self.method.upper() == "HEAD" or code in (204, 304)
        if not no_body and is_chunked(head):
            self.state = "size"
            return
        length = None if no_body else body_length(head)
        if no_body or (length is None and self.is_request) or length == 0:
            self.state = "done"
            events.append(("end", None))
        elif length is None:
            self.state = "close"
        else:
            self.state, self.remaining = "length", length

    def _line(self) -> bytes | None:
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                raise WireError("line too long", 502)
            return None
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _step(self, events: list[tuple[str, object]]) -> bool:
        state = self.state
        if state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise WireError("header section too large", 502)
                return False
            head = parse_head(bytes(self.buf[: end + 4]), is_request=self.is_request)
            del self.buf[: end + 4]
            if not self.is_request and 100 <= int(head.start[1]) < 200 and head.start[1] != "101":
                events.append(("interim", head))
                return True
            self.head = head
            events.append(("head", head))
            self._framing(head, events)
            return True
        if state in ("length", "data"):
            if not self.buf:
                return False
            piece = bytes(self.buf[: self.remaining])
            del self.buf[: len(piece)]
            self.remaining -= len(piece)
            events.append(("data", piece))
            if self.remaining == 0:
                if state == "length":
                    self.state = "done"
                    events.append(("end", None))
                else:
                    self.state = "crlf"
            return True
        if state == "size":
            line = self._line()
            if line is None:
                return False
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise WireError("bad chunk size", 502) from None
            self.state, self.remaining = ("trailer", 0) if size == 0 else ("data", size)
            return True
        if state == "crlf":
            if len(self.buf) < 2:
                return False
            if self.buf[:2] != b"\r\n":
                raise WireError("bad chunk end", 502)
            del self.buf[:2]
            self.state = "size"
            return True
        if state == "trailer":
            line = self._line()
            if line is None:
                return False
            if not line:
                self.state = "done"
                events.append(("end", None))
            return True
        if state == "close":
            if not self.buf:
                return False
            events.append(("data", bytes(self.buf)))
            self.buf.clear()
            return True
        if self.buf:  # "done": nothing may follow one message on a stream
            raise WireError("bytes after the end of a message", 502)
        return False
