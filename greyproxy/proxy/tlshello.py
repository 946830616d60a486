"""The server name of a TLS ClientHello, read without consuming it (docs/decisions.md#what-a-connection-may-carry).

A tunnel that is not intercepted is still checked: the name in the client's hello must be the
destination the tunnel was allowed for. The hello is peeked (``MSG_PEEK``), so what was looked at
is still in the kernel for the upstream server, byte for byte.

No TLS parsing is done here: the records are handed to OpenSSL (a server-side ``SSLObject`` on
memory BIOs, no certificate) and its ``sni_callback`` reports the name, then aborts. What
OpenSSL cannot parse is ``malformed``. Only the record layer is walked here, to know how many
bytes to wait for and to bound them: records of at most 16 KiB, a hello of at most
``MAX_HELLO_BYTES`` (a hello may be fragmented over several records).

ALPN is not reported: OpenSSL chooses it only after the server-name callback, and Python
exposes no earlier hook.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.socket import wait_read

RECORD_HEADER = 5
MAX_RECORD = 16384  # RFC 8446 §5.1: a record carries at most 2^14 bytes
MAX_HELLO_BYTES = 4 * (RECORD_HEADER + MAX_RECORD)
PEEK_TIMEOUT = 10.0  # the whole hello must be there by then
_HANDSHAKE = 0x16
_STALL_SLEEP_MAX = 0.1


@dataclass(frozen=True, slots=True)
class Hello:
    """`status`: ``ok`` (``server_name`` is the SNI, None if the hello has none),
    ``need_more`` (``need``: stream bytes wanted before another try), ``malformed``, or
    ``incomplete`` (the peer stopped or timed out before the hello was whole).
    ``alert``: the TLS alert OpenSSL answered a malformed hello with, if any."""

    status: str
    server_name: str | None = None
    need: int = 0
    detail: str = ""
    alert: bytes | None = None


class _HelloObject(ssl.SSLObject):
    seen = False  # set by the server-name callback
    server_name: str | None = None

    def _sslsock(self) -> _HelloObject:
        """gevent's SSLContext (after monkey-patching) hands callbacks `conn._sslsock()`, which
        it expects on its own socket wrapper; for an SSLObject that is the object itself."""
        return self


def _on_server_name(obj: _HelloObject, server_name: str | None, _ctx: ssl.SSLContext) -> int:
    obj.seen = True
    obj.server_name = server_name
    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # the name is all we wanted: stop here


_context: ssl.SSLContext | None = None


def _shared_context() -> ssl.SSLContext:
    """One context for every hello, made once (its cost is not on the connection path). The
    class is whatever `ssl.SSLContext` is, gevent's after monkey-patching: the stdlib class'
    property setters recurse once ssl is patched."""
    global _context
    if _context is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # Accept every version and cipher OpenSSL knows: an old client is not malformed, and
        # version negotiation runs before the server-name callback.
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
        try:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        ctx.sni_callback = _on_server_name
        ctx.sslobject_class = _HelloObject
        _context = ctx
    return _context


class _QuietBadNames:
    """Python decodes the server name as ASCII before calling the callback; a name that is not
    ASCII fails the handshake (malformed: what we want) and is reported through
    sys.unraisablehook, a traceback on stderr per hello. A hostile client must not be able to
    write to our logs at will: while a hello is parsed, exactly that report is dropped and any
    other goes to the hook in place before."""

    __slots__ = ("previous",)

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if issubclass(unraisable.exc_type, UnicodeDecodeError) and isinstance(unraisable.object, bytes):
            return
        self.previous(unraisable)


class HelloParser:
    """Feed the start of a client's stream, in pieces as they arrive; each `feed` returns
    where things stand. Only complete records reach OpenSSL, one at a time, so bytes after
    the hello (early data, the next records) are never looked at."""

    def __init__(self) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls: _HelloObject = _shared_context().wrap_bio(self._in, self._out, server_side=True)  # type: ignore[assignment]
        self._data = bytearray()
        self._next = 0  # where the next record starts
        self.hello = Hello("need_more", need=RECORD_HEADER)

    def feed(self, data: bytes) -> Hello:
        if self.hello.status != "need_more":
            return self.hello
        self._data += data[: MAX_HELLO_BYTES - len(self._data)]
        while True:
            start = self._next
            if start + RECORD_HEADER >= MAX_HELLO_BYTES:
                return self._done(Hello("malformed", detail=f"hello longer than {MAX_HELLO_BYTES} bytes"))
            if len(self._data) < start + RECORD_HEADER:
                return self._more(start + RECORD_HEADER)
            kind, major, length = self._data[start], self._data[start + 1], int.from_bytes(self._data[start + 3:start + 5], "big")
            if kind != _HANDSHAKE or major != 3:
                return self._done(Hello("malformed", detail=f"record type {kind:#04x} version {major}"))
            if not 0 < length <= MAX_RECORD:
                return self._done(Hello("malformed", detail=f"record length {length}"))
            end = start + RECORD_HEADER + length
            if end > MAX_HELLO_BYTES:
                return self._done(Hello("malformed", detail=f"hello longer than {MAX_HELLO_BYTES} bytes"))
            if len(self._data) < end:
                return self._more(end)
            self._next = end
            self._in.write(bytes(self._data[start:end]))
            result = self._handshake()
            if result is not None:
                return self._done(result)

    def _handshake(self) -> Hello | None:
        previous = sys.unraisablehook
        sys.unraisablehook = _QuietBadNames(previous)
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return None  # the hello goes on in the next record
        except Exception as exc:  # hostile input: whatever OpenSSL or Python raise, never ours to propagate
            if self._tls.seen:
                return Hello("ok", server_name=self._tls.server_name)
            alert = self._out.read()
            return Hello("malformed", detail=str(exc) or exc.__class__.__name__,
                         alert=alert if len(alert) == 7 and alert[0] == 0x15 else None)
        finally:
            sys.unraisablehook = previous
        return Hello("malformed", detail="handshake completed without a certificate")  # cannot happen

    def _more(self, need: int) -> Hello:
        self.hello = Hello("need_more", need=need)
        return self.hello

    def _done(self, hello: Hello) -> Hello:
        self.hello = hello
        self._data = bytearray()  # free what is no longer needed
        return hello


def parse_hello(data: bytes) -> Hello:
    """The hello at the start of `data` (status ``need_more`` if it is not all there)."""
    return HelloParser().feed(data)


def peek_hello(sock: socket.socket, early: bytes = b"", timeout: float = PEEK_TIMEOUT) -> Hello:
    """The hello at the start of `early` followed by `sock`'s stream, read from `sock` with
    MSG_PEEK only: nothing is consumed. Waits cooperatively, at most `timeout` seconds in all.
    Usually the whole hello is there at the first peek; when it is not, SO_RCVLOWAT is set to
    what is missing, so that a hello in several segments wakes us once it is whole."""
    parser = HelloParser()
    hello = parser.feed(early)
    deadline = time.monotonic() + timeout
    seen = 0  # bytes of the socket's queue already fed
    stalls = 0
    lowat = 1
    old_timeout = sock.gettimeout()
    try:
        while hello.status == "need_more":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Hello("incomplete", detail=f"no complete ClientHello within {timeout:g} s")
            try:
                if seen:  # some of it is there: wait for the rest, not for any byte
                    want = hello.need - len(early)
                    if want != lowat:
                        lowat = _set_lowat(sock, want)
                    wait_read(sock.fileno(), timeout=remaining)
                sock.settimeout(remaining)
                peeked = sock.recv(max(1, MAX_HELLO_BYTES - len(early)), socket.MSG_PEEK)
            except TimeoutError:
                continue
            except OSError as exc:
                return Hello("incomplete", detail=str(exc))
            if not peeked:
                return Hello("incomplete", detail="the client closed before its ClientHello was complete")
            if len(peeked) <= seen:
                # Readable but nothing new: the peer half-closed, or SO_RCVLOWAT is not honoured.
                stalls += 1
                gevent.sleep(min(0.001 * 2 ** stalls, _STALL_SLEEP_MAX))
                continue
            hello = parser.feed(peeked[seen:])
            seen = len(peeked)
    finally:
        if lowat != 1:
            _set_lowat(sock, 1)
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass
    return hello


def _set_lowat(sock: socket.socket, n: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, n))
    except OSError:
        pass
    return n


def alert_record(description: int) -> bytes:
    """A fatal TLS alert record, sent in the clear (no handshake took place)."""
    return bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description))
