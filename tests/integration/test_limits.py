"""Issue 13, limits: a head/handshake deadline on every listener, connection caps per address,
held connections per container, the request rate per container, each counted in /metrics.

Every loop here is bounded in count and in time; the slow clients are driven from one thread.
"""

from __future__ import annotations

import base64
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.conftest import Origin
from tests.integration.dnsutil import AuthServer, addresses, query_tcp
from tests.integration.netutil import recv_exact, socks_connect, wait_until

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

AUTH = "Proxy-Authorization: Basic " + base64.b64encode(b"agent1:x").decode()
SLOW_YAML = "limits: {head_seconds: 2, idle_seconds: 5}\n"
DRIBBLE_INTERVAL = 0.5
SLOW_CLIENTS = 24


@pytest.fixture
def local_origin() -> Iterator[Origin]:
    """127.0.0.1 (allowed by the built-in rules): the legit client's destination."""
    server = Origin(host="127.0.0.1", body=b"still here\n")
    yield server
    server.close()


def proxy_get(port: int, url: str, timeout: float = 5.0) -> requests.Response:
    proxies = {"http": f"http://agent1:x@127.0.0.1:{port}"}
    return requests.get(url, proxies=proxies, timeout=timeout)


def limit_hits(gp) -> dict[str, float]:
    text = gp.api("GET", "/metrics").text
    hits = {}
    for line in text.splitlines():
        if line.startswith("greyproxy_limit_hits_total{"):
            label = line.split('limit="', 1)[1].split('"', 1)[0]
            hits[label] = float(line.rsplit(" ", 1)[1])
    return hits


