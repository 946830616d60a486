"""WebSocket frames inside an intercepted connection (§8.4): forwarded byte-exact, each
frame's payload captured (unmasked, inflated when permessage-deflate compressed it)."""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from greyproxy.capture.bodies import MAX_CAPTURE
from greyproxy.proxy.httpwire import BufferedSocket, Head, WireError

# Offer only context-free compression, so that every message can be inflated on its own.
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass(slots=True)
class Frame:
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes  # unmasked; at most MAX_CAPTURE bytes kept
    size: int  # the true payload length
    inflated: bool = False


def rewrite_extension_offer(head: Head) -> None:
    """Replace a permessage-deflate offer with one whose messages inflate independently."""
    offers = [v for k, v in head.headers if k.lower() == "sec-websocket-extensions"]
    if not offers:
        return
    head.headers = [(k, v) for k, v in head.headers if k.lower() != "sec-websocket-extensions"]
    if any("permessage-deflate" in v.lower() for v in offers):
        head.headers.append(("Sec-WebSocket-Extensions", DEFLATE_OFFER))


def deflate_negotiated(response: Head) -> bool:
    return "permessage-deflate" in (response.get("sec-websocket-extensions") or "").lower()


def _unmask(data: bytes, key: bytes, offset: int) -> bytes:
    if not key:
        return data
    mask = (key * (len(data) // 4 + 2))[offset % 4 : offset % 4 + len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(data), "big")


def relay_frames(src: BufferedSocket, dst: socket.socket, deflate: bool, on_frame: Callable[[Frame], None]) -> None:
    """Forward frames from src to dst until the connection ends; on_frame sees each one."""
    while True:
        header = src.read_some(2)
        if not header:
            return
        while len(header) < 2:
            more = src.read_some(2 - len(header))
            if not more:
                raise WireError("connection closed inside a frame header")
            header += more
        b0, b1 = header[0], header[1]
        raw = bytearray(header)
        length = b1 & 0x7F
        extra = {126: 2, 127: 8}.get(length, 0) + (4 if b1 & 0x80 else 0)
        rest = _read_exact(src, extra)
        raw += rest
        if length == 126:
            (length,) = struct.unpack("!H", rest[:2])
        elif length == 127:
            (length,) = struct.unpack("!Q", rest[:8])
        key = bytes(rest[-4:]) if b1 & 0x80 else b""
        dst.sendall(raw)
        kept = bytearray()
        remaining, offset = length, 0
        while remaining > 0:
            chunk = src.read_some(min(remaining, 65536))
            if not chunk:
                raise WireError("connection closed inside a frame")
            dst.sendall(chunk)
            if len(kept) < MAX_CAPTURE:
                kept += _unmask(chunk[: MAX_CAPTURE - len(kept)], key, offset)
            offset += len(chunk)
            remaining -= len(chunk)
        frame = Frame(fin=bool(b0 & 0x80), rsv1=bool(b0 & 0x40), opcode=b0 & 0x0F, payload=bytes(kept), size=length)
        if deflate and frame.rsv1 and frame.fin and frame.size <= MAX_CAPTURE:
            try:
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                frame.payload = inflater.decompress(frame.payload + _DEFLATE_TAIL, MAX_CAPTURE)
                frame.inflated = True
            except zlib.error:
                pass  # stored as it came
        on_frame(frame)
        if frame.opcode == 0x8:  # close: the peer will close the TCP connection next
            return


def _read_exact(src: BufferedSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = src.read_some(n - len(data))
        if not chunk:
            raise WireError("connection closed inside a frame header")
        data += chunk
    return data
