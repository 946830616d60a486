"""The floor under greyproxy's CPU per connection: the least a gevent process can do for an
HTTP CONNECT (read the head, dial, answer 200, pipe both ways, close), with no policy, no
identity, no log row and no look inside the tunnel. Not a proxy anyone should run: bench/peers.py
measures it beside greyproxy and tinyproxy, so the table shows how much of greyproxy's cost is the
Python runtime and how much is greyproxy's own work (docs/benchmarks.md).

    python bench/floor_relay.py PORT
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402 - after the monkey patch, as gevent asks
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def handle(client: socket.socket, _address: tuple) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = client.recv(4096)
        if not data or len(head) > 8192:
            return
        head += data
    method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
    host, _, port = target.rpartition(b":")
    if method != b"CONNECT":
        client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        return
    upstream = socket.socket(socket.AF_INET6 if b":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:  # an IP literal, dialled as is: greyproxy resolves names itself, the bench sends none
        upstream.settimeout(10)
        upstream.connect((host.strip(b"[]").decode(), int(port)))
    except OSError:
        upstream.close()
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        return
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream.settimeout(None)
    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    down = gevent.spawn(pipe, upstream, client)
    pipe(client, upstream)
    down.join()
    upstream.close()


def main() -> None:
    StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=1024).serve_forever()


if __name__ == "__main__":
    main()
