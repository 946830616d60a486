"""Canonical destinations on a live `greyproxy serve`: no deny rule can be walked around by another spelling of an
address or a name, rules are stored in the canonical spelling, invalid names are refused
cleanly, and the guard judges the IPv4 inside every IPv6 wrapping.

The refused destinations listen for real (on 127.0.0.12), and every test asserts on what they
saw: not one connection, not one byte.

SOCKS5 domain names that are not ASCII host-name characters (UTF-8, control bytes) are refused by
the SOCKS5 listener itself with REP 0x08 before any decision (proxy/socks5.py valid_destination),
so they make no log row; everything ASCII reaches the gate and its canonicaliser."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import sqlite3
import struct
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.netutil import wait_until
from tests.ports import free_port
from tests.workers import workers  # noqa: F401 - decisions with one data-path process and with two

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

DENIED_IP = "127.0.0.12"
ALLOWED_IP = "127.0.0.13"

# Spellings of 127.0.0.12 that inet_aton / getaddrinfo / curl dial as that address.
IPV4_SPELLINGS = [
    "2130706444", "0x7f00000c", "0X7F00000C", "127.12", "127.0.12", "0177.0.0.014", "0x7f.0.0.0xc",
    "127.0.0.014", "127.0.0.12.", "0177.0.0.014.", "::ffff:127.0.0.12", "::FFFF:7F00:C",
    "0:0:0:0:0:ffff:7f00:000c", "[::ffff:7f00:c]",
]
LOOKALIKE = "g\u0456thub.com"  # Cyrillic і
REFUSED = (0x02, 0x08)  # not allowed (by a decision), address type not supported (by the listener)
LOOKALIKE_PUNY = "xn--gthub-n2e.com"


class TcpOrigin:
    """A raw TCP server on one address: records every accepted connection and the bytes it
    received, and answers anything that looks like an HTTP request with a 200."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = free_port(host)
        self.server = socket.create_server((host, self.port))
        self.server.settimeout(0.2)
        self.connections: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        conn.settimeout(2.0)
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if b"\r\n\r\n" in data:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin")
        except OSError:
            pass
        finally:
            with self._lock:
                self.connections.append(data)
            conn.close()

    def seen(self) -> list[bytes]:
        time.sleep(0.3)  # let a connection the proxy might have made arrive
        with self._lock:
            return list(self.connections)

    def close(self) -> None:
        self._stop = True
        self.server.close()
        self.thread.join(timeout=2)


@pytest.fixture
def denied_origin():
    server = TcpOrigin(DENIED_IP)
    yield server
    server.close()


@pytest.fixture
def allowed_origin():
    server = TcpOrigin(ALLOWED_IP)
    yield server
    server.close()


