"""Body capture: only text-like bodies are kept, decompressed, at most 2 MiB; the true
size is always counted.

`BodyTap.feed` runs on the proxy path for every chunk, so it only counts and copies (into a
buffer bounded at 4 × the limit of encoded bytes); decompression happens once, in `result()`,
with the output capped at the limit, so a zip bomb costs at most limit bytes of output.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

MAX_CAPTURE = 2 * 1024 * 1024
# Encoded bytes kept per byte of the capture limit. Text compresses well, so a stored body cut
# at the limit needs more than limit bytes of input; 4x bounds the memory a tap can hold.
ENCODED_FACTOR = 4
MAX_LAYERS = 3  # "gzip, br" style stacks deeper than this are not decoded
MAX_GZIP_MEMBERS = 64

_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/soap+xml",
        "application/xhtml+xml",
        "application/x-ndjson",
    }
)


def is_text_like(content_type: str | None) -> bool:
    """`text/*`, the application types greyproxy keeps, and any `*+json` / `*+xml` (parameters ignored)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if "/" not in media:
        return False
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


class DecodeError(ValueError):
    pass


def _zlib(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool]:
    """Inflate with the output capped at limit; (output, truncated). Concatenated gzip members
    (legal, and produced by some servers) are followed, a bounded number of times."""
    out = bytearray()
    rest = data
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(wbits)
        out += d.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or d.unconsumed_tail:
            return bytes(out[:limit]), True
        if not d.eof or not d.unused_data or wbits < 0:
            break
        rest = d.unused_data
    return bytes(out), False


def _gzip(data: bytes, limit: int) -> tuple[bytes, bool]:
    try:
        return _zlib(data, 16 + zlib.MAX_WBITS, limit)
    except zlib.error as exc:
        raise DecodeError(f"gzip: {exc}") from None


def _deflate(data: bytes, limit: int) -> tuple[bytes, bool]:
    # "deflate" is meant to be zlib-wrapped, but servers also send raw deflate: try both.
    try:
        return _zlib(data, zlib.MAX_WBITS, limit)
    except zlib.error:
        pass
    try:
        return _zlib(data, -zlib.MAX_WBITS, limit)
    except zlib.error as exc:
        raise DecodeError(f"deflate: {exc}") from None


def _brotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    import brotli

    d = brotli.Decompressor()
    try:
        # output_buffer_limit (brotli >= 1.2) stops the output buffer growing past the cap.
        out = d.process(data, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise DecodeError(f"br: {exc}") from None
    return (out[:limit], True) if len(out) > limit else (out, False)


def _zstd(data: bytes, limit: int) -> tuple[bytes, bool]:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    out = bytearray()
    try:
        # read(n) may return less than n; each round either makes progress or ends the loop.
        for _ in range(limit // 65536 + 64):
            chunk = reader.read(limit + 1 - len(out))
            if not chunk:
                break
            out += chunk
            if len(out) > limit:
                return bytes(out[:limit]), True
    except zstandard.ZstdError as exc:
        if not out:
            raise DecodeError(f"zstd: {exc}") from None
    return bytes(out), False


_DECODERS: dict[str, Callable[[bytes, int], tuple[bytes, bool]]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def parse_encodings(content_encoding: str | None) -> list[str]:
    """`Content-Encoding: gzip, br` → ["gzip", "br"] (the order they were applied); identity dropped."""
    if not content_encoding:
        return []
    return [e.strip().lower() for e in content_encoding.split(",") if e.strip() and e.strip().lower() != "identity"]


def decode(data: bytes, encodings: list[str], limit: int) -> tuple[bytes, bool]:
    """Undo the encodings (last applied first); (output ≤ limit, truncated). DecodeError if unknown
    or corrupt. Intermediate layers are capped too, so no stage can blow up."""
    if len(encodings) > MAX_LAYERS:
        raise DecodeError(f"too many content encodings ({len(encodings)})")
    truncated = False
    for i, enc in enumerate(reversed(encodings)):
        decoder = _DECODERS.get(enc)
        if decoder is None:
            raise DecodeError(f"unknown content-encoding {enc!r}")
        last = i == len(encodings) - 1
        data, cut = decoder(data, limit if last else limit * ENCODED_FACTOR)
        truncated = truncated or cut
    return data, truncated


class BodyTap:
    """Sees the de-chunked payload of one message as it passes; `result()` gives what to store."""

    __slots__ = ("keep", "encodings", "limit", "size", "_cap", "_chunks", "_kept", "_overflow")

    def __init__(self, content_type: str | None, content_encoding: str | None, limit: int = MAX_CAPTURE) -> None:
        self.keep = is_text_like(content_type)
        self.encodings = parse_encodings(content_encoding)
        self.limit = limit
        self.size = 0  # every byte fed, kept or not
        # Encoded input may expand, so more of it is kept; plain input needs no more than the limit.
        self._cap = limit * ENCODED_FACTOR if self.encodings else limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        n = len(chunk)
        self.size += n
        if not self.keep or self._overflow or not n:
            return
        room = self._cap - self._kept
        if n > room:
            chunk = chunk[:room]
            self._overflow = True
        if chunk:
            self._chunks.append(bytes(chunk))
            self._kept += len(chunk)

    def result(self) -> tuple[bytes | None, int, bool]:
        """(body to store or None, true size = bytes fed, truncated)."""
        if not self.keep or self.size == 0:
            return None, self.size, False
        raw = b"".join(self._chunks)
        if not self.encodings:
            return raw, self.size, self._overflow
        try:
            body, cut = decode(raw, self.encodings, self.limit)
        except DecodeError:
            # Not what the header claimed: keep the bytes as they came, capped.
            return raw[: self.limit], self.size, self._overflow or len(raw) > self.limit
        return body, self.size, cut or self._overflow
