"""Self-approval guard (D11): proxied traffic can never reach this process's own listeners."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from greyproxy.config import ListenAddress

LOCAL_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")


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


class ControlPlaneGuard:
    def __init__(self, own: Iterable[ListenAddress] = ()) -> None:
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
