"""A small authoritative DNS server for the tests (dnspython wire format, plain threads).

It serves the `test.` zone on 127.0.0.1, UDP and TCP on one free port, and plays a classic
server without EDNS support: any UDP answer over 512 bytes is replaced by an empty one with TC
set, so clients (and greyproxy) must retry over TCP. `slow.test` is never answered.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

TXT_CHUNK = "x" * 200

# (name, type) -> (ttl, [rdata text])
DEFAULT_ZONE: dict[tuple[str, str], tuple[int, list[str]]] = {
    ("svc.test", "A"): (60, ["127.0.0.5"]),
    ("alias.test", "CNAME"): (60, ["svc.test."]),
    ("other.test", "A"): (60, ["127.0.0.8"]),
    ("blocked.test", "A"): (60, ["127.0.0.7"]),
    ("six.test", "AAAA"): (60, ["::1"]),
    # ~850 bytes: over 512, so a UDP query to this server comes back truncated
    ("mid.test", "TXT"): (60, [f'"{i}{TXT_CHUNK}"' for i in range(4)]),
    # ~2.5 kB: more than a default dig (EDNS 1232) takes over UDP
    ("big.test", "TXT"): (60, [f'"{i:02d}{TXT_CHUNK}"' for i in range(12)]),
    # a forged reverse record: 127.0.0.5 "is" svc.test according to whoever runs this zone
    ("5.0.0.127.in-addr.arpa", "PTR"): (60, ["svc.test."]),
}


class AuthServer:
    def __init__(self, zone: dict[tuple[str, str], tuple[int, list[str]]] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.zone = dict(DEFAULT_ZONE if zone is None else zone)
        self.host = host
        self.queries: list[tuple[str, str, str]] = []  # (transport, name, type)
        self._lock = threading.Lock()
        self.udp, self.tcp = self._bind()
        self.port = self.udp.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._udp_loop, daemon=True).start()
        threading.Thread(target=self._tcp_loop, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            return udp, tcp
        raise RuntimeError("no free port for the test DNS server")

    def names(self, transport: str | None = None) -> list[str]:
        with self._lock:
            return [n for t, n, _ in self.queries if transport is None or t == transport]

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(q.rdtype)
        with self._lock:
            self.queries.append((transport, name, qtype))
        if name == "slow.test":
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        owner, hops = name, 0
        while hops < 8:
            cname = self.zone.get((owner, "CNAME"))
            if cname is None or qtype == "CNAME":
                break
            reply.answer.append(dns.rrset.from_text_list(owner + ".", cname[0], "IN", "CNAME", cname[1]))
            owner, hops = cname[1][0].rstrip("."), hops + 1
        found = self.zone.get((owner, qtype))
        if found is not None:
            reply.answer.append(dns.rrset.from_text_list(owner + ".", found[0], "IN", qtype, found[1]))
        elif not any(key[0] == owner for key in self.zone):
            reply.set_rcode(dns.rcode.NXDOMAIN)
        out = reply.to_wire(max_size=65535)
        if transport == "udp" and len(out) > 512:
            small = dns.message.make_response(query)
            small.flags |= dns.flags.AA | dns.flags.TC
            out = small.to_wire()
        return out

    def _udp_loop(self) -> None:
        while not self._closed:
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            out = self.answer(data, "udp")
            if out is not None:
                try:
                    self.udp.sendto(out, addr)
                except OSError:
                    pass

    def _tcp_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if head is None:
                        return
                    wire = _recv_exact(conn, struct.unpack("!H", head)[0])
                    if wire is None:
                        return
                    out = self.answer(wire, "tcp")
                    if out is None:
                        return
                    conn.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self.udp.close()
        self.tcp.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def dig(port: int, *args: str, source: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    """`dig @127.0.0.1 -p PORT ...` (Debian dnsutils), optionally from a given source address."""
    cmd = ["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=2"]
    if source:
        cmd += ["-b", source]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def query_udp(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1", timeout: float = 3.0,
              **kw: Any) -> dns.message.Message:
    import dns.query

    return dns.query.udp(dns.message.make_query(name, rdtype, **kw), "127.0.0.1", timeout=timeout, port=port,
                         source=source, ignore_trailing=False)


def query_tcp(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1", timeout: float = 3.0,
              **kw: Any) -> dns.message.Message:
    import dns.query

    return dns.query.tcp(dns.message.make_query(name, rdtype, **kw), "127.0.0.1", timeout=timeout, port=port,
                         source=source)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.address for rrset in reply.answer if rrset.rdtype in (1, 28) for rd in rrset]


