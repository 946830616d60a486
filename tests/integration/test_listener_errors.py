"""Hostile bytes on the listeners: no forged log lines, no tracebacks, one clean refusal on that
one connection, and the next client is served as usual.

The serve log is read as a log reader would: every line that mentions `decision` must be one
whole record (a timestamp, a level, a logger), and no record other than a real decision may
carry a `decision=allow` field."""

from __future__ import annotations

import base64
import json
import re
import socket
import struct

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from tests.integration.dnsutil import AuthServer
from tests.integration.netutil import EchoServer, recv_exact, socks_connect
from tests.unit.test_log_escaping import parse_fields

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

FORGED = "a.test\ndecision=allow x"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")
DECISION = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO greyproxy\.decision: decision (.*)$")


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def auth():
    server = AuthServer()
    yield server
    server.close()


def socks_raw(port: int, request: bytes, user: bytes | None = None) -> bytes:
    """Negotiate (no auth, or username/password), send one request; the reply's first 2 bytes
    (b'' if the proxy closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if user is None:
            sock.sendall(b"\x05\x01\x00")
            assert recv_exact(sock, 2) == b"\x05\x00"
        else:
            sock.sendall(b"\x05\x01\x02")
            assert recv_exact(sock, 2) == b"\x05\x02"
            sock.sendall(bytes((1, len(user))) + user + b"\x01x")
            assert recv_exact(sock, 2) == b"\x01\x00"
        sock.sendall(request)
        answer = b""
        try:
            while len(answer) < 10:
                chunk = sock.recv(10 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
        return answer[:2]


def domain_request(domain: bytes, port: int = 443) -> bytes:
    # 443: without a CA a refusal there is the 0x02 reply asserted here (on port 80 greyproxy
    # accepts and answers the 403 in clear instead: test_told_why.py).
    return b"\x05\x01\x00\x03" + bytes((len(domain),)) + domain + struct.pack("!H", port)


def http_raw(port: int, payload: bytes) -> bytes:
    """Send one request, read until the proxy closes or a whole short answer arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        return data


def start(gp_factory, echo: EchoServer, **kw):
    """A greyproxy where agent1 may reach the echo server (what `still_works` uses)."""
    gp = gp_factory(hold_seconds=1, **kw)
    allow = {"container_pattern": "agent1", "destination_pattern": echo.host, "port_pattern": str(echo.port)}
    assert gp.api("POST", "/api/rules", json=allow).status_code == 201
    return gp


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:x".encode()).decode()


def still_works(gp, echo) -> None:
    """A normal client on a new connection, right after: SOCKS5 and the HTTP proxy."""
    rep, sock = socks_connect(gp.ports["socks5"], echo.host, echo.port)
    assert rep == 0
    sock.sendall(b"ok?")
    assert sock.recv(3) == b"ok?"
    sock.close()
    with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10) as sock:
        target = f"{echo.host}:{echo.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic('agent1')}\r\n\r\n"
                     .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(b"ok?")  # not a method token: piped at once, not awaited as a request line
        assert recv_exact(sock, 3) == b"ok?"


def check_log(gp) -> list[dict[str, str]]:
    """No traceback, no forged record; the real decision records' fields."""
    text = gp.logs()
    assert "Traceback" not in text, text
    decisions = []
    for line in text.splitlines():
        if "decision" in line:
            assert RECORD.match(line), f"a line that is not a whole record: {line!r}"
        m = DECISION.match(line)
        if m:
            decisions.append(parse_fields(m.group(1)))
        else:
            assert not re.search(r'(^|\s)decision=allow(\s|$)', line), f"forged field: {line!r}"
    return decisions


def test_socks5_log_injection_is_refused_and_logged_escaped(gp_factory, echo):
    gp = start(gp_factory, echo)
    deny = {"container_pattern": "*", "destination_pattern": "denied.test", "action": "deny"}
    assert gp.api("POST", "/api/rules", json=deny).status_code == 201

    # 0x08: a destination that is not a host name is refused before any decision is made.
    assert socks_raw(gp.ports["socks5"], domain_request(FORGED.encode())) == b"\x05\x08"
    assert socks_raw(gp.ports["socks5"], domain_request(b"a.test\r\n\x1b[2J")) == b"\x05\x08"
    # A hostile username reaches the decision line (the container field): escaped there.
    assert socks_raw(gp.ports["socks5"], domain_request(b"denied.test"), user=FORGED.encode()) == b"\x05\x02"
    hostile_http = http_raw(gp.ports["http"], (
        f"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\nProxy-Authorization: {basic(FORGED)}\r\n\r\n"
    ).encode())
    assert hostile_http.startswith(b"HTTP/1.1 403"), hostile_http[:80]
    still_works(gp, echo)

    assert gp.wait_for(lambda: gp.logs().count("greyproxy.decision: decision") >= 4), gp.logs()
    decisions = check_log(gp)
    forged_rows = [d for d in decisions if d["container"] == FORGED]
    assert len(forged_rows) == 2 and {d["decision"] for d in forged_rows} == {"block"}
    assert {d["destination"] for d in forged_rows} == {"denied.test"}
    assert {d["decision"] for d in decisions if d["container"] == "agent1"} == {"allow"}
    assert 'not a host name: "a.test\\ndecision=allow x"' in gp.logs()
    assert not gp.api("GET", "/api/pending").json()["items"]  # nothing hostile reached the dashboard