# --------------------------------------------------------------------------- clients


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def socks5(proxy_port: int, host: bytes | str, port: int, atyp: int = 3, user: str = "agent1") -> tuple[int, socket.socket]:
    """SOCKS5 CONNECT carrying `host` exactly as given (domain-name type unless `atyp` says
    otherwise: 1 = IPv4 bytes, 4 = IPv6 bytes); returns (reply code, socket)."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    sock.sendall(b"\x05\x01\x02")
    assert _recv_exact(sock, 2) == b"\x05\x02"
    u = user.encode()
    sock.sendall(bytes((1, len(u))) + u + b"\x01x")
    assert _recv_exact(sock, 2) == b"\x01\x00"
    if atyp == 3:
        raw = host.encode("utf-8") if isinstance(host, str) else host
        addr = bytes((3, len(raw))) + raw
    else:
        assert isinstance(host, bytes)
        addr = bytes((atyp,)) + host
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    head = _recv_exact(sock, 4)
    _recv_exact(sock, (4 if head[3] == 1 else 16) + 2)
    return head[1], sock


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def _auth() -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(b"agent1:x").decode()


def http_connect(proxy_port: int, authority: str) -> tuple[int, dict[str, str], socket.socket]:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{_auth()}\r\n\r\n".encode())
    status, headers, _ = _read_head(sock)
    return status, headers, sock


def http_get(proxy_port: int, url: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=15) as sock:
        host = urlsplit(url).netloc  # the same spelling in the Host header
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{_auth()}\r\nConnection: close\r\n\r\n".encode())
        return _read_head(sock)


# --------------------------------------------------------------------------- API helpers


def add_rule(gp, destination: str, action: str, container: str = "agent1", port: str = "*") -> dict[str, Any]:
    resp = gp.api("POST", "/api/rules", json={"container_pattern": container, "destination_pattern": destination,
                                               "port_pattern": port, "action": action})
    assert resp.status_code == 201, resp.text
    return resp.json()


def logs(gp, **params: Any) -> list[dict[str, Any]]:
    return gp.api("GET", "/api/logs", params={"limit": 1000, **params}).json()["items"]


def wait_logs(gp, count: int, **params: Any) -> list[dict[str, Any]]:
    return wait_until(lambda: (lambda items: items if len(items) >= count else None)(logs(gp, **params)), 5) or logs(
        gp, **params)


def pending(gp) -> list[dict[str, Any]]:
    return gp.api("GET", "/api/pending").json()["items"]


@pytest.fixture
def walled(gp_factory):
    """agent1 may go anywhere except 127.0.0.12."""
    gp = gp_factory()
    add_rule(gp, "*", "allow")
    add_rule(gp, DENIED_IP, "deny")
    return gp


# --------------------------------------------------------------------------- item 6: IP spellings


def test_ip_spellings_through_socks5_are_refused(walled, denied_origin, allowed_origin):
    port = denied_origin.port
    for spelling in IPV4_SPELLINGS:
        rep, sock = socks5(walled.ports["socks5"], spelling, port)
        sock.close()
        assert rep == 0x02, f"{spelling!r} was not refused (REP {rep})"
    rep, sock = socks5(walled.ports["socks5"], "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11\uff12", port)
    sock.close()
    assert rep in REFUSED  # full-width digits (UTF-8): not a host name for the listener
    # The address types that carry bytes: IPv4 and IPv4-mapped IPv6.
    for atyp, raw in ((1, socket.inet_aton(DENIED_IP)), (4, socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.12"))):
        rep, sock = socks5(walled.ports["socks5"], raw, port, atyp=atyp)
        sock.close()
        assert rep == 0x02
    assert denied_origin.seen() == [], "a refused destination got a connection"

    # Not vacuous: the same kind of spelling for an address no rule denies is dialled.
    rep, sock = socks5(walled.ports["socks5"], "2130706445", allowed_origin.port)  # 127.0.0.13
    assert rep == 0x00
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 2130706445:{allowed_origin.port}\r\n\r\n".encode())
    assert _read_head(sock)[0] == 200
    sock.close()
    assert len(allowed_origin.seen()) == 1

    # Logged once, in the one spelling, as the deny rule's refusals.
    rows = wait_logs(walled, len(IPV4_SPELLINGS) + 2, result="blocked")
    assert len(rows) == len(IPV4_SPELLINGS) + 2
    assert {r["destination_host"] for r in rows} == {DENIED_IP}
    assert {r["reason"] for r in rows} == {"denied_by_rule"}


def test_ip_spellings_through_http_connect_are_refused(walled, denied_origin):
    port = denied_origin.port
    for spelling in IPV4_SPELLINGS:
        host = spelling if ":" not in spelling or spelling.startswith("[") else f"[{spelling}]"
        status, headers, sock = http_connect(walled.ports["http"], f"{host}:{port}")
        sock.close()
        assert status == 403, f"CONNECT {host}:{port} was not refused ({status})"
        assert headers["x-greyproxy-reason"] == "denied_by_rule"
    assert denied_origin.seen() == []
    rows = wait_logs(walled, len(IPV4_SPELLINGS), result="blocked")
    assert {r["destination_host"] for r in rows} == {DENIED_IP}


def test_ip_spellings_through_absolute_uri_get_are_refused(walled, denied_origin, allowed_origin):
    port = denied_origin.port
    for spelling in ["2130706444", "0x7f00000c", "127.12", "0177.0.0.014", "[::ffff:127.0.0.12]", "127.0.0.12."]:
        status, headers, body = http_get(walled.ports["http"], f"http://{spelling}:{port}/secret")
        assert status == 403, f"GET via {spelling!r} was not refused ({status})"
        assert headers["x-greyproxy-reason"] == "denied_by_rule"
        assert f"Destination: {DENIED_IP}:{port}" in body.decode()
    assert denied_origin.seen() == []
    status, _, body = http_get(walled.ports["http"], f"http://0x7f.13:{allowed_origin.port}/")  # 127.0.0.13
    assert status == 200 and body == b"origin"


def test_spelling_of_the_control_plane_is_still_the_control_plane(walled):
    rep, sock = socks5(walled.ports["socks5"], "2130706433", walled.ports["api"])  # 127.0.0.1
    sock.close()
    assert rep == 0x02
    row = wait_logs(walled, 1, result="blocked")[0]
    assert (row["destination_host"], row["reason"]) == ("127.0.0.1", "control_plane")


# --------------------------------------------------------------------------- item 7: names


def test_punycode_deny_rule_blocks_every_spelling_of_the_lookalike(walled):
    rule = add_rule(walled, LOOKALIKE_PUNY, "deny")
    assert rule["destination_unicode"] == LOOKALIKE and rule["mixed_script"] is True
    for name in (LOOKALIKE_PUNY.encode(), LOOKALIKE_PUNY.upper().encode() + b"."):
        rep, sock = socks5(walled.ports["socks5"], name, 443)
        sock.close()
        assert rep == 0x02, f"{name!r} was not refused (REP {rep})"
    rep, sock = socks5(walled.ports["socks5"], LOOKALIKE.encode("utf-8"), 443)
    sock.close()
    assert rep in REFUSED, f"the UTF-8 look-alike was not refused (REP {rep})"
    status, headers, sock = http_connect(walled.ports["http"], f"{LOOKALIKE_PUNY}:443")
    sock.close()
    assert status == 403 and headers["x-greyproxy-reason"] == "denied_by_rule"
    rows = wait_logs(walled, 3, result="blocked")
    assert len(rows) == 3
    for row in rows:
        assert row["destination_host"] == LOOKALIKE_PUNY  # never the Unicode look-alike
        assert row["rule_id"] == rule["id"]
        assert row["destination_unicode"] == LOOKALIKE and row["mixed_script"] is True


def test_unicode_rule_is_stored_as_punycode_and_matches(walled):
    rule = add_rule(walled, "B\u00dcCHER.example.", "deny")
    assert rule["destination_pattern"] == "xn--bcher-kva.example"
    assert rule["destination_unicode"] == "b\u00fccher.example" and rule["mixed_script"] is False
    # The same rule in its punycode spelling is the same rule (deduplicated on the stored form).
    again = add_rule(walled, "xn--bcher-kva.example", "deny")
    assert again["id"] == rule["id"]
    status, headers, sock = http_connect(walled.ports["http"], "xn--bcher-kva.example:443")
    sock.close()
    assert status == 403 and headers["x-greyproxy-reason"] == "denied_by_rule"
    rep, sock = socks5(walled.ports["socks5"], b"xn--bcher-kva.example", 443)
    sock.close()
    assert rep == 0x02
    rows = wait_logs(walled, 2, result="blocked")
    assert {(r["destination_host"], r["rule_id"]) for r in rows} == {("xn--bcher-kva.example", rule["id"])}

    # Updates and bulk ingest store the canonical form too.
    resp = walled.api("PUT", f"/api/rules/{rule['id']}", json={"destination_pattern": "*.b\u00fccher.example"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["destination_pattern"] == "*.xn--bcher-kva.example"
    resp = walled.api("POST", "/api/rules/ingest", json=[
        {"container_pattern": "agent2", "destination_pattern": LOOKALIKE, "action": "deny"}])
    assert resp.status_code == 200, resp.text
    stored = walled.api("GET", "/api/rules", params={"container": "agent2"}).json()["items"]
    assert [r["destination_pattern"] for r in stored] == [LOOKALIKE_PUNY]


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("xn--zz.example", "punycode"),
        ("a.test\u0000", "NUL character"),  # refused by the API's field reader, before the pattern check
        ("a.test:451:00", "port belongs in port_pattern"),
        ("[::1%\u0000x]", "NUL character"),
        ("a.test\u0001", "control character"),
        ("1.2.3.4.5", "IPv4"),
        ("a" * 300, "longer than"),
        ("i\u2764.ws", "internationalised"),
    ],
)
def test_api_refuses_invalid_destinations(gp, destination, message):
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": destination})
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]
    resp = gp.api("POST", "/api/rules/ingest", json=[
        {"container_pattern": "agent1", "destination_pattern": "fine.example"},
        {"container_pattern": "agent1", "destination_pattern": destination}])
    assert resp.status_code == 400 and "item 1" in resp.json()["error"]
    assert gp.api("GET", "/api/rules", params={"container": "agent1"}).json()["items"] == []
    assert gp.api("POST", "/api/rules", json={"container_pattern": "a\u0000", "destination_pattern": "x.example"}
                  ).status_code == 400
    assert "Traceback" not in gp.logs()


@pytest.mark.parametrize(
    "host", ["xn--zz.example", "xn--abc-.example", "1.2.3.4.5", "127.0.0.256", "a" * 64 + ".example", "a..b"],
)
def test_invalid_destinations_are_refused_as_bad_destination(walled, host):
    rep, sock = socks5(walled.ports["socks5"], host.encode(), 443)
    sock.close()
    assert rep == 0x02
    status, headers, sock = http_connect(walled.ports["http"], f"{host}:443")
    sock.close()
    assert status == 403 and headers["x-greyproxy-reason"] == "bad_destination"
    rows = wait_logs(walled, 2, result="blocked")
    assert [r["reason"] for r in rows] == ["bad_destination", "bad_destination"]
    for row in rows:  # logged as printable ASCII, never a control character
        assert row["destination_host"].isascii() and row["destination_host"].isprintable()
    # Bytes that are no host name at all never get that far.
    for raw in (b"a.test\x00", b"\xff\xfe.example", b"a b.example"):
        rep, sock = socks5(walled.ports["socks5"], raw, 443)
        sock.close()
        assert rep in REFUSED
    assert pending(walled) == []
    assert "Traceback" not in walled.logs()


def test_pending_lookalike_shows_both_forms_and_becomes_a_punycode_rule(gp_factory):
    gp = gp_factory(hold_seconds=3)
    name = "p\u0430ypal.example"  # Cyrillic а
    puny = "xn--pypal-4ve.example"
    result: dict[str, int] = {}

    def connect() -> None:
        result["rep"], sock = socks5(gp.ports["socks5"], puny.encode(), 443)  # as curl sends it
        sock.close()

    t = threading.Thread(target=connect)
    t.start()
    item = wait_until(lambda: next(iter(pending(gp)), None), 5)
    assert item, "the look-alike never became pending"
    assert item["destination_host"] == puny
    assert item["destination_unicode"] == name and item["mixed_script"] is True
    resp = gp.api("POST", f"/api/pending/{item['id']}/deny", json={"scope": "subdomain_wildcard"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["rule"]["destination_pattern"] == f"**.{puny}"
    t.join(10)
    assert result["rep"] == 0x02


# --------------------------------------------------------------------------- item 11: pending rows


def _insert_pending(gp, host: str, port: int = 443) -> int:
    """A pending row as an older version could have stored it (the proxy no longer makes them)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(gp.data_dir / "greyproxy.db", timeout=10) as db:
        cur = db.execute(
            "INSERT INTO pending_requests (container_name, container_id, destination_host, destination_port, "
            "resolved_hostname, first_seen, last_seen, attempt_count) VALUES (?, '', ?, ?, NULL, ?, ?, 1)",
            ("agent1", host, port, now, now))
        return int(cur.lastrowid)


