"""WebSocket frames inside an intercepted connection: forwarded byte-exact, each
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


MAX_SCRUBBED_FRAME = 16 * 1024 * 1024


def _frame_head(b0: int, length: int) -> bytes:
    """An unmasked frame header (server → client) for a payload of `length` bytes."""
    if length < 126:
        return bytes((b0, length))
    if length < 1 << 16:
        return bytes((b0, 126)) + struct.pack("!H", length)
    return bytes((b0, 127)) + struct.pack("!Q", length)


def _scrubbed_payload(payload: bytes, compressed: bool, fin: bool, scrub: Callable[[bytes], bytes]) -> bytes | None:
    """The payload with secrets replaced, re-compressed when it was; None if nothing changed."""
    if compressed:
        try:
            plain = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + _DEFLATE_TAIL, MAX_SCRUBBED_FRAME)
        except zlib.error:
            raise WireError("a compressed frame that must be checked for secrets does not inflate") from None
        new = scrub(plain)
        if new == plain:
            return None
        if not fin:  # the rest of this message's deflate stream follows in other frames
            raise WireError("a fragmented compressed message holds a secret: connection cut")
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        out = packer.compress(new) + packer.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_DEFLATE_TAIL) else out
    new = scrub(payload)
    return None if new == payload else new


def relay_frames(src: BufferedSocket, dst: socket.socket, deflate: bool, on_frame: Callable[[Frame], None],
                 scrub: Callable[[bytes], bytes] | None = None) -> None:
    """Forward frames from src to dst until the connection ends; on_frame sees each one.
    `scrub` (server → client only): data frames are read whole, and a payload holding a secret
    the handshake carried upstream is rewritten (docs/design.md, "Secrets never flow back")."""
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
        rest = src.read_exact(extra)
        raw += rest
        if length == 126:
            (length,) = struct.unpack("!H", rest[:2])
        elif length == 127:
            (length,) = struct.unpack("!Q", rest[:8])
        key = bytes(rest[-4:]) if b1 & 0x80 else b""
        if scrub is not None and not key and (b0 & 0x0F) in (0x0, 0x1, 0x2):
            if length > MAX_SCRUBBED_FRAME:
                raise WireError("a frame too large to check for secrets")
            payload = src.read_exact(length)
            new = _scrubbed_payload(payload, deflate and bool(b0 & 0x40), bool(b0 & 0x80), scrub)
            if new is not None:
                raw, payload = bytearray(_frame_head(b0, len(new))), new
            dst.sendall(bytes(raw) + payload)
            kept, length = bytearray(payload[:MAX_CAPTURE]), len(payload)
        else:
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