def test_json_log_lines_stay_one_object_each(gp_factory, echo):
    gp = start(gp_factory, echo, config_yaml="log: {format: json}\n")
    deny = {"container_pattern": "*", "destination_pattern": "denied.test", "action": "deny"}
    assert gp.api("POST", "/api/rules", json=deny).status_code == 201
    assert socks_raw(gp.ports["socks5"], domain_request(FORGED.encode())) == b"\x05\x08"
    assert socks_raw(gp.ports["socks5"], domain_request(b"denied.test"),
                     user=(FORGED + "\u2028\x85").encode()) == b"\x05\x02"
    assert gp.wait_for(lambda: '"decision"' in gp.logs())
    records = [json.loads(line) for line in gp.logs().splitlines() if "decision" in line]
    decisions = [r for r in records if r["msg"] == "decision"]
    assert [(r["container"], r["decision"]) for r in decisions] == [(FORGED + "\u2028\x85", "block")]
    assert any(FORGED in r["msg"] for r in records if r["msg"] != "decision")  # the 0x08 refusal
    text = gp.logs()  # no raw U+2028 / U+0085: a reader splitting on any line break sees the same lines
    assert text.splitlines() == text.rstrip("\n").split("\n")


SOCKS_REFUSALS = [
    # ASCII with no canonical spelling: the gate's bad_destination decision, 0x02 at once.
    pytest.param(b"xn--zz.test", 0x02, id="invalid-idna-punycode"),
    pytest.param(b"xn--.test", 0x02, id="empty-punycode"),
    # Bytes no host spelling uses: refused by the listener, 0x08, before any decision.
    pytest.param(b"\xff\xfe.test", 0x08, id="not-utf8"),
    pytest.param("bücher.test".encode(), 0x08, id="raw-utf8"),
    pytest.param(b"a b.test", 0x08, id="space"),
    pytest.param(b"a\x00.test", 0x08, id="nul"),
    pytest.param(b'a"b.test', 0x08, id="quote"),
]


@pytest.mark.parametrize(("domain", "expected"), SOCKS_REFUSALS)
def test_socks5_unusable_domains_are_refused_cleanly(gp_factory, echo, domain, expected):
    gp = start(gp_factory, echo)
    assert socks_raw(gp.ports["socks5"], domain_request(domain)) == bytes((5, expected))
    still_works(gp, echo)
    check_log(gp)
    rows = gp.api("GET", "/api/logs?limit=50").json()["items"]
    refused = [r for r in rows if r["result"] == "blocked"]
    if expected == 0x02:
        assert [r["reason"] for r in refused] == ["bad_destination"]
        assert refused[0]["destination_host"].isascii() and refused[0]["destination_host"].isprintable()
    else:
        assert refused == [] and "not a host name" in gp.logs()
    assert not gp.api("GET", "/api/pending").json()["items"]


HTTP_REFUSALS = [
    pytest.param(b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n" + b"Proxy-Authorization: %s\r\n\r\n", id="unclosed-ipv6"),
    pytest.param(b"GET http://[zz]:80/ HTTP/1.1\r\nHost: x\r\n" + b"Proxy-Authorization: %s\r\n\r\n", id="bad-ipv6"),
    pytest.param(b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n", id="unclosed-ipv6-anonymous"),
    pytest.param(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic \xc3\xa9t\xc3\xa9\r\n\r\n",
                 id="non-ascii-proxy-authorization"),
    pytest.param(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic \xe9\r\n\r\n",
                 id="latin1-proxy-authorization"),
    pytest.param(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nProxy-Authorization: Basic /w==\r\n\r\n",
                 id="basic-not-utf8"),
]


@pytest.mark.parametrize("payload", HTTP_REFUSALS)
def test_http_proxy_bad_requests_are_refused_cleanly(gp_factory, echo, payload):
    gp = start(gp_factory, echo)
    if b"%s" in payload:
        payload = payload.replace(b"%s", basic("agent1").encode())
    answer = http_raw(gp.ports["http"], payload)
    # 400 for what is not a request we can read; 407 for credentials we cannot read.
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 407")), answer[:120]
    if b"Proxy-Authorization" in payload and b"[" not in payload:
        assert answer.startswith(b"HTTP/1.1 407")
    still_works(gp, echo)
    check_log(gp)


def test_dns_hostile_names_are_answered_and_logged_on_one_line(gp_factory, echo, auth):
    gp = start(gp_factory, echo, config_yaml=f"dns: {{upstream: ['{auth.address}']}}\n")
    name = dns.name.Name([FORGED.encode(), b"\xff\x1b", b"test", b""])
    for send in (dns.query.udp, dns.query.tcp):
        reply = send(dns.message.make_query(name, "A"), "127.0.0.1", port=gp.ports["dns"], timeout=5)
        assert reply.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.NOERROR)
    assert gp.wait_for(lambda: gp.logs().count("dns client=127.0.0.1") >= 2), gp.logs()
    lines = [line for line in gp.logs().splitlines() if "dns client=" in line]
    assert all(RECORD.match(line) for line in lines), lines
    still_works(gp, echo)
    check_log(gp)
