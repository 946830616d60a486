"""Small real-socket clients and servers for the proxy tests."""

from __future__ import annotations

import base64
import ipaddress
import socket
import struct
import subprocess
import threading
import time

from tests.ports import free_port


def socks_connect(proxy_port: int, host: str, port: int, user: str | None = "agent1", password: str = "x",
                  timeout: float = 15.0, source: str | None = None) -> tuple[int, socket.socket]:
    """RFC 1928/1929 CONNECT through the proxy (from `source`, a local IP, if given);
    returns (reply code, socket)."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if user is None:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
    else:
        sock.sendall(b"\x05\x01\x02")
        assert sock.recv(2) == b"\x05\x02"
        u, p = user.encode(), password.encode()
        sock.sendall(bytes((1, len(u))) + u + bytes((len(p),)) + p)
        assert sock.recv(2) == b"\x01\x00"
    try:
        ip = ipaddress.ip_address(host)
        addr = bytes((1 if ip.version == 4 else 4,)) + ip.packed
    except ValueError:
        addr = bytes((3, len(host))) + host.encode()
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    head = recv_exact(sock, 4)
    tail = recv_exact(sock, (4 if head[3] == 1 else 16) + 2)
    assert tail is not None
    return head[1], sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def http_connect(proxy_port: int, host: str, port: int, user: str = "agent1",
                 timeout: float = 15.0) -> tuple[int, dict[str, str], socket.socket]:
    """CONNECT through the HTTP proxy; returns (status, headers, socket)."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    auth = base64.b64encode(f"{user}:x".encode()).decode()
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, sock


def told_in_tunnel(sock: socket.socket, host: str = "example.test") -> tuple[int, str | None, bytes]:
    """A tunnel greyproxy accepted only to say why it refuses (plain HTTP inside it): send one
    request, return (status, X-Greyproxy-Reason, body)."""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers.get("x-greyproxy-reason"), body


def curl(*args: str, timeout: float = 30.0) -> subprocess.Popen:
    """Start curl in the background (no environment proxies), output captured."""
    return subprocess.Popen(
        ["curl", "-sS", "--noproxy", "", "--max-time", str(int(timeout)), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
    )


class EchoServer:
    """Raw TCP echo on loopback; half-close aware (echoes until EOF, then closes its side)."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, free_port(host)))
        self.sock.listen(64)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
