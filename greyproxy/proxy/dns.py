"""DNS listener (issue 6): a forwarder on UDP and TCP (43053 by default).

Each query is forwarded to the upstream servers (proxy/dnsupstream.py) and the answer goes back
to the client; the A/AAAA addresses in it are recorded as "this client resolved this name to
this IP" (proxy/dnscache.py), which is how a later raw-IP connection from the same client gets
its name. Client identity is the query's source IP (DNS has no username).

`dns.policy`:
* `log` (default): every name is answered; every query is logged (client, name, type, answers).
* `enforce`: a name is forwarded only if some rule would allow this client to connect to it
  (policy/dnspolicy.py); otherwise the client gets NXDOMAIN and the query never leaves the
  host, which shuts exfiltration through lookups. The client is `unknown-<source ip>` (the
  identity greyproxy gives a proxy client that sends no username), so only rules whose
  container pattern matches that name (typically `*`) open names to DNS.

Robustness: a malformed packet is dropped without touching anything else; every query is
answered (SERVFAIL if the upstream fails) or dropped within QUERY_DEADLINE; each client IP may
have only a few queries in flight and a few TCP connections open, so a flood from one client
cannot starve another.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.server import DatagramServer, StreamServer

from greyproxy.config import ListenAddress
from greyproxy.policy.decide import PolicyState
from greyproxy.policy.dnspolicy import DnsPolicy
from greyproxy.policy.identity import container_from_username
from greyproxy.proxy import limits as lim
from greyproxy.proxy.dnscache import HostnameCache
from greyproxy.proxy.dnsupstream import Server, Upstream, UpstreamError
from greyproxy.proxy.limits import DeadlineExceeded, Limits

log = logging.getLogger("greyproxy.dns")

QUERY_DEADLINE = 6.0  # upstream exchange (5 s) plus slack: answered or dropped by then
UDP_MAX_PER_CLIENT = 32  # queries in flight per client IP; more are dropped (the client retries)
UDP_MAX_TOTAL = 2048
UDP_RCVBUF = 4 * 1024 * 1024  # absorbs bursts so one client's burst does not crowd out others
UDP_PLAIN_LIMIT = 512  # RFC 1035: a client without EDNS takes at most 512 bytes over UDP
UDP_EDNS_LIMIT = 4096  # we never send more than this over UDP, whatever the client offers
TCP_MAX_PER_CLIENT = 16
TCP_MAX_TOTAL = 1024
TCP_MESSAGE_TIMEOUT = 10.0  # to read one whole query (slow senders are cut off); limits.head_seconds
TCP_MAX_QUERIES = 100  # per connection, then it is closed
PURGE_SECONDS = 60.0
BIND_ATTEMPTS = 10


def _answers(reply: dns.message.Message) -> int:
    return sum(len(rrset) for rrset in reply.answer)


def _make_reply(query: dns.message.Message, rcode: int, truncated: bool = False) -> bytes:
    reply = dns.message.make_response(query, recursion_available=True)
    reply.set_rcode(dns.rcode.Rcode.make(rcode))
    if truncated:
        reply.flags |= dns.flags.TC
    return reply.to_wire()


def _udp_limit(query: dns.message.Message) -> int:
    if query.edns < 0:
        return UDP_PLAIN_LIMIT
    return max(UDP_PLAIN_LIMIT, min(query.payload, UDP_EDNS_LIMIT))


class DnsAnswerer:
    """Turns one query's bytes into the reply's bytes (or None: drop it). Shared by UDP and TCP."""

    def __init__(
        self,
        upstream: Upstream,
        cache: HostnameCache,
        policy_state: Callable[[], PolicyState],
        mode: str = "log",
    ) -> None:
        self.upstream = upstream
        self.cache = cache
        self.policy_state = policy_state
        self.mode = mode
        self.dns_policy = DnsPolicy()

    def answer(self, wire: bytes, client_ip: str, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # any malformed packet is dropped, whatever dnspython raises
            log.debug("dns %s %s: malformed query dropped (%d bytes)", transport, client_ip, len(wire))
            return None
        try:
            return self._answer(query, wire, client_ip, transport)
        except Exception as exc:  # a query that parsed is answered, whatever goes wrong after
            log.warning("dns %s %s: SERVFAIL after an unexpected %s: %s", transport, client_ip, type(exc).__name__, exc)
            log.debug("dns %s %s: unexpected error", transport, client_ip, exc_info=True)
            try:
                return _make_reply(query, dns.rcode.SERVFAIL)
            except Exception:
                return None

    def _answer(self, query: dns.message.Message, wire: bytes, client_ip: str, transport: str) -> bytes | None:
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: answering it could start a loop
        if query.opcode() != dns.opcode.QUERY:
            return _make_reply(query, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return _make_reply(query, dns.rcode.FORMERR)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)

        if self.mode == "enforce":
            container = container_from_username(None, client_ip)
            verdict = self.dns_policy.verdict(self.policy_state(), container, name)
            if not verdict.allowed:
                log.info("dns client=%s transport=%s name=%s type=%s rcode=NXDOMAIN answers=0 policy=%s rule_id=%s",
                         client_ip, transport, name, qtype, verdict.reason, verdict.rule_id)
                return _make_reply(query, dns.rcode.NXDOMAIN)

        try:
            reply, raw = self.upstream.exchange(query, wire, tcp=transport == "tcp")
        except UpstreamError as exc:
            log.info("dns client=%s transport=%s name=%s type=%s rcode=SERVFAIL answers=0 (%s)",
                     client_ip, transport, name, qtype, exc)
            return _make_reply(query, dns.rcode.SERVFAIL)
        self._remember(client_ip, name, question.rdtype, question.rdclass, reply)
        log.info("dns client=%s transport=%s name=%s type=%s rcode=%s answers=%d",
                 client_ip, transport, name, qtype, dns.rcode.to_text(reply.rcode()), _answers(reply))
        if transport == "udp" and len(raw) > _udp_limit(query):
            # Too big for this client over UDP: an empty answer with TC sends it to TCP.
            return _make_reply(query, reply.rcode(), truncated=True)
        return raw

    def _remember(self, client_ip: str, name: str, rdtype: int, rdclass: int, reply: dns.message.Message) -> None:
        """Record the addresses at the end of the question name's CNAME chain (never PTR data)."""
        if rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA) or rdclass != dns.rdataclass.IN:
            return
        if reply.rcode() != dns.rcode.NOERROR:
            return
        try:
            chain = reply.resolve_chaining()
        except dns.exception.DNSException:
            return
        if chain.answer is None:
            return
        for rdata in chain.answer:
            self.cache.record(client_ip, rdata.address, name, chain.answer.ttl)


