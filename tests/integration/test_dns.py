"""Issue 6: the DNS listener, per-client hostname attribution, DNS policy, the dial-time
resolver and the private-range guard, against a local authoritative server (dnsutil.py).

Clients are told apart by source address (127.0.0.10, .11, ... are all local on Linux): DNS
has no username, so greyproxy attributes names per source IP.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.conftest import Origin
from tests.integration.dnsutil import AuthServer, addresses, dig, query_tcp, query_udp
from tests.integration.netutil import curl, socks_connect, wait_until

# no_ca: these servers start without a CA (mitm.generate_ca: false): the tests assert the SOCKS5
# reply a proxy that cannot intercept gives a refusal (0x02).
pytestmark = [pytest.mark.skipif(not os.path.exists("/usr/bin/dig"), reason="dig (dnsutils) is not installed"),
              pytest.mark.no_ca]

CLIENT_A, CLIENT_B = "127.0.0.10", "127.0.0.11"


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    server = AuthServer()
    yield server
    server.close()


@pytest.fixture
def svc() -> Iterator[Origin]:
    """The web server that svc.test (127.0.0.5) points at."""
    server = Origin(host="127.0.0.5", body=b"hello from svc\n")
    yield server
    server.close()


def start(gp_factory, auth: AuthServer, extra_yaml: str = "", hold_seconds: float = 1.0, name: str = "data"):
    yaml = f"dns:\n  upstream: ['{auth.address}']\n" + extra_yaml
    return gp_factory(config_yaml=yaml, hold_seconds=hold_seconds, name=name)


def add_rule(gp, destination: str, container: str = "agent1", port: str = "*", action: str = "allow") -> dict:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": container, "destination_pattern": destination,
                                               "port_pattern": port, "action": action})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def fetch_via_socks(gp, host: str, port: int, source: str, user: str = "agent1") -> tuple[int, bytes]:
    """SOCKS5 CONNECT from `source`, then one GET (Connection: close); (reply code, response bytes)."""
    rep, sock = socks_connect(gp.ports["socks5"], host, port, user=user, source=source)
    with sock:
        if rep != 0:
            return rep, b""
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return rep, data


def logs(gp) -> list[dict]:
    return gp.api("GET", "/api/logs").json()["items"]


def log_for(gp, host: str, source_pred=lambda row: True) -> dict:
    row = gp.wait_for(lambda: next((r for r in logs(gp) if r["destination_host"] == host and source_pred(r)), None))
    assert row, f"no log row for {host}"
    return row


def pending(gp) -> list[dict]:
    return gp.api("GET", "/api/pending").json()["items"]


# ------------------------------------------------------------------------------ the forwarder


def test_health_reports_the_dns_port(gp_factory, auth):
    gp = start(gp_factory, auth)
    ports = gp.api("GET", "/api/health").json()["ports"]
    assert isinstance(gp.ports["dns"], int) and gp.ports["dns"] > 0
    assert ports["dns-proxy-udp"] == ports["dns-proxy-tcp"] == gp.ports["dns"]
    # the DNS listener is part of the control plane: proxied traffic cannot reach it
    rep, sock = socks_connect(gp.ports["socks5"], "127.0.0.1", gp.ports["dns"])
    sock.close()
    assert rep == 0x02


def test_dig_and_dnspython_over_udp_and_tcp(gp_factory, auth):
    gp = start(gp_factory, auth)
    port = gp.ports["dns"]
    out = dig(port, "+short", "svc.test")
    assert out.returncode == 0 and out.stdout.split() == ["127.0.0.5"], out
    out = dig(port, "+tcp", "svc.test")
    assert "127.0.0.5" in out.stdout and "(TCP)" in out.stdout, out.stdout
    assert addresses(query_udp(port, "svc.test")) == ["127.0.0.5"]
    assert addresses(query_tcp(port, "svc.test")) == ["127.0.0.5"]
    reply = query_udp(port, "nothing-here.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    # log mode: every query is logged with its client
    assert gp.wait_for(lambda: "dns client=127.0.0.1 transport=tcp name=svc.test type=A" in gp.logs())


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(gp_factory, auth):
    gp = start(gp_factory, auth)
    port = gp.ports["dns"]
    out = dig(port, "big.test", "TXT")  # dig offers 1232 bytes over UDP; the answer is ~2.5 kB
    assert out.returncode == 0, out
    assert "Truncated, retrying in TCP mode" in out.stdout
    assert "(TCP)" in out.stdout and out.stdout.count("IN\tTXT\t") == 12, out.stdout

    udp = query_udp(port, "big.test", "TXT")  # no EDNS: 512 bytes at most
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = query_tcp(port, "big.test", "TXT")
    assert not tcp.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in tcp.answer) == 12


def test_truncated_upstream_answer_is_fetched_over_tcp(gp_factory, auth):
    gp = start(gp_factory, auth)
    # ~850 bytes: the upstream truncates it over UDP; the client offers 4096, so greyproxy
    # fetches the whole answer over TCP and still answers over UDP.
    reply = query_udp(gp.ports["dns"], "mid.test", "TXT", use_edns=0, payload=4096)
    assert not reply.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in reply.answer) == 4
    assert "mid.test" in auth.names("udp") and "mid.test" in auth.names("tcp")
    out = dig(gp.ports["dns"], "+bufsize=4096", "mid.test", "TXT")
    assert "Truncated" not in out.stdout and out.stdout.count("IN\tTXT\t") == 4, out.stdout


# ------------------------------------------------------------------------------ attribution


def test_resolved_name_applies_to_raw_ip_only_for_the_client_that_resolved_it(gp_factory, auth, svc):
    gp = start(gp_factory, auth)
    add_rule(gp, "svc.test")
    out = dig(gp.ports["dns"], "+short", "svc.test", source=CLIENT_A)
    assert out.stdout.split() == ["127.0.0.5"], out

    # A connects by IP (tun2socks style) and gets the svc.test rule ...
    rep, data = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)
    assert rep == 0 and data.endswith(b"hello from svc\n")
    client = curl("--interface", CLIENT_A, "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}",
                  f"http://127.0.0.5:{svc.port}/")
    out_bytes, err = client.communicate(timeout=20)
    assert client.returncode == 0 and out_bytes == b"hello from svc\n", err

    row = log_for(gp, "127.0.0.5", lambda r: r["result"] == "allowed")
    assert row["resolved_hostname"] == "svc.test" and row["dialed_ip"] == "127.0.0.5"

    # ... B, same username but it never resolved svc.test, does not.
    rep, _ = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_B)
    assert rep == 0x02
    items = [p for p in pending(gp) if p["destination_host"] == "127.0.0.5"]
    assert items and items[0]["resolved_hostname"] is None


def test_pending_row_carries_the_resolved_name_and_approval_names_the_host(gp_factory, auth, svc):
    gp = start(gp_factory, auth, hold_seconds=10)
    dig(gp.ports["dns"], "svc.test", source=CLIENT_A)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        out=fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)))
    worker.start()
    item = gp.wait_for(lambda: next((p for p in pending(gp) if p["destination_host"] == "127.0.0.5"), None))
    assert item and item["resolved_hostname"] == "svc.test"
    resp = gp.api("POST", f"/api/pending/{item['id']}/allow", json={"scope": "exact"})
    assert resp.status_code == 200, resp.text
    worker.join(10)
    rep, data = result["out"]
    assert rep == 0 and data.endswith(b"hello from svc\n")
    rules = gp.api("GET", "/api/rules", params={"destination": "svc.test"}).json()["items"]
    assert [r["destination_pattern"] for r in rules] == ["svc.test"], "the rule names the host, not the IP"


def test_forged_ptr_never_makes_a_connection_match_a_name_rule(gp_factory, auth, svc):
    gp = start(gp_factory, auth)
    add_rule(gp, "svc.test")
    out = dig(gp.ports["dns"], "+short", "-x", "127.0.0.5", source=CLIENT_B)
    assert out.stdout.split() == ["svc.test."], out  # the reverse zone claims 127.0.0.5 is svc.test
    rep, _ = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_B)
    assert rep == 0x02
    assert [p["resolved_hostname"] for p in pending(gp)] == [None]
    assert svc.requests == []
    # The PTR name is shown to the human deciding, marked as such, and still grants nothing.
    assert gp.wait_for(lambda: [p["ptr_hostname"] for p in pending(gp)] == ["svc.test"])
    rep, _ = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_B)
    assert rep == 0x02 and svc.requests == []
    row = log_for(gp, "127.0.0.5")
    assert row["resolved_hostname"] is None and row["ptr_hostname"] == "svc.test"
    assert auth.names().count("5.0.0.127.in-addr.arpa") == 2, "the client's dig -x, then one lookup of ours"


def test_cname_answer_is_attributed_to_the_name_asked_for(gp_factory, auth, svc):
    gp = start(gp_factory, auth)
    add_rule(gp, "svc.test")
    dig(gp.ports["dns"], "alias.test", source=CLIENT_A)  # alias.test CNAME svc.test -> 127.0.0.5
    rep, _ = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)
    assert rep == 0x02, "the client asked for alias.test: rules for svc.test do not apply"
    add_rule(gp, "alias.test")
    rep, data = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)
    assert rep == 0 and data.endswith(b"hello from svc\n")


def _cache_rows(gp) -> list[tuple]:
    with sqlite3.connect(gp.data_dir / "greyproxy.db") as db:
        return db.execute("SELECT client_ip, ip, hostname FROM dns_cache").fetchall()


def test_cache_survives_restart_and_expired_entries_are_not_used(gp_factory, auth, svc):
    gp = start(gp_factory, auth)
    add_rule(gp, "svc.test")
    dig(gp.ports["dns"], "svc.test", source=CLIENT_A)
    assert wait_until(lambda: (CLIENT_A, "127.0.0.5", "svc.test") in _cache_rows(gp), 5)

    gp.restart()
    rep, data = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)
    assert rep == 0 and data.endswith(b"hello from svc\n")

    gp.stop()
    with sqlite3.connect(gp.data_dir / "greyproxy.db") as db:
        db.execute("UPDATE dns_cache SET expires_at = '2000-01-01 00:00:00'")
    gp.start()
    rep, _ = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)
    assert rep == 0x02, "an expired attribution must not be used"


# ------------------------------------------------------------------------------ DNS policy


def test_enforce_answers_only_names_a_rule_allows(gp_factory, auth):
    gp = start(gp_factory, auth, "  policy: enforce\n")
    add_rule(gp, "svc.test", container="*", port="443")  # allowed on some port: resolvable
    add_rule(gp, "blocked.test", container="*", action="deny")
    port = gp.ports["dns"]
    assert addresses(query_udp(port, "svc.test")) == ["127.0.0.5"]
    assert query_udp(port, "blocked.test").rcode() == dns.rcode.NXDOMAIN
    assert query_tcp(port, "other.test").rcode() == dns.rcode.NXDOMAIN
    assert "blocked.test" not in auth.names() and "other.test" not in auth.names(), "must not leave the host"
    logged = gp.logs()
    assert "name=blocked.test type=A rcode=NXDOMAIN answers=0 policy=denied_by_rule" in logged
    assert "name=other.test type=A rcode=NXDOMAIN answers=0 policy=no_matching_rule" in logged


def test_log_mode_answers_everything(gp_factory, auth):
    gp = start(gp_factory, auth)
    add_rule(gp, "blocked.test", container="*", action="deny")
    assert addresses(query_udp(gp.ports["dns"], "blocked.test")) == ["127.0.0.7"]
    assert addresses(query_udp(gp.ports["dns"], "other.test")) == ["127.0.0.8"]


# ------------------------------------------------------------------------------ robustness


def _garbage(query: bytes) -> list[bytes]:
    rng = random.Random(6)
    response = bytearray(query)
    response[2] |= 0x80  # QR: a response sent to a server
    return [
        b"", b"\x00", b"\xff" * 11, query[:12], query[:-3], bytes(response),
        bytes(rng.getrandbits(8) for _ in range(40)), b"\x00" * 512, os.urandom(1400),
    ]


def test_garbage_and_floods_from_one_client_do_not_stop_answers_to_another(gp_factory, auth):
    gp = start(gp_factory, auth)
    port = gp.ports["dns"]
    attacker, victim = "127.0.0.20", "127.0.0.21"
    good = dns.message.make_query("svc.test", "A").to_wire()
    slow = dns.message.make_query("slow.test", "A").to_wire()  # the upstream never answers it
    stop = threading.Event()

    def flood() -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((attacker, 0))
        held = []
        for packet in (b"\x00\x05abc", b"\xff\xff" + good, b"\x00\x02\x00"):  # bad TCP framing
            t = socket.create_connection(("127.0.0.1", port), source_address=(attacker, 0))
            t.sendall(packet)
            held.append(t)
        for _ in range(30):  # more TCP connections than one client may hold, left idle
            try:
                held.append(socket.create_connection(("127.0.0.1", port), source_address=(attacker, 0), timeout=2))
            except OSError:
                pass
        packets = _garbage(good) + [slow] * 20 + [good] * 5
        while not stop.is_set():
            for packet in packets:
                try:
                    udp.sendto(packet, ("127.0.0.1", port))
                except OSError:
                    pass
            time.sleep(0.001)
        for s in held + [udp]:
            s.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        time.sleep(0.5)
        answered = 0
        for i in range(10):
            for _attempt in range(3):  # a UDP client retries; a lost datagram is not an outage
                try:
                    if addresses(query_udp(port, "svc.test", source=victim, timeout=1.5)) == ["127.0.0.5"]:
                        answered += 1
                        break
                except dns.exception.Timeout:
                    continue
            if i % 3 == 0:
                assert addresses(query_tcp(port, "svc.test", source=victim, timeout=3)) == ["127.0.0.5"]
        assert answered == 10
    finally:
        stop.set()
        flooder.join(10)
    # the listener is still healthy once the flood is over
    assert addresses(query_udp(port, "svc.test", timeout=3)) == ["127.0.0.5"]


def test_tcp_length_prefix_must_frame_a_whole_query(gp_factory, auth):
    gp = start(gp_factory, auth)
    wire = dns.message.make_query("svc.test", "A").to_wire()
    with socket.create_connection(("127.0.0.1", gp.ports["dns"]), timeout=5) as sock:
        # two pipelined queries on one connection, both answered
        sock.sendall((struct.pack("!H", len(wire)) + wire) * 2)
        for _ in range(2):
            (length,) = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))
            reply = dns.message.from_wire(sock.recv(length, socket.MSG_WAITALL))
            assert addresses(reply) == ["127.0.0.5"]
        sock.sendall(struct.pack("!H", 5) + b"junk!")  # too short to be a query: closed
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass  # closed with the junk unread: a reset is a close too


# ------------------------------------------------------------------------------ dialling


def test_dial_uses_the_configured_upstream_and_records_the_ip_dialled(gp_factory, auth, svc):
    gp = start(gp_factory, auth)
    add_rule(gp, "svc.test")
    rep, data = fetch_via_socks(gp, "svc.test", svc.port, source=CLIENT_A)
    assert rep == 0 and data.endswith(b"hello from svc\n")
    assert "svc.test" in auth.names()
    row = log_for(gp, "svc.test")
    assert (row["result"], row["dialed_ip"]) == ("allowed", "127.0.0.5")


def test_private_range_guard(gp_factory, auth, svc):
    gp = start(gp_factory, auth, "guard: {private_ranges: deny}\n")
    add_rule(gp, "svc.test")  # a name rule does not open a private address ...
    client = curl("-i", "-x", f"http://agent1:x@127.0.0.1:{gp.ports['http']}", f"http://svc.test:{svc.port}/")
    out, _ = client.communicate(timeout=20)
    text = out.decode()
    assert text.startswith("HTTP/1.1 403") and "X-Greyproxy-Reason: private_range" in text, text
    rep, _ = fetch_via_socks(gp, "svc.test", svc.port, source=CLIENT_A)
    assert rep == 0x02
    row = log_for(gp, "svc.test")
    assert (row["result"], row["reason"]) == ("blocked", "private_range")

    # ... nor does the name reached through DNS attribution
    dig(gp.ports["dns"], "svc.test", source=CLIENT_A)
    rep, _ = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A)
    assert rep == 0x02

    # a rule naming the IP, or a CIDR containing it, does
    add_rule(gp, "127.0.0.5", container="agent2")
    add_rule(gp, "127.0.0.0/8", container="agent3")
    for user in ("agent2", "agent3"):
        rep, data = fetch_via_socks(gp, "127.0.0.5", svc.port, source=CLIENT_A, user=user)
        assert rep == 0 and data.endswith(b"hello from svc\n"), user
    assert len(svc.requests) == 2