def dribble(port: int, payload: bytes, legit: Callable[[], bool], seconds: float, count: int = SLOW_CLIENTS,
            source: str = "127.0.0.1") -> tuple[dict[int, float], dict[int, bytes], list[bool]]:
    """`count` clients send `payload` one byte every DRIBBLE_INTERVAL for at most `seconds`;
    `legit()` runs once per round. Returns when each slow client was closed (seconds from the
    start), what it received, and the legit results."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
             for _ in range(count)]
    started = time.monotonic()
    closed: dict[int, float] = {}
    received: dict[int, bytes] = {i: b"" for i in range(count)}
    results: list[bool] = []
    try:
        for step in range(int(seconds / DRIBBLE_INTERVAL) + 1):
            for i, sock in enumerate(socks):
                if i in closed:
                    continue
                readable, _, _ = select.select([sock], [], [], 0)
                try:
                    if readable:
                        data = sock.recv(4096)
                        received[i] += data
                        if not data:
                            closed[i] = time.monotonic() - started
                            continue
                    if step < len(payload):
                        sock.sendall(payload[step:step + 1])
                except OSError:
                    closed[i] = time.monotonic() - started
            if len(closed) == count and len(results) >= 3:
                break
            results.append(legit())
            time.sleep(max(0.0, started + (step + 1) * DRIBBLE_INTERVAL - time.monotonic()))
    finally:
        for sock in socks:
            sock.close()
    return closed, received, results


# The exact count of one process: with N workers each enforces 1/N of a cap (docs/workers.md#limits),
# which tests/integration/test_workers.py asserts.
ONE_PROCESS = ["--workers", "1"]


def test_slowloris_http_heads_are_cut_by_the_head_deadline(gp_factory, local_origin):
    gp = gp_factory(config_yaml=SLOW_YAML)
    url = f"http://127.0.0.1:{local_origin.port}/"
    payload = f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}\r\nX-Slow: ".encode() + b"a" * 200

    def legit() -> bool:
        return proxy_get(gp.ports["http"], url).content == b"still here\n"

    closed, received, results = dribble(gp.ports["http"], payload, legit, seconds=8)
    assert len(closed) == SLOW_CLIENTS, f"only {len(closed)} of {SLOW_CLIENTS} slow heads were closed"
    assert max(closed.values()) < 5.0, closed  # deadline 2 s from the first byte, not per read
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in received.values()), received
    assert all(results) and len(results) >= 3, results
    assert limit_hits(gp)["head_deadline"] >= SLOW_CLIENTS


def test_slowloris_socks5_handshakes_are_cut(gp_factory, local_origin):
    gp = gp_factory(config_yaml=SLOW_YAML)
    payload = b"\x05\xff" + bytes(range(255))  # a greeting with 255 methods, one byte at a time

    def legit() -> bool:
        rep, sock = socks_connect(gp.ports["socks5"], "127.0.0.1", local_origin.port, timeout=5)
        with sock:
            if rep != 0:
                return False
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.endswith(b"still here\n")

    closed, received, results = dribble(gp.ports["socks5"], payload, legit, seconds=8)
    assert len(closed) == SLOW_CLIENTS
    assert max(closed.values()) < 5.0, closed
    assert all(results) and len(results) >= 3, results
    assert limit_hits(gp)["head_deadline"] >= SLOW_CLIENTS


def test_slowloris_dns_tcp_queries_are_cut(gp_factory):
    auth = AuthServer()
    try:
        gp = gp_factory(config_yaml=f"dns:\n  upstream: ['{auth.address}']\n" + SLOW_YAML)
        payload = struct.pack("!H", 64) + b"\x00" * 64  # a length prefix, then the query dribbled

        def legit() -> bool:  # from another source address (the DNS listener caps 16 per address)
            return addresses(query_tcp(gp.ports["dns"], "svc.test", source="127.0.0.10")) == ["127.0.0.5"]

        closed, _, results = dribble(gp.ports["dns"], payload, legit, seconds=8, count=12)
        assert len(closed) == 12
        assert max(closed.values()) < 5.0, closed
        assert all(results) and len(results) >= 3, results
        assert limit_hits(gp)["head_deadline"] >= 12
    finally:
        auth.close()


def test_api_head_deadline(gp_factory):
    gp = gp_factory(config_yaml=SLOW_YAML)
    payload = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

    def legit() -> bool:
        return gp.api("GET", "/api/health", timeout=5).status_code == 200

    closed, received, results = dribble(gp.ports["api"], payload, legit, seconds=8, count=12)
    assert len(closed) == 12
    assert max(closed.values()) < 5.0, closed
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in received.values()), received
    assert all(results), results
    assert limit_hits(gp)["head_deadline"] >= 12


def test_connection_cap_per_address(gp_factory, local_origin):
    gp = gp_factory(config_yaml="limits: {connections_per_address: 3}\n", extra_args=ONE_PROCESS)
    port = gp.ports["http"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted and counted
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"X-Greyproxy-Reason: connection_limit" in answer
        # Another address is not affected by this one's cap.
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.20", 0)) as other:
            other.sendall(f"GET http://127.0.0.1:{local_origin.port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}\r\n"
                          "Connection: close\r\n\r\n".encode())
            assert other.recv(4096).startswith(b"HTTP/1.1 200 ")
        # SOCKS5 has its own count: over its cap the greeting is answered "no acceptable method".
        socks = [socket.create_connection(("127.0.0.1", gp.ports["socks5"]), timeout=5) for _ in range(3)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", gp.ports["socks5"]), timeout=5) as extra:
                extra.sendall(b"\x05\x01\x00")
                assert extra.recv(2) == b"\x05\xff"
        finally:
            for sock in socks:
                sock.close()
        # The API listener too (from another address than the test's own API session).
        api = [socket.create_connection(("127.0.0.1", gp.ports["api"]), timeout=5, source_address=("127.0.0.30", 0))
               for _ in range(3)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", gp.ports["api"]), timeout=5,
                                          source_address=("127.0.0.30", 0)) as extra:
                assert extra.recv(4096).startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in api:
                sock.close()
        held.pop().close()  # one closed: a new connection works again

        def works() -> bool:
            try:
                return proxy_get(port, f"http://127.0.0.1:{local_origin.port}/").status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(works, 5)
    finally:
        for sock in held:
            sock.close()
    hits = limit_hits(gp)
    assert hits["connections_per_address"] >= 3


def test_held_cap_per_container(gp_factory, origin):
    gp = gp_factory(config_yaml="limits: {held_per_container: 2}\n", hold_seconds=30, extra_args=ONE_PROCESS)
    port = gp.ports["http"]
    request = (f"GET http://{origin.host}:{origin.port}/ HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\n"
               f"{AUTH}\r\n\r\n").encode()
    waiting = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            waiting.append(sock)
        assert wait_until(lambda: gp.api("GET", "/metrics").text.count("greyproxy_held_connections 2.0"), 5)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            third.sendall(request)
            answer = third.recv(4096)
        assert time.monotonic() - started < 3.0
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        assert b"X-Greyproxy-Reason: hold_limit" in answer
        # Another container still gets held (its own count).
        other = socket.create_connection(("127.0.0.1", port), timeout=10)
        waiting.append(other)
        other.sendall(request.replace(base64.b64encode(b"agent1:x"), base64.b64encode(b"agent2:x")))
        assert wait_until(lambda: gp.api("GET", "/metrics").text.count("greyproxy_held_connections 3.0"), 5)
        # SOCKS5 shares the container's count: refused at once with 0x02.
        started = time.monotonic()
        rep, sock = socks_connect(gp.ports["socks5"], origin.host, origin.port, timeout=10)
        sock.close()
        assert rep == 0x02 and time.monotonic() - started < 3.0
    finally:
        for sock in waiting:
            sock.close()
    assert limit_hits(gp)["held_per_container"] >= 2


def test_request_rate_per_container_answers_429(gp_factory, local_origin):
    gp = gp_factory(config_yaml="limits: {requests_per_second: 1, requests_burst: 3}\n", extra_args=ONE_PROCESS)
    url = f"http://127.0.0.1:{local_origin.port}/"
    codes = [proxy_get(gp.ports["http"], url) for _ in range(6)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]
    refused = [r for r in codes[3:] if r.status_code == 429]
    assert refused, [r.status_code for r in codes]
    assert refused[0].headers["X-Greyproxy-Reason"] == "rate_limited"
    assert int(refused[0].headers["Retry-After"]) >= 1
    # Another container has its own bucket.
    other = requests.get(url, proxies={"http": f"http://agent2:x@127.0.0.1:{gp.ports['http']}"}, timeout=5)
    assert other.status_code == 200
    time.sleep(1.1)  # a token is back
    assert proxy_get(gp.ports["http"], url).status_code == 200
    assert limit_hits(gp)["rate_limited"] >= 1


def test_header_limits_configurable(gp_factory, local_origin):
    gp = gp_factory(config_yaml="limits: {max_headers: 10, max_head_bytes: 2048}\n")
    base = f"GET http://127.0.0.1:{local_origin.port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}\r\n"
    for extra in ("".join(f"X-{i}: v\r\n" for i in range(12)), "X-Big: " + "a" * 3000 + "\r\n"):
        with socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=5) as sock:
            sock.sendall((base + extra + "\r\n").encode())
            assert recv_exact(sock, 12) == b"HTTP/1.1 431"
    assert proxy_get(gp.ports["http"], f"http://127.0.0.1:{local_origin.port}/").status_code == 200
    assert limit_hits(gp)["header_size"] >= 2


def test_bad_limits_stop_the_start(gp_factory):
    with pytest.raises(RuntimeError, match="limits.head_seconds"):
        gp_factory(config_yaml="limits: {head_seconds: 0}\n")


def _tunnel(gp, origin: Origin, tls: bool) -> socket.socket:
    """A CONNECT tunnel to the origin through greyproxy, with TLS to greyproxy's interception
    inside it when `tls` (the certificate is not checked: the head deadline is under test)."""
    sock = socket.create_connection(("127.0.0.1", gp.ports["http"]), timeout=10)
    sock.sendall(f"CONNECT {origin.host}:{origin.port} HTTP/1.1\r\nHost: {origin.host}:{origin.port}\r\n"
                 f"{AUTH}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    if tls:
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return sock


@pytest.mark.parametrize("tls", [False, True], ids=["http-in-tunnel", "https-intercepted"])
def test_slow_heads_inside_tunnels_are_cut_by_the_head_deadline(gp_factory, local_origin, tls_origin, tls):
    """The head deadline holds for the requests inside a tunnel too (plain HTTP in a CONNECT
    tunnel, HTTP inside intercepted TLS), not only for the listener's own CONNECT head: one
    byte every half second does not keep a request open, and the origin never sees it."""
    config = SLOW_YAML + f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}', generate_ca: false}}\n"
    gp = gp_factory(config_yaml=config)
    assert gp.api("POST", "/api/cert/generate").status_code == 200
    origin = tls_origin if tls else local_origin
    before = limit_hits(gp).get("head_deadline", 0)
    sock = _tunnel(gp, origin, tls)
    sock.sendall(b"GET / HTTP/1.1\r\n")  # a whole first line: the tunnel is read as HTTP at once
    started = time.monotonic()
    received = b""
    try:
        for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
            sock.sendall(bytes([byte]))
            time.sleep(DRIBBLE_INTERVAL)
            if time.monotonic() - started > 8:
                break
    except OSError:
        pass
    sock.settimeout(5)
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except OSError:
        pass
    elapsed = time.monotonic() - started
    sock.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < 6.0, elapsed  # 2 s from the head's first byte, not per read
    assert limit_hits(gp)["head_deadline"] >= before + 1
    assert (tls_origin.seen if tls else local_origin.requests) == []
