"""Body capture: text-like only, decompressed, capped, true size counted, bomb-safe."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from greyproxy.capture.bodies import MAX_CAPTURE, BodyTap, is_text_like

TEXT = ("{\"message\": \"hello\", \"n\": %d}\n" * 2000 % tuple(range(2000))).encode()


def feed(tap: BodyTap, data: bytes, chunk: int = 7919) -> tuple[bytes | None, int, bool]:
    for i in range(0, len(data), chunk):
        tap.feed(data[i : i + chunk])
    return tap.result()


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("text/plain", True),
        ("text/html; charset=utf-8", True),
        ("TEXT/EVENT-STREAM", True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/xml", True),
        ("application/javascript", True),
        ("application/x-javascript", True),
        ("application/ecmascript", True),
        ("application/x-www-form-urlencoded", True),
        ("application/graphql", True),
        ("application/soap+xml", True),
        ("application/xhtml+xml", True),
        ("application/x-ndjson", True),
        ("application/vnd.api+json", True),
        ("application/atom+xml", True),
        ("application/octet-stream", False),
        ("image/png", False),
        ("application/grpc", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        (None, False),
        ("json", False),
    ],
)
def test_is_text_like(content_type: str | None, text: bool) -> None:
    assert is_text_like(content_type) is text


def _brotli(data: bytes) -> bytes:
    return brotli.compress(data)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
        ("deflate", _raw_deflate),  # raw, as some servers send
        ("br", _brotli),
        ("zstd", _zstd),
        ("GZIP", gzip.compress),
    ],
)
def test_decompresses_and_counts_the_wire_size(encoding: str, compress) -> None:
    wire = compress(TEXT)
    body, size, truncated = feed(BodyTap("application/json", encoding), wire)
    assert body == TEXT
    assert size == len(wire)  # the true size: every byte fed
    assert truncated is False


def test_stacked_encodings_are_undone_in_reverse() -> None:
    wire = _brotli(gzip.compress(TEXT))  # gzip applied first, then br
    assert feed(BodyTap("text/plain", "gzip, br"), wire)[0] == TEXT


def test_concatenated_gzip_members() -> None:
    wire = gzip.compress(b"first ") + gzip.compress(b"second")
    assert feed(BodyTap("text/plain", "gzip"), wire)[0] == b"first second"


def test_identity_and_no_encoding() -> None:
    assert feed(BodyTap("text/plain", None), b"plain")[:2] == (b"plain", 5)
    assert feed(BodyTap("text/plain", "identity"), b"plain")[:2] == (b"plain", 5)


def test_plain_body_truncated_at_the_limit() -> None:
    data = b"x" * (MAX_CAPTURE + 12345)
    body, size, truncated = feed(BodyTap("text/plain", None), data, chunk=65536)
    assert len(body) == MAX_CAPTURE and size == len(data) and truncated is True
    exact = feed(BodyTap("text/plain", None), b"y" * MAX_CAPTURE, chunk=65536)
    assert len(exact[0]) == MAX_CAPTURE and exact[2] is False


def test_small_limit_applies_to_decompressed_output() -> None:
    body, size, truncated = feed(BodyTap("text/plain", "gzip", limit=100), gzip.compress(TEXT))
    assert body == TEXT[:100] and truncated is True


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_zip_bomb_is_capped(encoding: str) -> None:
    # 1 GiB of zeros, compressed to about a megabyte or far less: output stops at the cap,
    # and memory stays within a few times the limit.
    block = b"\0" * (1 << 20)
    if encoding == "gzip":
        c = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        c = zlib.compressobj(9)
    if encoding in ("gzip", "deflate"):
        wire = b"".join(c.compress(block) for _ in range(1024)) + c.flush()
    elif encoding == "br":
        comp = brotli.Compressor(quality=5)
        wire = b"".join(comp.process(block) for _ in range(1024)) + comp.finish()
    else:
        cobj = zstandard.ZstdCompressor(level=3).compressobj()
        wire = b"".join(cobj.compress(block) for _ in range(1024)) + cobj.flush()
    tracemalloc.start()
    try:
        body, size, truncated = feed(BodyTap("application/json", encoding), wire, chunk=65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(body) == MAX_CAPTURE and truncated is True and size == len(wire)
    assert peak < 8 * MAX_CAPTURE, peak


def test_non_text_body_is_dropped_but_counted() -> None:
    data = os.urandom(300_000)
    assert feed(BodyTap("application/octet-stream", None), data) == (None, len(data), False)
    assert feed(BodyTap(None, "gzip"), gzip.compress(data))[0] is None


def test_encoded_input_beyond_four_times_the_limit_is_not_kept() -> None:
    tap = BodyTap("text/plain", "gzip", limit=1000)
    noise = os.urandom(10_000)  # incompressible: 10x the limit on the wire
    body, size, truncated = feed(tap, gzip.compress(noise))
    assert tap._kept <= 4000
    assert size > 10_000 and truncated is True and len(body) <= 1000


def test_broken_encoding_keeps_the_raw_bytes() -> None:
    assert feed(BodyTap("text/plain", "gzip"), b"not gzip at all") == (b"not gzip at all", 15, False)
    assert feed(BodyTap("text/plain", "br"), b"\xff\xfe garbage")[0] == b"\xff\xfe garbage"
    assert feed(BodyTap("text/plain", "zstd"), b"garbage")[0] == b"garbage"
    assert feed(BodyTap("text/plain", "compress"), b"lzw?")[0] == b"lzw?"  # unknown encoding


def test_cut_encoded_stream_gives_the_decoded_prefix() -> None:
    wire = gzip.compress(TEXT)
    body, _, _ = feed(BodyTap("text/plain", "gzip"), wire[: len(wire) // 2])
    assert body and TEXT.startswith(body)


def test_empty_body() -> None:
    assert BodyTap("text/plain", None).result() == (None, 0, False)