@pytest.mark.parametrize("host", ["a.test\x00", "a.test:451:00", "[::1%\x00x]", "xn--zz.example"])
def test_pending_rows_with_invalid_destinations_make_no_rule(gp, host):
    pid = _insert_pending(gp, host)
    for scope in ("exact", "any_port", "subdomain_wildcard", "all_containers"):
        resp = gp.api("POST", f"/api/pending/{pid}/allow", json={"scope": scope})
        assert resp.status_code == 400, (scope, resp.text)
        assert "destination_pattern" in resp.json()["error"]
    resp = gp.api("POST", "/api/pending/bulk-allow", json={"pending_ids": [pid]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["rules_created"] == [] and [r["pending_id"] for r in resp.json()["refused"]] == [pid]
    rules = gp.api("GET", "/api/rules", params={"container": "agent1"}).json()["items"]
    assert rules == [], "a rule was stored from an invalid pending row"
    assert [p["id"] for p in pending(gp)] == [pid], "the row must stay pending (still dismissable)"
    assert gp.api("DELETE", f"/api/pending/{pid}").status_code == 200
    assert "Traceback" not in gp.logs()


# --------------------------------------------------------------------------- item 8: the guard


@pytest.fixture
def guarded(gp_factory):
    gp = gp_factory(config_yaml="guard: {private_ranges: deny}\n")
    add_rule(gp, "*", "allow")
    return gp


@pytest.mark.parametrize("address", ["64:ff9b:1::7f00:c", "::127.0.0.12", "64:ff9b::7f00:c", "2002:7f00:c::1"])
def test_guard_refuses_ipv6_wrappings_of_private_addresses(guarded, denied_origin, address):
    port = denied_origin.port
    status, headers, sock = http_connect(guarded.ports["http"], f"[{address}]:{port}")
    sock.close()
    assert status == 403, status
    assert headers["x-greyproxy-reason"] == "private_range"
    rep, sock = socks5(guarded.ports["socks5"], socket.inet_pton(socket.AF_INET6, address), port, atyp=4)
    sock.close()
    assert rep == 0x02
    assert denied_origin.seen() == []
    rows = wait_logs(guarded, 2, result="blocked")
    assert {r["reason"] for r in rows} == {"private_range"}


def test_guard_lets_a_rule_name_the_ipv4_but_not_its_wrappings(guarded, denied_origin):
    add_rule(guarded, DENIED_IP, "allow")  # names 127.0.0.12 explicitly
    port = denied_origin.port
    for spelling in (DENIED_IP, "2130706444"):
        status, _, sock = http_connect(guarded.ports["http"], f"{spelling}:{port}")
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {spelling}:{port}\r\n\r\n".encode())
        assert status == 200 and _read_head(sock)[0] == 200
        sock.close()
    assert len(denied_origin.seen()) == 2
    status, headers, sock = http_connect(guarded.ports["http"], f"[64:ff9b:1::7f00:c]:{port}")
    sock.close()
    assert status == 403 and headers["x-greyproxy-reason"] == "private_range"
    assert len(denied_origin.seen()) == 2
