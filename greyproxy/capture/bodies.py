"""Body capture (§8.4): text-like bodies only, decompressed, at most 2 MiB kept, true size counted."""

from __future__ import annotations

import zlib

MAX_CAPTURE = 2 * 1024 * 1024
_TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/javascript", "application/x-javascript",
    "application/ecmascript", "application/x-www-form-urlencoded", "application/graphql",
    "application/soap+xml", "application/xhtml+xml", "application/x-ndjson",
})


def is_text_like(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit)
    if encoding == "deflate":
        try:
            return zlib.decompressobj().decompress(data, limit)
        except zlib.error:
            return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, limit)
    if encoding == "br":
        import brotli

        out = brotli.Decompressor().process(data)  # no output cap in the binding: bounded input instead
        return out[:limit]
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)[:limit]
    raise ValueError(f"unknown content-encoding {encoding!r}")


class BodyTap:
    """Fed with payload bytes as they pass; keeps a bounded copy for storage."""

    def __init__(self, content_type: str | None, content_encoding: str | None, limit: int = MAX_CAPTURE) -> None:
        self.keep = is_text_like(content_type)
        self.encoding = (content_encoding or "").strip().lower()
        self.limit = limit
        self.size = 0
        self._data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.keep and len(self._data) < self.limit * 4:
            self._data += chunk[: self.limit * 4 - len(self._data)]

    def result(self) -> tuple[bytes | None, int, bool]:
        if not self.keep:
            return None, self.size, False
        raw = bytes(self._data)
        complete = len(raw) == self.size
        body = raw
        if self.encoding and self.encoding != "identity" and complete:
            try:
                body = _decompress(raw, self.encoding, self.limit + 1)
            except Exception:  # a broken or unknown encoding: store what came
                body = raw
        truncated = len(body) > self.limit or not complete
        return body[: self.limit], self.size, truncated
