"""Dial-time guards: proxied traffic can never reach this process's own listeners (D11), and,
with `guard.private_ranges: deny`, never a private, loopback, link-local or metadata address
unless the rule that allowed it names that IP or a CIDR containing it (D14)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from greyproxy.config import ListenAddress
from greyproxy.policy.patterns import DestinationKind, PatternError, canonical_host, parse_destination

LOCAL_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata services: link-local or private already, listed so the intent is explicit.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_local_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address of this machine: binding to it succeeds (no packet is sent)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
        return True
    except OSError:
        return False


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 or 6to4 address leads to (they reach it through a gateway)."""
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_private_destination(ip: IPAddress) -> bool:
    """Not a public Internet address: private, loopback, link-local, shared, reserved, metadata."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or _embedded_ipv4(ip)
        if inner is not None and is_private_destination(inner):
            return True
    return ip in METADATA_ADDRESSES or not ip.is_global


def rule_names_address(destination_pattern: str | None, ip: IPAddress) -> bool:
    """The rule's destination is this very IP, or a CIDR containing it (not a name, not `*`)."""
    if not destination_pattern:
        return False
    try:
        parsed = parse_destination(destination_pattern)
    except PatternError:
        return False
    if parsed.kind == DestinationKind.CIDR and parsed.network is not None:
        return ip.version == parsed.network.version and ip in parsed.network
    return parsed.kind == DestinationKind.EXACT and canonical_host(parsed.value) == str(ip)


class ControlPlaneGuard:
    def __init__(self, own: Iterable[ListenAddress] = (), deny_private: bool = False) -> None:
        self.deny_private = deny_private
        self.ports: set[int] = set()
        self.bound: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.wildcard = False
        self._local_cache: dict[str, bool] = {}
        for addr in own:
            self.add(addr)

    def add(self, addr: ListenAddress) -> None:
        self.ports.add(addr.port)
        ip = _ip(addr.host)
        if ip is None or ip.is_unspecified:
            self.wildcard = True
        else:
            self.bound.add(ip)

    def _ours(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if ip.is_loopback or ip.is_unspecified or ip in self.bound:
            return True
        if self.wildcard:
            key = str(ip)
            if key not in self._local_cache:
                self._local_cache[key] = _is_local_address(ip)
            return self._local_cache[key]
        return False

    def is_control_plane(self, host: str, port: int) -> bool:
        """Decision-time check on the name or IP the client asked for."""
        if port not in self.ports:
            return False
        name = host.strip("[]").lower()
        if name in LOCAL_NAMES or name.endswith(".localhost"):
            return True
        ip = _ip(name)
        return ip is not None and self._ours(ip)

    def is_own_address(self, ip_text: str, port: int) -> bool:
        """Dial-time check on the IP actually dialled (a name may resolve to us)."""
        if port not in self.ports:
            return False
        ip = _ip(ip_text)
        return ip is not None and self._ours(ip)

    def private_range_refused(self, ip_text: str, rule_pattern: str | None) -> bool:
        """D14 on the IP actually dialled: refuse a private address no rule names explicitly."""
        if not self.deny_private:
            return False
        ip = _ip(ip_text)
        if ip is None:
            return True  # not an address we can judge: refuse rather than guess
        return is_private_destination(ip) and not rule_names_address(rule_pattern, ip)