class _Slots:
    """In-flight counters per client IP with a per-client and a total cap."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._counts: dict[str, int] = {}
        self._total = 0
        self.refused = 0

    def take(self, client: str) -> bool:
        count = self._counts.get(client, 0)
        if count >= self.per_client or self._total >= self.total:
            self.refused += 1
            return False
        self._counts[client] = count + 1
        self._total += 1
        return True

    def give(self, client: str) -> None:
        count = self._counts.get(client, 0) - 1
        if count > 0:
            self._counts[client] = count
        else:
            self._counts.pop(client, None)
        self._total = max(0, self._total - 1)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first."""
    data = bytearray()
    while len(data) < n:  # bounded by the caller's timeout; each recv returns >= 1 byte or ends
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class DnsService:
    """The UDP and TCP listeners on one port, and the cache's periodic purge."""

    def __init__(self, udp_sock: socket.socket, tcp_sock: socket.socket, answerer: DnsAnswerer,
                 limits: Limits | None = None) -> None:
        self.answerer = answerer
        self.limits = limits
        self.port: int = udp_sock.getsockname()[1]
        self.udp_slots = _Slots(UDP_MAX_PER_CLIENT, UDP_MAX_TOTAL)
        self.tcp_slots = _Slots(TCP_MAX_PER_CLIENT, TCP_MAX_TOTAL)
        # spawn=None: the read loop itself only counts and hands off, so it never blocks on a
        # slow query and keeps draining the socket (a full pool would stop reading for everyone).
        self.udp = DatagramServer(udp_sock, self._on_datagram, spawn=None)
        self.tcp = StreamServer(tcp_sock, self._on_stream, spawn=Pool(TCP_MAX_TOTAL))
        self._purger: gevent.Greenlet | None = None

    def start(self) -> None:
        self.udp.start()
        self.tcp.start()
        self._purger = gevent.spawn(self._purge_loop)

    def stop(self, timeout: float | None = None) -> None:
        if self._purger is not None:
            self._purger.kill(block=False)
        self.udp.stop(timeout=timeout)
        self.tcp.stop(timeout=timeout)

    def _purge_loop(self) -> None:
        while True:
            gevent.sleep(PURGE_SECONDS)
            try:
                self.answerer.cache.purge_expired()
            except Exception:  # the purge only frees memory; never let it die
                log.exception("dns cache purge failed")

    # -- UDP ---------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, address: Any) -> None:
        try:
            client = str(address[0])
            if len(data) < 12 or not self.udp_slots.take(client):
                return
            gevent.spawn(self._serve_datagram, data, address, client)
        except Exception as exc:  # an exception here would pause the whole listener
            log.warning("dns udp: dropped a datagram after an unexpected %s: %s", type(exc).__name__, exc)
            log.debug("dns udp: unexpected error", exc_info=True)

    def _serve_datagram(self, data: bytes, address: Any, client: str) -> None:
        try:
            reply = None
            with gevent.Timeout(QUERY_DEADLINE, False):
                reply = self.answerer.answer(data, client, "udp")
            if reply is not None:
                self.udp.sendto(reply, address)
        except OSError as exc:  # the reply could not be sent (the client is gone)
            log.debug("dns udp %s: %r", client, exc)
        except Exception as exc:  # one bad query must not affect any other
            log.warning("dns udp %s: query dropped after an unexpected %s: %s", client, type(exc).__name__, exc)
            log.debug("dns udp %s: unexpected error", client, exc_info=True)
        finally:
            self.udp_slots.give(client)

    # -- TCP (RFC 7766: 2-byte length prefix, several queries per connection) -------------
    def _on_stream(self, conn: socket.socket, address: Any) -> None:
        client = str(address[0])
        if not self.tcp_slots.take(client):
            if self.limits is not None:
                total = self.tcp_slots._total >= self.tcp_slots.total
                self.limits.hit(lim.CONNECTIONS_TOTAL if total else lim.CONNECTIONS_PER_ADDRESS, client,
                                "dns tcp listener")
            conn.close()
            return
        try:
            self._serve_stream(conn, client)
        except DeadlineExceeded:
            if self.limits is not None:
                self.limits.hit(lim.HEAD_DEADLINE, client, "dns tcp: query not complete in time")
        except (OSError, gevent.Timeout) as exc:
            log.debug("dns tcp %s: %r", client, exc)
        except Exception as exc:  # one connection's surprise closes it, and only it
            log.warning("dns tcp %s: connection closed after an unexpected %s: %s", client, type(exc).__name__, exc)
            log.debug("dns tcp %s: unexpected error", client, exc_info=True)
        finally:
            self.tcp_slots.give(client)
            conn.close()

    def _serve_stream(self, conn: socket.socket, client: str) -> None:
        timeout = self.limits.config().head_seconds if self.limits is not None else TCP_MESSAGE_TIMEOUT
        for _ in range(TCP_MAX_QUERIES):
            # Waiting for a query: at most `timeout` of silence (then closed, not a limit hit);
            # from its first byte, the whole length-prefixed query within `timeout`.
            conn.settimeout(timeout)
            if not conn.recv(1, socket.MSG_PEEK):
                return
            conn.settimeout(timeout + 1)  # the deadline below ends it first (and counts)
            with gevent.Timeout(timeout, DeadlineExceeded):
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                if length < 12:
                    return
                wire = _recv_exact(conn, length)
                if wire is None:
                    return
            reply = None
            with gevent.Timeout(QUERY_DEADLINE, False):
                reply = self.answerer.answer(wire, client, "tcp")
            if reply is None:
                return  # malformed (or out of time): the stream cannot be trusted further
            conn.sendall(struct.pack("!H", len(reply)) + reply)


