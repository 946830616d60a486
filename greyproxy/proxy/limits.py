"""Limits against a hostile client (issue 13, `limits:` in the configuration).

Everything here is memory and O(1) per call (no SQL, no I/O but one log line now and then):

- `Limits.deadline()`: a whole request head or handshake must arrive within `head_seconds` of
  its first byte, however it is dribbled (a per-read timeout would let one byte every few
  seconds keep a connection forever).
- `ConnectionLimiter`: concurrent connections per client address and in total, per listener.
- `RateLimiter`: a token bucket per container (plain HTTP proxy requests).
- `Limits.may_hold()`: held connections per container and in total.

Each hit is counted in `/metrics` (`greyproxy_limit_hits_total{limit=...}`) and logged, at most
one line per limit every `LOG_INTERVAL` seconds with the number of hits it stands for, so a
flood does not flood the log.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from greyproxy.config import LimitsConfig
from greyproxy.proxy import httpwire

if TYPE_CHECKING:
    from greyproxy.metrics import Metrics
    from greyproxy.proxy.hold import HoldManager

log = logging.getLogger("greyproxy.limits")

LOG_INTERVAL = 10.0
MAX_BUCKETS = 10_000  # token buckets kept (least recently used dropped; a dropped one is full)
REFUSE_SECONDS = 1.0  # how long a refused connection may take to be answered and closed

# The limit label of each hit (also the X-Greyproxy-Reason where one is answered).
HEAD_DEADLINE = "head_deadline"
CONNECTIONS_PER_ADDRESS = "connections_per_address"
CONNECTIONS_TOTAL = "connections_total"
HELD_PER_CONTAINER = "held_per_container"
HELD_TOTAL = "held_total"
RATE = "rate_limited"
HEADER_SIZE = "header_size"
ALL = (HEAD_DEADLINE, CONNECTIONS_PER_ADDRESS, CONNECTIONS_TOTAL, HELD_PER_CONTAINER, HELD_TOTAL, RATE,
       HEADER_SIZE)


class DeadlineExceeded(Exception):
    """A request head or handshake did not complete within `limits.head_seconds`."""


class ConnectionLimiter:
    """Concurrent connections per client address and in total. Agents behind one NAT, bridge
    gateway or loopback share an address, hence the generous per-address default."""

    def __init__(self, config: Callable[[], LimitsConfig]) -> None:
        self.config = config
        self._counts: dict[str, int] = {}
        self.total = 0

    def acquire(self, address: str) -> str | None:
        """None when taken (release it later), else the limit that refused it."""
        cfg = self.config()
        count = self._counts.get(address, 0)
        if self.total >= cfg.connections_total:
            return CONNECTIONS_TOTAL
        if count >= cfg.connections_per_address:
            return CONNECTIONS_PER_ADDRESS
        self._counts[address] = count + 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        count = self._counts.get(address, 0) - 1
        if count > 0:
            self._counts[address] = count
        else:
            self._counts.pop(address, None)
        self.total = max(0, self.total - 1)

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)


class RateLimiter:
    """A token bucket per key: `rate` tokens a second, at most `burst`; rate 0 = off."""

    def __init__(self, config: Callable[[], LimitsConfig], clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last refill]

    def take(self, key: str) -> float:
        """0.0 when allowed, else the seconds until a token is back (for Retry-After)."""
        cfg = self.config()
        rate, burst = cfg.requests_per_second, float(cfg.requests_burst)
        if rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [burst, now]
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate


class Limits:
    """The limits of one runtime: the current `limits:` section, the counters and the log."""

    def __init__(self, config: Callable[[], LimitsConfig], metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.rates = RateLimiter(config)
        self._last_line: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        if metrics is not None:
            for name in ALL:  # every label shows in /metrics from the start, at 0
                metrics.limit_hits.labels(name)

    # -- hits ----------------------------------------------------------------------------
    def hit(self, limit: str, who: str, detail: str = "") -> None:
        if self.metrics is not None:
            self.metrics.limit_hit(limit)
        now = time.monotonic()
        last = self._last_line.get(limit)
        if last is not None and now - last < LOG_INTERVAL:
            self._unlogged[limit] = self._unlogged.get(limit, 0) + 1
            return
        self._last_line[limit] = now
        more = self._unlogged.pop(limit, 0)
        suffix = f" (and {more} more hit(s) of this limit in the last {LOG_INTERVAL:g} s)" if more else ""
        log.warning("limit %s hit by %s%s%s", limit, who, f": {detail}" if detail else "", suffix)

    # -- deadlines -----------------------------------------------------------------------
    def deadline(self) -> gevent.Timeout:
        """`with limits.deadline():` raises DeadlineExceeded after `head_seconds`."""
        return gevent.Timeout(self.config().head_seconds, DeadlineExceeded)

    def read_head(self, conn: httpwire.BufferedSocket, idle_seconds: float | None = None) -> bytes | None:
        """The next request head on any HTTP/1 connection (the plain proxy, HTTP in a tunnel,
        HTTP inside TLS): the first byte may take `idle_seconds` (a TimeoutError after that);
        from there the whole head must arrive within `head_seconds` (DeadlineExceeded),
        however it is dribbled. None on a clean close before any byte."""
        cfg = self.config()
        if not conn.buf:
            conn.sock.settimeout(cfg.idle_seconds if idle_seconds is None else idle_seconds)
            if not conn.fill():
                return None
        # Usually the whole head came with its first read: then nothing waits and no deadline
        # timer is needed (a gevent.Timeout per request is a measurable share of its CPU).
        conn.sock.settimeout(cfg.head_seconds + 1)  # the deadline below ends it first (and counts)
        raw = conn.buffered_head()
        if raw is None:
            with self.deadline():
                raw = conn.read_head()
        if raw is not None and len(raw) > cfg.max_head_bytes:  # a whole head that came in one read
            raise httpwire.WireError("header section too large", 431)
        return raw

    def apply_wire(self) -> None:
        """Header size and count of the HTTP/1 engine (module-level; cheap, so set per connection
        and a reload applies)."""
        cfg = self.config()
        httpwire.MAX_HEAD = cfg.max_head_bytes
        httpwire.MAX_HEADERS = cfg.max_headers

    # -- holds ---------------------------------------------------------------------------
    def hold_refusal(self, holds: HoldManager, container: str) -> str | None:
        """None when one more connection of `container` may be held, else the limit hit."""
        cfg = self.config()
        if holds.total >= cfg.held_total:
            return HELD_TOTAL
        if holds.held_by(container) >= cfg.held_per_container:
            return HELD_PER_CONTAINER
        return None

    # -- listeners -----------------------------------------------------------------------
    def guard(self, name: str, handler: Callable[[socket.socket, Any], None],
              refuse: Callable[[socket.socket], None]) -> Callable[[socket.socket, Any], None]:
        """Wrap a StreamServer handler with the connection caps of one listener: over a cap,
        `refuse(client)` answers (bounded by REFUSE_SECONDS) and the connection is closed."""
        limiter = ConnectionLimiter(self.config)

        def handle(client: socket.socket, address: Any) -> None:
            ip = str(address[0])
            refused = limiter.acquire(ip)
            if refused is not None:
                self.hit(refused, ip, f"{name} listener, {limiter.count(ip)} open from this address, "
                                      f"{limiter.total} in total")
                try:
                    client.settimeout(REFUSE_SECONDS)
                    with gevent.Timeout(REFUSE_SECONDS, False):
                        refuse(client)
                except OSError:
                    pass
                finally:
                    client.close()
                return
            try:
                handler(client, address)
            finally:
                limiter.release(ip)

        handle.limiter = limiter  # type: ignore[attr-defined]
        return handle


_API_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def wsgi_handler(limits: Limits) -> type:
    """A gevent WSGIHandler for the API listener with the same head deadline: the first byte of
    a request may take `idle_seconds`, then the request line and headers `head_seconds`."""
    from gevent.pywsgi import WSGIHandler

    class DeadlineWSGIHandler(WSGIHandler):
        _head_timer: gevent.Timeout | None = None

        def _end_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.close()
                self._head_timer = None

        def read_requestline(self) -> str:
            cfg = limits.config()
            self.socket.settimeout(cfg.idle_seconds)
            if not self.rfile.peek(1):  # closed; a silent client raises socket.timeout (closed quietly)
                return ""
            self.socket.settimeout(cfg.head_seconds + 1)  # the deadline below ends it first
            self._head_timer = gevent.Timeout(cfg.head_seconds, DeadlineExceeded)
            self._head_timer.start()
            return super().read_requestline()

        def read_request(self, raw_requestline: str) -> Any:
            try:
                return super().read_request(raw_requestline)
            finally:
                self._end_head()
                self.socket.settimeout(None)  # the application's own reads and writes as before

        def _handle_client_error(self, ex: Exception) -> Any:
            if isinstance(ex, DeadlineExceeded):
                limits.hit(HEAD_DEADLINE, str(self.client_address[0]), "api: request head not complete in time")
                self.close_connection = True
                return ("408", _API_TIMEOUT)
            return super()._handle_client_error(ex)

        def handle_one_request(self) -> Any:
            try:
                return super().handle_one_request()
            except DeadlineExceeded:  # still in the request line: answered 408 by handle()
                return self._handle_client_error(DeadlineExceeded())
            finally:
                self._end_head()

    return DeadlineWSGIHandler
