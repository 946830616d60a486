"""Dial-time guards: proxied traffic can never reach this process's own listeners (docs/decisions.md#the-control-plane-is-not-the-agents), and,
with `guard.private_ranges: deny`, never a private, loopback, link-local or metadata address
unless the rule that allowed it names that IP or a CIDR containing it."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from greyproxy.config import ListenAddress
from greyproxy.policy.addresses import METADATA_ADDRESSES, is_private_destination
from greyproxy.policy.canonical import canonical_ip
from greyproxy.policy.patterns import DestinationKind, PatternError, parse_destination

LOCAL_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
__all__ = ["METADATA_ADDRESSES", "ControlPlaneGuard", "is_private_destination", "rule_names_address"]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `text` spells (any canonical_host spelling; IPv4-mapped as IPv4), or None."""
    canonical = canonical_ip(text)
    return ipaddress.ip_address(canonical) if canonical is not None else None


def _is_local_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address of this machine: binding to it succeeds (no packet is sent)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
        return True
    except OSError:
        return False


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
    return parsed.kind == DestinationKind.EXACT and parsed.value == canonical_ip(str(ip))


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
        """The private-range guard on the IP actually dialled: refuse a private address no rule names explicitly."""
        if not self.deny_private:
            return False
        ip = _ip(ip_text)
        if ip is None:
            return True  # not an address we can judge: refuse rather than guess
        return is_private_destination(ip) and not rule_names_address(rule_pattern, ip)
