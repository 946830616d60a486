"""HTTPS requests/s over kept-alive connections through an intercepting proxy (or direct).

proxyload's `mitm` scenario opens a new tunnel and TLS session per request; this measures
the other case an agent produces: one tunnel, many requests. It starts its own keep-alive
TLS origin (a throw-away CA, a leaf for localhost) in a child process, then W workers in P
processes each open one CONNECT tunnel, do the TLS handshake trusting --cafile, and send
GET requests back to back for --duration seconds. Prints one JSON line.

    python3 bench/https_keepalive.py --proxy http://bench:x@127.0.0.1:43051 --cafile CA.pem
    python3 bench/https_keepalive.py --direct
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import socket
import ssl
import statistics
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.tlsutil import make_origin_pki  # noqa: E402 - the tests' throw-away PKI

BODY = b"x" * 128


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


def serve_origin(leaf: str, port_queue: mp.Queue) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def open_tunnel(proxy: str | None, port: int, cafile: str) -> ssl.SSLSocket:
    if proxy is None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    else:
        url = urlsplit(proxy)
        raw = socket.create_connection((url.hostname, url.port), timeout=10)
        auth = ""
        if url.username:
            token = base64.b64encode(f"{url.username}:{url.password or ''}".encode()).decode()
            auth = f"Proxy-Authorization: Basic {token}\r\n"
        raw.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            if not chunk:
                raise ConnectionError("proxy closed during CONNECT")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            raise ConnectionError(head.split(b"\r\n")[0].decode())
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def worker(proxy: str | None, port: int, cafile: str, start_at: float, warmup: float, duration: float,
           out: mp.Queue, extra_headers: tuple[str, ...] = ()) -> None:
    latencies: list[float] = []
    errors = 0
    extra = "".join(f"{h}\r\n" for h in extra_headers)
    request = f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\n{extra}\r\n".encode()
    while time.time() < start_at:
        time.sleep(0.001)
    measure_from, stop_at = start_at + warmup, start_at + warmup + duration
    tls = None
    while time.time() < stop_at:
        try:
            if tls is None:
                tls = open_tunnel(proxy, port, cafile)
                buf = b""
            t0 = time.perf_counter()
            tls.sendall(request)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0 and len(buf) >= end + 4 + len(BODY):
                    buf = buf[end + 4 + len(BODY):]
                    break
                chunk = tls.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            if time.time() >= measure_from:
                latencies.append(time.perf_counter() - t0)
        except (OSError, ConnectionError):
            errors += 1
            tls = None
            time.sleep(0.01)
    out.put((latencies, errors))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", help="http://user:pass@host:port (CONNECT)")
    ap.add_argument("--direct", action="store_true")
    ap.add_argument("--cafile", help="the CA the client trusts (the proxy's, when it intercepts)")
    ap.add_argument("--origin-ca-out", help="write the origin CA here (for the proxy to trust)")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--certdir", help="reuse/keep the origin PKI here")
    ap.add_argument("--header", action="append", default=[],
                    help="an extra request header line, e.g. 'Authorization: Bearer <placeholder>' (repeatable)")
    args = ap.parse_args()
    certdir = Path(args.certdir or tempfile.mkdtemp(prefix="https-ka-"))
    certdir.mkdir(parents=True, exist_ok=True)
    ca, leaf = certdir / "origin-ca.pem", certdir / "origin-leaf.pem"
    if not (ca.exists() and leaf.exists()):
        ca, leaf = make_origin_pki(certdir)
    if args.origin_ca_out:
        Path(args.origin_ca_out).write_bytes(ca.read_bytes())
    ports: mp.Queue = mp.Queue()
    origin = mp.Process(target=serve_origin, args=(str(leaf), ports), daemon=True)
    origin.start()
    port = ports.get(timeout=10)
    cafile = str(ca) if args.direct else args.cafile
    proxy = None if args.direct else args.proxy
    out: mp.Queue = mp.Queue()
    start_at = time.time() + 0.5
    per_proc = [args.workers // args.procs + (1 if i < args.workers % args.procs else 0) for i in range(args.procs)]
    procs = []
    for n in per_proc:
        for _ in range(n):
            p = mp.Process(target=worker, args=(proxy, port, cafile, start_at, args.warmup, args.duration, out,
                                                tuple(args.header)))
            p.start()
            procs.append(p)
    results = [out.get(timeout=args.warmup + args.duration + 60) for _ in procs]
    for p in procs:
        p.join(timeout=5)
    origin.terminate()
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None

    print(json.dumps({
        "scenario": "https_keepalive", "proxy": "direct" if args.direct else urlsplit(args.proxy).netloc.split("@")[-1],
        "workers": args.workers, "duration_s": args.duration, "ok": len(lat), "headers": len(args.header),
        "rate_per_s": round(len(lat) / args.duration, 1), "errors": errors,
        "lat_ms": {"p50": pct(0.5), "p99": pct(0.99), "mean": round(statistics.fmean(lat) * 1000, 3) if lat else None},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
