"""The TLS server name is checked on tunnels that are not intercepted (docs/decisions.md#what-a-connection-may-carry): MITM off, the
host in `mitm.bypass`, or no CA. A ClientHello naming another host than the one the tunnel was
allowed for is refused before a byte of it goes upstream; the client gets a TLS alert. A
CONNECT head and a ClientHello in one write ("early" TLS) get the same check, and are
intercepted when interception applies."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.integration.dnsutil import AuthServer
from tests.integration.netutil import http_connect, socks_connect, wait_until
from tests.ports import free_port

# This module's servers start without a CA (mitm.generate_ca: false): its tests make the CA
# through the API or CLI, or assert what a proxy that cannot intercept answers.
pytestmark = pytest.mark.no_ca

RELAY_HOST = "127.0.0.3"  # where a.test points; a recording relay in front of the TLS origin
AUTH = base64.b64encode(b"agent1:x").decode()


class RecordingRelay:
    """A TCP relay to the TLS origin that records every byte the proxy sent it."""

    def __init__(self, target: tuple[str, int], host: str = RELAY_HOST) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, free_port(host)))
        self.sock.listen(64)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            conn.close()
            return

        def down() -> None:
            try:
                while data := upstream.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass
            finally:
                close(conn)

        threading.Thread(target=down, daemon=True).start()
        try:
            while data := conn.recv(65536):
                with self._lock:
                    self.received += data
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            close(upstream)

    def close(self) -> None:
        self.sock.close()


def close(sock: socket.socket) -> None:
    """shutdown first: a plain close() does not wake a recv() blocked in another thread."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    server = AuthServer(zone={("a.test", "A"): (60, [RELAY_HOST]), ("b.test", "A"): (60, [RELAY_HOST])})
    yield server
    server.close()


@pytest.fixture
def relay(tls_origin) -> Iterator[RecordingRelay]:
    server = RecordingRelay((tls_origin.host, tls_origin.port))
    yield server
    server.close()


MODES = {
    "mitm_disabled": "mitm: {enabled: false}\n",
    "mitm_bypass": "mitm: {bypass: [a.test]}\n",
    "no_cert": "",
}


@pytest.fixture(params=list(MODES))
def blind(request, gp_factory, auth):
    """A greyproxy that resolves a.test to the relay, allows a.test for agent1, and does not
    intercept it (for the reason in `gp.mode`)."""
    mode = request.param
    gp = gp_factory(config_yaml=f"dns:\n  upstream: ['{auth.address}']\n" + MODES[mode])
    if mode == "mitm_bypass":
        assert gp.api("POST", "/api/cert/generate").status_code == 200
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "a.test"})
    assert resp.status_code == 201, resp.text
    gp.mode = mode
    return gp