def bind_dns_sockets(addr: ListenAddress, attempts: int = BIND_ATTEMPTS) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP on the same port. Port 0: UDP picks a free port, TCP takes the same one; if
    TCP finds it taken, both are closed and the pair is tried again (a few times)."""
    family = gsocket.AF_INET6 if ":" in addr.host else gsocket.AF_INET
    last: OSError | None = None
    for _ in range(attempts if addr.port == 0 else 1):
        udp = gsocket.socket(family, gsocket.SOCK_DGRAM)
        try:
            udp.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, UDP_RCVBUF)
        except OSError:
            pass
        # No SO_REUSEADDR on UDP: on Linux it would let a second process share the port silently.
        udp.bind((addr.host, addr.port))
        port = udp.getsockname()[1]
        tcp = gsocket.socket(family, gsocket.SOCK_STREAM)
        tcp.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        try:
            tcp.bind((addr.host, port))
            tcp.listen(128)
        except OSError as exc:
            udp.close()
            tcp.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last = exc
            continue
        return udp, tcp
    raise last or OSError(errno.EADDRINUSE, "no free port for DNS on both UDP and TCP")


def without_own_address(servers: tuple[Server, ...], addr: ListenAddress, port: int) -> tuple[Server, ...]:
    """Upstream servers minus our own listener (a resolv.conf pointing at us would loop)."""

    def ours(server: Server) -> bool:
        if server[1] != port:
            return False
        try:
            ip = ipaddress.ip_address(server[0])
        except ValueError:
            return False
        if addr.host in ("0.0.0.0", "::", ""):
            return ip.is_loopback  # a wildcard listener answers on every local address
        return ip == ipaddress.ip_address(addr.host)

    kept = tuple(s for s in servers if not ours(s))
    if len(kept) != len(servers):
        log.warning("dns: upstream %s is this listener itself; ignored", [s for s in servers if ours(s)])
    return kept

