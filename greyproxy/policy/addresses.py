"""Address classes for the destination guard (docs/decisions.md#what-a-connection-may-carry): is an IP a public Internet address?

Python's `ipaddress.is_global` lags the IANA special-purpose registries (3.11 calls multicast,
`64:ff9b:1::/48`, `::a.b.c.d` and `3fff::/20` global), so the tables live here.

Not public, for the guard:

* IPv4: this network (0/8), private (10/8, 172.16/12, 192.168/16), shared (100.64/10),
  loopback, link-local (incl. the 169.254.169.254 metadata service), IETF protocol assignments
  (192.0.0/24), documentation, benchmarking (198.18/15), the deprecated 6to4 relay anycast
  (192.88.99/24), multicast (224/4) and reserved (240/4, incl. broadcast).
* IPv6: everything outside global unicast 2000::/3 (unspecified, loopback, the reserved ::/8
  with its deprecated IPv4-compatible ::/96, discard 100::/64, ULA fc00::/7 with the
  fd00:ec2::254 metadata service, link-local, site-local, multicast, the local-use NAT64
  prefix 64:ff9b:1::/48 of RFC 8215, SRv6 5f00::/16, unallocated space), and inside it
  benchmarking 2001:2::/48, ORCHID 2001:10::/28, documentation 2001:db8::/32 and 3fff::/20.

IPv6 forms that carry an IPv4 address are unwrapped and the IPv4 judged as well, so a gateway
cannot be asked to reach a private IPv4 for us: IPv4-mapped ::ffff:0:0/96, IPv4-compatible
::/96, NAT64 64:ff9b::/96 (RFC 6052, the only embedding of the well-known prefix) and the /96
embedding inside 64:ff9b:1::/48, 6to4 2002::/16, and Teredo 2001::/32 (server and client).

Pure module: no sockets.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services: inside non-public ranges already, listed so the intent is explicit.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)

_V4_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
)

_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NOT_PUBLIC_IN_GLOBAL = tuple(
    ipaddress.IPv6Network(n) for n in ("2001:2::/48", "2001:10::/28", "2001:db8::/32", "3fff::/20")
)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_6TO4 = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")


def _low32(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (and may lead to through a gateway)."""
    if ip in _MAPPED or ip in _NAT64 or ip in _NAT64_LOCAL:
        return (_low32(ip),)
    if ip in _COMPATIBLE:
        # '::' and '::1' are not IPv4-compatible addresses of 0.0.0.0 / 0.0.0.1 (RFC 4291 2.5.5.1),
        # but judging 0.0.0.x as an IPv4 only adds a refusal: both are non-public anyway.
        return (_low32(ip),)
    if ip in _6TO4:
        sixtofour = ip.sixtofour
        return (sixtofour,) if sixtofour is not None else ()
    if ip in _TEREDO:
        teredo = ip.teredo
        return teredo if teredo is not None else ()
    return ()


def _v4_not_public(ip: ipaddress.IPv4Address) -> bool:
    return any(ip in net for net in _V4_NOT_PUBLIC)


def _v6_not_public(ip: ipaddress.IPv6Address) -> bool:
    if ip in _NAT64:
        return False  # the well-known NAT64 prefix itself is global; what it embeds is judged
    if ip not in _V6_GLOBAL_UNICAST:
        return True
    return any(ip in net for net in _V6_NOT_PUBLIC_IN_GLOBAL)


def is_private_destination(ip: IPAddress) -> bool:
    """Not a public Internet address: private, loopback, link-local, shared, reserved,
    unspecified, multicast, documentation, metadata, or an IPv6 form carrying such an IPv4."""
    if ip in METADATA_ADDRESSES:
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_not_public(ip)
    if ip in _MAPPED:  # exactly the IPv4 address: judged as that alone
        return _v4_not_public(_low32(ip))
    if _v6_not_public(ip):
        return True
    return any(inner in METADATA_ADDRESSES or _v4_not_public(inner) for inner in embedded_ipv4(ip))