def client_context(cafile: str) -> ssl.SSLContext:
    """Verifies the chain (so who answered is known) but not the name: the origin's leaf is for
    localhost, and the names here are a.test / b.test."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    return ctx


def get_over(tls: ssl.SSLSocket | ssl.SSLObject, host: str) -> bytes:
    tls.sendall(f"GET /sni HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    try:
        while chunk := tls.recv(65536):
            data += chunk
    except (ssl.SSLError, OSError):
        pass
    return data


def open_tunnel(gp, via: str, host: str, port: int) -> socket.socket:
    if via == "http":
        status, _, sock = http_connect(gp.ports["http"], host, port)
        assert status == 200
    else:
        code, sock = socks_connect(gp.ports["socks5"], host, port)
        assert code == 0
    return sock


def blocked_rows(gp, reason: str) -> list[dict]:
    rows = gp.api("GET", "/api/logs", params={"container": "agent1", "result": "blocked"}).json()["items"]
    return [r for r in rows if r["reason"] == reason]


def mitm_metric(gp, result: str) -> int:
    return gp.api("GET", "/api/metrics").json()["mitm_handshakes"].get(result, 0)


def skip_reason(gp) -> str | None:
    def latest():
        rows = gp.api("GET", "/api/logs", params={"container": "agent1", "result": "allowed"}).json()["items"]
        return rows[0]["mitm_skip_reason"] if rows and rows[0].get("mitm_skip_reason") else None

    return wait_until(latest, 5)


# ------------------------------------------------------------------ not intercepted


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_sni_naming_another_host_is_refused_before_anything_goes_upstream(blind, relay, tls_origin, via):
    sock = open_tunnel(blind, via, "a.test", relay.port)
    with pytest.raises(ssl.SSLError) as refused:
        client_context(str(tls_origin.ca_path)).wrap_socket(sock, server_hostname="b.test")
    assert "ACCESS_DENIED" in str(refused.value)  # a TLS alert, not a bare close
    sock.close()

    rows = wait_until(lambda: blocked_rows(blind, "sni_mismatch"), 5)
    assert rows and rows[0]["destination_host"] == "a.test"
    assert mitm_metric(blind, "sni_mismatch") == 1
    # the proxy had dialled (admission comes first), but not one byte of the hello went out
    assert relay.received == b""
    assert tls_origin.seen == []


@pytest.mark.parametrize("via", ["http", "socks5"])
def test_sni_naming_the_admitted_host_goes_through_untouched(blind, relay, tls_origin, via):
    sock = open_tunnel(blind, via, "a.test", relay.port)
    tls = client_context(str(tls_origin.ca_path)).wrap_socket(sock, server_hostname="a.test")
    assert get_over(tls, "a.test").endswith(b"hello over tls\n")  # the origin's own certificate
    assert tls_origin.seen[-1]["path"] == "/sni"
    assert relay.received.startswith(b"\x16\x03")
    assert skip_reason(blind) == blind.mode
    assert blocked_rows(blind, "sni_mismatch") == []


def test_hello_without_server_name_is_accepted(blind, relay, tls_origin):
    sock = open_tunnel(blind, "http", "a.test", relay.port)
    ctx = client_context(str(tls_origin.ca_path))
    tls = ctx.wrap_socket(sock)  # no server_hostname: no SNI extension
    assert get_over(tls, "a.test").endswith(b"hello over tls\n")


def test_malformed_hello_is_refused(blind, relay):
    sock = open_tunnel(blind, "http", "a.test", relay.port)
    sock.sendall(b"\x16\x03\x01\x00\x08notahelo")
    sock.settimeout(10)
    answer = sock.recv(100)
    assert answer[:1] == b"\x15" and answer[5] == 2  # a fatal alert
    sock.close()
    assert wait_until(lambda: blocked_rows(blind, "bad_tls_hello"), 5)
    assert relay.received == b""


def test_hello_in_many_small_writes(gp_factory, auth, relay, tls_origin):
    """A hello split over TCP segments and over TLS records is still read whole, and the
    stream reaches the origin byte for byte."""
    gp = gp_factory(config_yaml=f"dns:\n  upstream: ['{auth.address}']\nmitm: {{enabled: false}}\n")
    gp.api("POST", "/api/rules", json={"container_pattern": "agent1", "destination_pattern": "a.test"})
    for sni, ok in (("b.test", False), ("a.test", True)):
        sock = open_tunnel(gp, "http", "a.test", relay.port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(str(tls_origin.ca_path)).wrap_bio(incoming, outgoing, server_hostname=sni)
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        # the handshake message in records of 100 bytes, each record written in 3 pieces
        records = b"".join(hello[:3] + len(c).to_bytes(2, "big") + c
                           for c in (hello[5 + i:5 + i + 100] for i in range(0, len(hello) - 5, 100)))
        for i in range(0, len(records), 37):
            sock.sendall(records[i:i + 37])
            threading.Event().wait(0.01)
        sock.settimeout(10)
        reply = sock.recv(65536)
        if not ok:
            assert reply == b"\x15\x03\x03\x00\x02\x02\x31"  # access_denied
            assert relay.received == b""
        else:
            assert reply[:1] == b"\x16"  # the origin's ServerHello
            assert relay.received.startswith(records)
        sock.close()


def test_curl_sees_the_alert(blind, relay, tls_origin):
    """What a client shows: curl reports the alert (documented in docs/)."""
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "--max-time", "20", "-k", "--connect-to", f"b.test:{relay.port}:a.test:{relay.port}",
         "-x", f"http://agent1:x@127.0.0.1:{blind.ports['http']}", f"https://b.test:{relay.port}/"],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 35, out.stderr
    assert "access denied" in out.stderr.lower(), out.stderr
    assert relay.received == b""


# ------------------------------------------------------------------ early TLS


def handshake_after_connect(gp_port: int, host: str, port: int, sni: str, cafile: str) -> tuple[bytes, object]:
    """CONNECT head and ClientHello in ONE write, then the TLS handshake over memory BIOs.
    Returns (the proxy's answer head, a small TLS channel) or raises ssl.SSLError."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(cafile).wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {AUTH}\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", gp_port), timeout=15)
    sock.sendall(head.encode() + outgoing.read())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    answer, rest = data.split(b"\r\n\r\n", 1)
    incoming.write(rest)
    channel = BioChannel(sock, tls, incoming, outgoing)
    try:
        channel.handshake()
    except BaseException:
        sock.close()
        raise
    return answer, channel


class BioChannel:
    """Just enough of a socket over an SSLObject for get_over()."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        self.sock, self.tls, self.incoming, self.outgoing = sock, tls, incoming, outgoing

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.incoming.write_eof()
        else:
            self.incoming.write(chunk)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self, n: int) -> bytes:
        while True:
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                self._fill()

    def peer_issuer(self) -> str:
        cert = self.tls.getpeercert()
        return dict(x[0] for x in cert["issuer"]).get("commonName", "")


def test_early_hello_without_interception_is_checked(blind, relay, tls_origin):
    with pytest.raises(ssl.SSLError) as refused:
        handshake_after_connect(blind.ports["http"], "a.test", relay.port, "b.test", str(tls_origin.ca_path))
    assert "ACCESS_DENIED" in str(refused.value)
    assert wait_until(lambda: blocked_rows(blind, "sni_mismatch"), 5)
    assert relay.received == b""

    answer, channel = handshake_after_connect(blind.ports["http"], "a.test", relay.port, "a.test",
                                              str(tls_origin.ca_path))
    assert answer.startswith(b"HTTP/1.1 200")
    assert channel.peer_issuer() == "test origin CA"
    assert get_over(channel, "a.test").endswith(b"hello over tls\n")
    channel.sock.close()
    assert skip_reason(blind) == blind.mode  # not "early_data": the hello was inspected


def test_early_hello_is_intercepted_and_sni_checked(intercepting_gp, tls_origin):
    gp = intercepting_gp()
    answer, channel = handshake_after_connect(gp.ports["http"], "localhost", tls_origin.port, "localhost",
                                              str(gp.ca_path))
    assert answer.startswith(b"HTTP/1.1 200")
    assert channel.peer_issuer() != "test origin CA"  # greyproxy's leaf: verified against its CA
    assert get_over(channel, "localhost").endswith(b"hello over tls\n")
    items = wait_until(lambda: gp.api("GET", "/api/transactions", params={"container": "agent1"}).json()["items"], 5)
    assert items and items[0]["url"] == f"https://localhost:{tls_origin.port}/sni"

    seen_before = len(tls_origin.seen)
    _, channel = handshake_after_connect(gp.ports["http"], "localhost", tls_origin.port, "evil.example",
                                         str(gp.ca_path))
    refused = get_over(channel, "evil.example").decode()
    assert refused.startswith("HTTP/1.1 403") and "X-Greyproxy-Reason: sni_mismatch" in refused
    assert len(tls_origin.seen) == seen_before
    assert wait_until(lambda: blocked_rows(gp, "sni_mismatch"), 5)
