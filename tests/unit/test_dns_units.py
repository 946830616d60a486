"""Pure pieces of issue 6: DNS policy, the private-range guard, the resolver's cache, the
answerer's handling of odd packets, upstream parsing. No sockets: the upstream is a fake."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from greyproxy.config import ConfigError, load_config, parse_dns_server
from greyproxy.policy.decide import ModeEntry, PolicyState
from greyproxy.policy.dnspolicy import DnsPolicy, representative_ports
from greyproxy.policy.index import RuleIndex, RuleSpec
from greyproxy.proxy.dns import DnsAnswerer
from greyproxy.proxy.dnscache import HostnameCache
from greyproxy.proxy.dnsupstream import UpstreamError, servers_from_resolv_conf
from greyproxy.proxy.guard import ControlPlaneGuard, is_private_destination, rule_names_address
from greyproxy.proxy.resolver import ResolveError, Resolver


def rule(i: int, dest: str, port: str = "*", action: str = "allow", container: str = "*") -> RuleSpec:
    return RuleSpec(i, container, dest, port, action)


# ------------------------------------------------------------------------------ DNS policy


def test_representative_ports_cover_every_stretch():
    rules = [rule(1, "a", "443"), rule(2, "b", "8000-8080"), rule(3, "c", "*"), rule(4, "d", "bad")]
    assert representative_ports(rules) == (1, 443, 444, 8000, 8081)
    assert representative_ports([rule(1, "a", "65535")]) == (1, 65535)


@pytest.mark.parametrize(
    ("rules", "name", "allowed", "reason"),
    [
        ([], "x.example", False, "no_matching_rule"),
        ([rule(1, "x.example", "443")], "x.example", True, "allowed_by_rule"),
        ([rule(1, "*.example", "443")], "x.example", True, "allowed_by_rule"),
        ([rule(1, "x.example", "*", "deny")], "x.example", False, "denied_by_rule"),
        # denied on 80 but allowed on 443: some connection is possible, so the name resolves
        ([rule(1, "x.example", "443"), rule(2, "x.example", "80", "deny")], "x.example", True, "allowed_by_rule"),
        # the specific deny beats the wildcard allow on every port
        ([rule(1, "*.example", "*"), rule(2, "x.example", "*", "deny")], "x.example", False, "denied_by_rule"),
        ([rule(1, "x.example", "*", container="agent1")], "x.example", False, "no_matching_rule"),
        ([rule(1, "x.example", "*", container="unknown-*")], "x.example", True, "allowed_by_rule"),
    ],
)
def test_dns_verdict(rules, name, allowed, reason):
    verdict = DnsPolicy().verdict(PolicyState(RuleIndex(rules)), "unknown-10.0.0.1", name)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


def test_dns_verdict_modes():
    policy, index = DnsPolicy(), RuleIndex([rule(1, "x.example", "*", "deny")])
    assert policy.verdict(PolicyState(index, silent_mode="allow"), "c", "x.example").allowed
    assert not policy.verdict(PolicyState(index, silent_mode="deny"), "c", "y.example").allowed
    assert policy.verdict(PolicyState(index, allow_all_containers=frozenset({"c"})), "c", "x.example").allowed
    open_mode = PolicyState(index, modes=(ModeEntry(1, "c", "open"),))
    assert policy.verdict(open_mode, "c", "x.example").allowed


# ------------------------------------------------------------------------------ private ranges


@pytest.mark.parametrize(
    ("ip", "private"),
    [("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True), ("127.0.0.5", True),
     ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True), ("::1", True), ("fe80::1", True),
     ("fd00:ec2::254", True), ("::ffff:10.0.0.1", True), ("64:ff9b::a00:1", True), ("2002:a00:1::", True),
     ("93.184.216.34", False), ("2606:2800:220:1:248:1893:25c8:1946", False), ("64:ff9b::5db8:d822", False)],
)
def test_is_private_destination(ip, private):
    assert is_private_destination(ipaddress.ip_address(ip)) is private


@pytest.mark.parametrize(
    ("pattern", "ip", "names"),
    [("10.0.0.5", "10.0.0.5", True), ("10.0.0.0/8", "10.0.0.5", True), ("10.0.0.6", "10.0.0.5", False),
     ("*", "10.0.0.5", False), ("svc.internal", "10.0.0.5", False), ("**.internal", "10.0.0.5", False),
     ("fd00::/8", "fd00::1", True), ("10.0.0.0/8", "fd00::1", False), (None, "10.0.0.5", False),
     ("bad pattern", "10.0.0.5", False)],
)
def test_rule_names_address(pattern, ip, names):
    assert rule_names_address(pattern, ipaddress.ip_address(ip)) is names


def test_guard_private_ranges_only_when_on():
    off, on = ControlPlaneGuard(), ControlPlaneGuard(deny_private=True)
    assert not off.private_range_refused("10.0.0.5", None)
    assert on.private_range_refused("10.0.0.5", "svc.internal")
    assert not on.private_range_refused("10.0.0.5", "10.0.0.0/24")
    assert not on.private_range_refused("93.184.216.34", None)
    assert on.private_range_refused("::ffff:169.254.169.254", "*")


# ------------------------------------------------------------------------------ fakes


class FakeUpstream:
    """Answers from a table: name -> (ttl, [addresses]); raises for names not in it."""

    timeout = 1.0

    def __init__(self, table: dict[str, tuple[int, list[str]]]) -> None:
        self.table = table
        self.servers = (("192.0.2.53", 53),)
        self.asked: list[str] = []

    def exchange(self, query: dns.message.Message, wire: bytes | None = None, tcp: bool = False):
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True)
        self.asked.append(name)
        if name not in self.table:
            raise UpstreamError("no answer")
        reply = dns.message.make_response(query)
        ttl, addrs = self.table[name]
        wanted = [a for a in addrs if (":" in a) == (q.rdtype == 28)]
        if wanted:
            reply.answer.append(dns.rrset.from_text_list(q.name, ttl, "IN", q.rdtype, wanted))
        wire = reply.to_wire()
        return dns.message.from_wire(wire), wire  # parsed, as a real exchange returns it


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ resolver


def test_resolver_orders_ipv4_first_and_caches_with_clamped_ttl():
    upstream, clock = FakeUpstream({"svc.test": (1, ["::5", "127.0.0.5"])}), Clock()
    resolver = Resolver(upstream, clock=clock, system=lambda host: pytest.fail("no fallback expected"))
    assert resolver.resolve("SVC.test.") == ["127.0.0.5", "::5"]
    asked = len(upstream.asked)
    clock.now += 9  # TTL 1 is clamped to 10 s
    assert resolver.resolve("svc.test") == ["127.0.0.5", "::5"] and len(upstream.asked) == asked
    clock.now += 2
    resolver.resolve("svc.test")
    assert len(upstream.asked) > asked


def test_resolver_falls_back_to_the_system_and_skips_dns_for_literals_and_localhost():
    upstream = FakeUpstream({})
    seen: list[str] = []

    def system(host: str) -> list[str]:
        seen.append(host)
        if host == "gone.test":
            raise ResolveError("nope")
        return ["127.0.0.1"]

    resolver = Resolver(upstream, system=system)
    assert resolver.resolve("10.0.0.1") == ["10.0.0.1"]
    assert resolver.resolve("[::1]") == ["::1"]
    assert resolver.resolve("localhost") == ["127.0.0.1"]
    assert upstream.asked == []
    assert resolver.resolve("hosts-file.test") == ["127.0.0.1"]
    with pytest.raises(ResolveError):
        resolver.resolve("gone.test")
    assert seen == ["localhost", "hosts-file.test", "gone.test"]


def test_resolver_cache_is_bounded():
    upstream = FakeUpstream({f"n{i}.test": (300, [f"10.0.{i // 256}.{i % 256}"]) for i in range(50)})
    resolver = Resolver(upstream, max_entries=10)
    for i in range(50):
        resolver.resolve(f"n{i}.test")
    assert len(resolver) == 10


# ------------------------------------------------------------------------------ answerer


def _answerer(mode: str = "log", rules: list[RuleSpec] | None = None):
    cache = HostnameCache()
    upstream = FakeUpstream({"svc.test": (60, ["127.0.0.5"])})
    state = PolicyState(RuleIndex(rules or []))
    return DnsAnswerer(upstream, cache, lambda: state, mode), cache, upstream  # type: ignore[arg-type]


@pytest.mark.parametrize("packet", [b"", b"\x00" * 12 + b"\x01", b"\xff" * 40, b"\x12\x34\x01\x00\x00\x01"])
def test_malformed_packets_are_dropped(packet):
    answerer, cache, _ = _answerer()
    assert answerer.answer(packet, "10.0.0.1", "udp") is None
    assert len(cache) == 0


def test_responses_are_not_answered_and_other_opcodes_are_notimp():
    answerer, _, _ = _answerer()
    query = dns.message.make_query("svc.test", "A")
    response = dns.message.make_response(query)
    assert answerer.answer(response.to_wire(), "10.0.0.1", "udp") is None
    query.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(answerer.answer(query.to_wire(), "10.0.0.1", "udp"))
    assert reply.rcode() == dns.rcode.NOTIMP


def test_answers_are_recorded_for_the_asking_client_only():
    answerer, cache, _ = _answerer()
    query = dns.message.make_query("svc.test", "A")
    reply = dns.message.from_wire(answerer.answer(query.to_wire(), "10.0.0.1", "udp"))
    assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR
    assert cache.lookup("10.0.0.1", "127.0.0.5") == "svc.test"
    assert cache.lookup("10.0.0.2", "127.0.0.5") is None


def test_upstream_failure_is_servfail_and_records_nothing():
    answerer, cache, _ = _answerer()
    reply = dns.message.from_wire(answerer.answer(dns.message.make_query("down.test", "A").to_wire(), "10.0.0.1", "tcp"))
    assert reply.rcode() == dns.rcode.SERVFAIL and len(cache) == 0


def test_enforce_never_forwards_an_unallowed_name():
    answerer, _, upstream = _answerer("enforce", [rule(1, "svc.test", "443")])
    ok = dns.message.from_wire(answerer.answer(dns.message.make_query("svc.test", "A").to_wire(), "10.0.0.1", "udp"))
    assert ok.rcode() == dns.rcode.NOERROR
    no = dns.message.from_wire(answerer.answer(dns.message.make_query("leak.test", "A").to_wire(), "10.0.0.1", "udp"))
    assert no.rcode() == dns.rcode.NXDOMAIN and "leak.test" not in upstream.asked


def test_too_big_for_udp_gets_tc():
    answerer, _, upstream = _answerer()
    upstream.table["many.test"] = (60, [f"10.0.0.{i}" for i in range(1, 60)])  # ~960 bytes
    wire = dns.message.make_query("many.test", "A").to_wire()
    reply = dns.message.from_wire(answerer.answer(wire, "10.0.0.1", "udp"))
    assert reply.flags & dns.flags.TC and not reply.answer
    full = dns.message.from_wire(answerer.answer(wire, "10.0.0.1", "tcp"))
    assert len(full.answer[0]) == 59


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("text", "server"),
    [("9.9.9.9", ("9.9.9.9", 53)), ("9.9.9.9:5353", ("9.9.9.9", 5353)), ("udp://1.1.1.1:53", ("1.1.1.1", 53)),
     ("[2620:fe::fe]:53", ("2620:fe::fe", 53)), ("2620:fe::fe", ("2620:fe::fe", 53))],
)
def test_parse_dns_server(text, server):
    assert parse_dns_server(text, "dns.upstream[0]") == server


@pytest.mark.parametrize("text", ["dns.google:53", "9.9.9.9:x", "9.9.9.9:0", "[::1]x", ""])
def test_parse_dns_server_rejects(text):
    with pytest.raises(ConfigError, match=r"dns\.upstream\[0\]"):
        parse_dns_server(text, "dns.upstream[0]")


@pytest.mark.parametrize(
    ("yaml", "key"),
    [("dns: {policy: strict}\n", "dns.policy"), ("guard: {private_ranges: maybe}\n", "guard.private_ranges"),
     ("dns: {upstream: 9.9.9.9}\n", "dns.upstream")],
)
def test_bad_dns_and_guard_config_names_the_key(tmp_path, yaml, key):
    path = tmp_path / "c.yml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, env={})


def test_dns_config_values(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("dns: {upstream: ['127.0.0.1:5300'], policy: enforce}\nguard: {private_ranges: deny}\n")
    cfg = load_config(path, env={})
    assert (cfg.dns_upstream, cfg.dns_policy, cfg.guard_private_ranges) == ((("127.0.0.1", 5300),), "enforce", "deny")


def test_servers_from_resolv_conf():
    text = "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver bogus\nnameserver ::1\noptions edns0\n"
    assert servers_from_resolv_conf(text) == [("127.0.0.53", 53), ("::1", 53)]
