"""Address classes of the private-range guard: every IPv6 form that carries an IPv4 is unwrapped and the IPv4 judged;
unspecified, reserved, multicast, documentation and local-use ranges are not public."""

from __future__ import annotations

import ipaddress

import pytest

from greyproxy.policy.addresses import embedded_ipv4, is_private_destination
from greyproxy.proxy.guard import ControlPlaneGuard, rule_names_address


@pytest.mark.parametrize(
    ("ip", "private", "why"),
    [
        # IPv4
        ("8.8.8.8", False, "public"),
        ("1.1.1.1", False, "public"),
        ("0.0.0.0", True, "unspecified"),
        ("0.1.2.3", True, "this network"),
        ("10.1.2.3", True, "private"),
        ("100.64.0.1", True, "shared (CGNAT)"),
        ("100.100.100.200", True, "metadata (Alibaba)"),
        ("127.0.0.12", True, "loopback"),
        ("169.254.169.254", True, "metadata / link-local"),
        ("172.16.0.1", True, "private"),
        ("192.0.0.9", True, "IETF protocol assignments"),
        ("192.0.2.1", True, "documentation"),
        ("192.88.99.1", True, "6to4 relay anycast (deprecated)"),
        ("192.168.1.1", True, "private"),
        ("198.18.0.1", True, "benchmarking"),
        ("198.51.100.1", True, "documentation"),
        ("203.0.113.1", True, "documentation"),
        ("224.0.0.1", True, "multicast"),
        ("239.255.255.250", True, "multicast"),
        ("240.0.0.1", True, "reserved"),
        ("255.255.255.255", True, "broadcast"),
        # IPv6: plain classes
        ("2606:4700:4700::1111", False, "public"),
        ("::", True, "unspecified"),
        ("::1", True, "loopback"),
        ("fe80::1", True, "link-local"),
        ("fec0::1", True, "site-local (deprecated)"),
        ("fc00::1", True, "ULA"),
        ("fd00:ec2::254", True, "metadata (AWS)"),
        ("ff02::1", True, "multicast"),
        ("ff0e::1", True, "global-scope multicast"),
        ("100::1", True, "discard-only"),
        ("2001:db8::1", True, "documentation"),
        ("3fff::1", True, "documentation (RFC 9637)"),
        ("2001:2::1", True, "benchmarking"),
        ("2001:10::1", True, "ORCHID (deprecated)"),
        ("5f00::1", True, "SRv6 SIDs"),
        ("4000::1", True, "outside global unicast (unallocated)"),
        ("::1:2:3:4", True, "reserved ::/8"),
        # IPv6 forms carrying an IPv4
        ("::ffff:127.0.0.12", True, "IPv4-mapped loopback"),
        ("::ffff:8.8.8.8", False, "IPv4-mapped public"),
        ("::127.0.0.12", True, "IPv4-compatible loopback"),
        ("::169.254.169.254", True, "IPv4-compatible metadata"),
        ("::8.8.8.8", True, "IPv4-compatible (deprecated, inside reserved ::/8)"),
        ("64:ff9b::7f00:c", True, "NAT64 of loopback"),
        ("64:ff9b::a9fe:a9fe", True, "NAT64 of metadata"),
        ("64:ff9b::808:808", False, "NAT64 of a public address"),
        ("64:ff9b:1::a9fe:a9fe", True, "local-use NAT64 (RFC 8215) of metadata"),
        ("64:ff9b:1::7f00:c", True, "local-use NAT64 of loopback"),
        ("64:ff9b:1::808:808", True, "local-use NAT64: never global"),
        ("2002:7f00:c::1", True, "6to4 of loopback"),
        ("2002:a9fe:a9fe::1", True, "6to4 of metadata"),
        ("2002:808:808::1", False, "6to4 of a public address"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True, "Teredo, client 192.0.2.45 (documentation)"),
        ("2001:0:808:808:0:0:f7f7:f7f7", False, "Teredo, server 8.8.8.8, client 8.8.8.8"),
        ("2001:0:808:808:0:0:80ff:fff3", True, "Teredo, client 127.0.0.12 (obfuscated)"),
        ("2001:0:7f00:c::1", True, "Teredo, server 127.0.0.12"),
    ],
)
def test_is_private_destination(ip: str, private: bool, why: str) -> None:
    assert is_private_destination(ipaddress.ip_address(ip)) is private, why


@pytest.mark.parametrize(
    ("ip", "inner"),
    [
        ("::ffff:127.0.0.12", ["127.0.0.12"]),
        ("::127.0.0.12", ["127.0.0.12"]),
        ("64:ff9b::7f00:c", ["127.0.0.12"]),
        ("64:ff9b:1::7f00:c", ["127.0.0.12"]),
        ("2002:7f00:c::1", ["127.0.0.12"]),
        ("2001:0:808:808:0:0:80ff:fff3", ["8.8.8.8", "127.0.0.12"]),
        ("2606:4700:4700::1111", []),
    ],
)
def test_embedded_ipv4(ip: str, inner: list[str]) -> None:
    assert [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(ip))] == inner


@pytest.mark.parametrize(
    "dialled",
    ["64:ff9b:1::7f00:c", "[64:ff9b:1::a9fe:a9fe]", "::127.0.0.12", "[::127.0.0.12]", "::ffff:7f00:c",
     "2002:7f00:c::", "64:ff9b::a9fe:a9fe", "ff02::1", "224.0.0.251", "0.0.0.0", "::",
     "2130706444", "0x7f00000c", "0251.0376.0251.0376"],
)
def test_guard_refuses_private_in_any_spelling(dialled: str) -> None:
    guard = ControlPlaneGuard(deny_private=True)
    assert guard.private_range_refused(dialled, "*")
    assert not ControlPlaneGuard().private_range_refused(dialled, "*")  # off by default


def test_a_rule_naming_the_ipv4_does_not_name_its_ipv6_wrappings() -> None:
    guard = ControlPlaneGuard(deny_private=True)
    assert not guard.private_range_refused("127.0.0.12", "127.0.0.12")
    assert not guard.private_range_refused("::ffff:127.0.0.12", "127.0.0.12")  # the same address
    assert not guard.private_range_refused("2130706444", "127.0.0.0/8")
    assert guard.private_range_refused("64:ff9b:1::7f00:c", "127.0.0.12")
    assert guard.private_range_refused("::127.0.0.12", "127.0.0.0/8")
    assert not guard.private_range_refused("64:ff9b:1::7f00:c", "64:ff9b:1::/48")  # named explicitly


def test_rule_names_address_in_any_spelling() -> None:
    assert rule_names_address("2130706444", ipaddress.ip_address("127.0.0.12"))
    assert rule_names_address("::ffff:127.0.0.12", ipaddress.ip_address("127.0.0.12"))
    assert rule_names_address("[FE80::1%eth0]", ipaddress.ip_address("fe80::1"))
    assert not rule_names_address("127.0.0.12", ipaddress.ip_address("::127.0.0.12"))
