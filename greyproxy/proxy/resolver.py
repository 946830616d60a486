"""Dial-time name resolution with a bounded TTL cache.

Names are asked of the same upstream servers as the DNS listener (A and AAAA in parallel, one
bounded exchange each). When the upstream gives no address (no answer in time, an error, or a
name it does not know: `/etc/hosts` names, `localhost`, container aliases), the system resolver
(gevent's getaddrinfo) is asked instead, also under a timeout.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import dns.exception
import dns.message
import dns.rdatatype
import gevent
from gevent import socket as gsocket

from greyproxy.policy.canonical import canonical_ip
from greyproxy.proxy.dnsupstream import Upstream, UpstreamError

log = logging.getLogger("greyproxy.dns")

MIN_TTL = 10.0
MAX_TTL = 300.0
SYSTEM_TTL = 30.0  # getaddrinfo gives no TTL
SYSTEM_TIMEOUT = 5.0
MAX_ENTRIES = 10_000
MAX_ADDRESSES = 16


class ResolveError(OSError):
    """The name has no address, or no resolver answered in time."""


def _local_name(name: str) -> bool:
    # RFC 6761: localhost is never asked of a DNS server.
    return name == "localhost" or name.endswith(".localhost")


def system_addresses(host: str, timeout: float = SYSTEM_TIMEOUT) -> list[str]:
    """getaddrinfo under a timeout; raises ResolveError."""
    try:
        with gevent.Timeout(timeout):
            infos = gsocket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
    except (OSError, gevent.Timeout, UnicodeError) as exc:
        raise ResolveError(f"cannot resolve {host}: {exc}") from None
    seen: dict[str, None] = {}
    for *_, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%", 1)[0], None)
    if not seen:
        raise ResolveError(f"cannot resolve {host}: no address")
    return list(seen)[:MAX_ADDRESSES]


class Resolver:
    def __init__(
        self,
        upstream: Upstream | None,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        system: Callable[[str], list[str]] = system_addresses,
    ) -> None:
        self.upstream = upstream
        self.max_entries = max_entries
        self._clock = clock
        self._system = system
        self._cache: dict[str, tuple[tuple[str, ...], float]] = {}
        self._purged_at = float("-inf")

    def __len__(self) -> int:
        return len(self._cache)

    def resolve(self, host: str) -> list[str]:
        """Addresses to dial for `host` (IPv4 first); an IP literal is returned as is."""
        ip = canonical_ip(host)
        if ip is not None:
            return [ip]  # any spelling of an address is dialled as its one canonical form
        name = host.strip().strip("[]").rstrip(".").lower()
        if not name:
            raise ResolveError("empty host name")
        now = self._clock()
        hit = self._cache.get(name)
        if hit is not None and hit[1] > now:
            return list(hit[0])
        addresses, ttl = None, SYSTEM_TTL
        if self.upstream is not None and self.upstream.servers and not _local_name(name):
            addresses, ttl = self._ask_upstream(name)
        if not addresses:
            addresses, ttl = self._system(name), SYSTEM_TTL
        self._remember(name, tuple(addresses[:MAX_ADDRESSES]), now + ttl)
        return list(addresses[:MAX_ADDRESSES])

    def _ask_upstream(self, name: str) -> tuple[list[str], float]:
        jobs = [gevent.spawn(self._query, name, rdtype) for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]
        gevent.joinall(jobs, timeout=(self.upstream.timeout if self.upstream else 0) + 1.0)
        addresses: list[str] = []
        ttls: list[float] = []
        for job in jobs:  # A first: the IPv4 path is the one most hosts can actually reach
            job.kill(block=False)
            if job.successful() and job.value is not None:
                found, ttl = job.value
                addresses += found
                ttls.append(ttl)
        ttl = min(MAX_TTL, max(MIN_TTL, min(ttls))) if ttls else MIN_TTL
        return addresses, ttl

    def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[list[str], float] | None:
        assert self.upstream is not None
        try:
            query = dns.message.make_query(name, rdtype)
            reply, _raw = self.upstream.exchange(query)
            chain = reply.resolve_chaining()
        except (UpstreamError, dns.exception.DNSException, ValueError) as exc:  # ValueError: bad IDN too
            log.debug("resolve %s %s: %r", name, dns.rdatatype.to_text(rdtype), exc)
            return None
        if chain.answer is None:
            return None
        return [rd.address for rd in chain.answer], float(chain.minimum_ttl)

    def _remember(self, name: str, addresses: tuple[str, ...], expires_at: float) -> None:
        self._cache.pop(name, None)
        now = self._clock()
        if len(self._cache) >= self.max_entries and now - self._purged_at >= 1.0:
            self._purged_at = now  # a full scan at most once a second
            for key in [k for k, (_, exp) in self._cache.items() if exp <= now]:
                del self._cache[key]
        while len(self._cache) >= self.max_entries:  # bounded: removes the oldest, one per turn
            del self._cache[next(iter(self._cache))]
        self._cache[name] = (addresses, expires_at)
