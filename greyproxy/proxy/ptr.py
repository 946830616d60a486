"""Reverse DNS (PTR) names for raw-IP destinations, for display only (docs/decisions.md#what-a-connection-may-carry).

Whoever controls an address block writes its PTR records, so a PTR name proves nothing: it is
shown beside the IP in pending rows and logs (`ptr_hostname`) to help a human decide, and never
reaches the policy (rules match the raw host and the client's own forward lookups only).

`peek` never blocks: it answers from memory and, for an IP it has not looked up yet, starts a
background lookup through the DNS upstream (a bounded pool, one query per IP at a time). When a
lookup finds a name, `on_found(ip, name)` is called so open dashboards can be told.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import dns.exception
import dns.message
import dns.rdatatype
import dns.reversename
import gevent.pool

from greyproxy.proxy.dnscache import canonical_ip, canonical_name
from greyproxy.proxy.dnsupstream import Upstream, UpstreamError

log = logging.getLogger("greyproxy.dns")

MIN_TTL = 60.0
MAX_TTL = 3600.0
MISS_TTL = 300.0  # no name, or no answer: asked again after this long
MAX_ENTRIES = 4096
CONCURRENCY = 4  # lookups in flight; more IPs wait for the next peek


class ReverseNames:
    def __init__(
        self,
        upstream: Upstream,
        on_found: Callable[[str, str], None] | None = None,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.on_found = on_found
        self.max_entries = max_entries
        self._clock = clock
        self._names: dict[str, tuple[str | None, float]] = {}  # ip -> (name or None, expires)
        self._asking: set[str] = set()
        self._pool = gevent.pool.Pool(CONCURRENCY)

    def peek(self, host: str | None) -> str | None:
        """The PTR name known for this IP (None: not an IP, none, or not known yet)."""
        ip = canonical_ip(host) if host else None
        if ip is None:
            return None
        hit = self._names.get(ip)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        if ip not in self._asking and not self._pool.full() and self.upstream.servers:
            self._asking.add(ip)
            self._pool.spawn(self._lookup, ip)
        return hit[0] if hit is not None else None  # a stale name beats none while we ask again

    def _lookup(self, ip: str) -> None:
        name, ttl = None, MISS_TTL
        try:
            reply, _raw = self.upstream.exchange(dns.message.make_query(dns.reversename.from_address(ip), "PTR"))
            for rrset in reply.answer:
                if rrset.rdtype == dns.rdatatype.PTR and len(rrset):
                    name = canonical_name(rrset[0].target.to_text())
                    ttl = min(MAX_TTL, max(MIN_TTL, float(rrset.ttl)))
                    break
        except (UpstreamError, dns.exception.DNSException, ValueError) as exc:
            log.debug("ptr %s: %r", ip, exc)
        finally:
            self._asking.discard(ip)
        previous = self._names.pop(ip, None)
        while len(self._names) >= self.max_entries:  # bounded: the oldest entry goes first
            del self._names[next(iter(self._names))]
        self._names[ip] = (name, self._clock() + ttl)
        if name is not None and self.on_found is not None and (previous is None or previous[0] != name):
            try:
                self.on_found(ip, name)
            except Exception:  # a display update must never break the lookups
                log.exception("ptr %s: notifying the dashboard failed", ip)
