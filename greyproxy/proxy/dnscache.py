"""IP → hostname attribution, kept per DNS client (docs/decisions.md#what-a-connection-may-carry).

Why per client: if one client's lookups could name another client's raw-IP connections, a
client could make its connection to an IP "be" any name some other client had resolved to that
IP. Here an IP is attributed to a name only for the client that asked for that name.

Client identity: DNS carries no username, so a client is its **source IP**. The DNS listener
records answers under the querying source IP, and a proxy connection looks up its destination
IP under the connection's own source IP (not its proxy username). Clients that share a source
IP (several containers behind one NAT) share one view; that is the limit of what DNS can tell.

What an entry is: the question name a client asked for, for every A/AAAA address in the
answer section (also the ones at the end of a CNAME chain: the client asked for the question
name, so rules for that name are the ones that apply). PTR answers are never recorded: reverse
DNS is controlled by whoever owns the address block, so it must never grant a name. Lifetime is
the answer's TTL clamped to [10 s, 1 h]; an expired entry is never returned, also after a
restart (rows keep their absolute expiry).

Everything here is memory only (the connection path does no SQL); `persist` hands rows to the
store writer, which saves them in batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from greyproxy.policy.canonical import canonical_ip as _canonical_ip
from greyproxy.policy.canonical import is_ip_literal, try_canonical_host

MIN_TTL = 10.0
MAX_TTL = 3600.0
MAX_PER_CLIENT = 4096  # one client flooding lookups only evicts its own oldest entries
MAX_CLIENTS = 4096  # beyond this the client that recorded least recently is forgotten
MAX_NAME = 253


class CacheRow(NamedTuple):
    client_ip: str
    ip: str
    hostname: str
    expires_at: float  # epoch seconds


def canonical_ip(text: str) -> str | None:
    """The one spelling of an IP (policy/canonical.py: compressed, IPv4-mapped IPv6 as
    IPv4, no brackets or zone, every IPv4 spelling as a dotted quad), or None for a non-IP.
    Cached there: it runs per connection and per DNS answer, mostly on the same few IPs."""
    return _canonical_ip(text)


def canonical_name(name: str) -> str | None:
    """A DNS name in the form rules match (A-labels, lower case, no root dot), or None for an
    IP or a name with no canonical spelling."""
    canonical = try_canonical_host(name)
    if canonical is None or len(canonical) > MAX_NAME or is_ip_literal(canonical):
        return None
    return canonical


def clamp_ttl(ttl: float) -> float:
    return min(MAX_TTL, max(MIN_TTL, float(ttl)))


class HostnameCache:
    def __init__(
        self,
        persist: Callable[[CacheRow], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_per_client: int = MAX_PER_CLIENT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self._persist = persist
        self._clock = clock
        self._max_per_client = max_per_client
        self._max_clients = max_clients
        # client ip -> {ip -> (hostname, expires_at)}; both dicts are kept in write order
        self._clients: dict[str, dict[str, tuple[str, float]]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._clients.values())

    def record(self, client_ip: str, ip: str, hostname: str, ttl: float) -> None:
        """`client_ip` asked for `hostname` and was told `ip` with this TTL."""
        expires_at = self._clock() + clamp_ttl(ttl)
        self._store(client_ip, ip, hostname, expires_at, persist=True)

    def lookup(self, client_ip: str, ip: str) -> str | None:
        """The name this client resolved to `ip`, if the answer has not expired."""
        client, addr = canonical_ip(client_ip), canonical_ip(ip)
        if client is None or addr is None:
            return None
        entry = self._clients.get(client, {}).get(addr)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def load(self, rows: Iterable[CacheRow]) -> int:
        """Rows saved by an earlier run; expired ones are skipped. Returns how many were kept."""
        now, kept = self._clock(), 0
        for row in rows:
            if row.expires_at > now and self._store(row.client_ip, row.ip, row.hostname, row.expires_at, persist=False):
                kept += 1
        return kept

    def purge_expired(self) -> int:
        """Drop expired entries (lookups ignore them anyway; this only frees memory)."""
        now, dropped = self._clock(), 0
        for client in list(self._clients):
            entries = self._clients[client]
            for addr in [a for a, (_, exp) in entries.items() if exp <= now]:
                del entries[addr]
                dropped += 1
            if not entries:
                del self._clients[client]
        return dropped

    def _store(self, client_ip: str, ip: str, hostname: str, expires_at: float, persist: bool) -> bool:
        client, addr, name = canonical_ip(client_ip), canonical_ip(ip), canonical_name(hostname)
        if client is None or addr is None or name is None:
            return False
        entries = self._clients.pop(client, None)
        if entries is None:
            entries = {}
            while len(self._clients) >= self._max_clients:  # bounded: removes one per turn
                del self._clients[next(iter(self._clients))]
        self._clients[client] = entries  # most recently written client last
        entries.pop(addr, None)
        entries[addr] = (name, expires_at)
        while len(entries) > self._max_per_client:  # bounded: removes one per turn
            del entries[next(iter(entries))]
        if persist and self._persist is not None:
            self._persist(CacheRow(client, addr, name, expires_at))
        return True
