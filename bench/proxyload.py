#!/usr/bin/env python3
"""proxyload: greyproxy's own load generator for forward proxies, over loopback only.

It starts its origins in a child process, drives the proxy from N worker greenlets spread
over P client processes, and prints one JSON line per run (a "median" line follows when
--repeat > 1). Every loop ends at a deadline, every socket has a timeout, and --timeout is a
hard limit on the whole run.

Origins (127.0.0.1; --origin-base-port B fixes them at B, B+1, B+2, B+3, else free ports):
  http   HTTP/1.1, a 128-byte body for every request; keeps the connection unless asked to close
  bulk   streams --bulk-bytes as soon as a connection arrives, then closes (a server that
         speaks first, so an intercepting proxy pipes it)
  echo   echoes what it reads (the `hold` scenario)
  tls    `http` over TLS, with a leaf for 127.0.0.1 and localhost signed by a throw-away CA
         (--certdir keeps it; `origin-ca.pem` there is what an intercepting proxy must trust)

Proxies: --direct | --proxy http://[user:pass@]host:port | --proxy socks5://[user:pass@]host:port

Scenarios (--scenario a,b,...):
  connrate        open a tunnel (CONNECT or SOCKS5) to `http`, one GET with Connection: close,
                  read the answer, close                                       -> conn/s
  plainhttp       an absolute-URI GET through the HTTP proxy, Connection: close  -> req/s
  bulk            one tunnel to `bulk`, read every byte                          -> MB/s
  hold            K idle tunnels to `echo` for S seconds, then one byte each     -> survived, RSS
  mitm            tunnel, TLS handshake, one GET, close (a new connection each)  -> req/s
  mitm-keepalive  one tunnel and TLS session per worker, GETs back to back       -> req/s

With --proxy-pid the proxy's CPU time (the process and its children) over the measured window
is reported as `proxy_cpu_pct` and `proxy_cpu_us_per_op`; `client_cpu_pct` and
`origin_cpu_pct` say how much of the machine the generator itself took.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import multiprocessing as mp
import os
import resource
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

VERSION = 1
BODY = b"b" * 128
SCENARIOS = ("connrate", "plainhttp", "bulk", "hold", "mitm", "mitm-keepalive")
RATE_SCENARIOS = ("connrate", "plainhttp", "mitm", "mitm-keepalive")
CLK_TCK = os.sysconf("SC_CLK_TCK")
OP_TIMEOUT = 10.0  # one connect, handshake or read; a stalled proxy costs at most this per worker
ORIGIN = "127.0.0.1"


# ------------------------------------------------------------------ proxy URLs


@dataclass(frozen=True)
class Proxy:
    kind: str  # "direct", "http" or "socks5"
    host: str = ""
    port: int = 0
    user: str | None = None
    password: str = ""

    @property
    def auth_header(self) -> bytes:
        if self.user is None:
            return b""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return f"Proxy-Authorization: Basic {token}\r\n".encode()


def parse_proxy(url: str | None) -> Proxy:
    if not url:
        return Proxy("direct")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "socks5", "socks5h") or not parts.hostname or not parts.port:
        raise SystemExit(f"--proxy must be http://host:port or socks5://host:port, not {url!r}")
    user = unquote(parts.username) if parts.username is not None else None
    return Proxy("socks5" if parts.scheme.startswith("socks5") else "http", parts.hostname, parts.port,
                 user, unquote(parts.password or ""))


# ------------------------------------------------------------------ certificates


def make_pki(folder: Path) -> tuple[Path, Path]:
    """A throw-away CA (origin-ca.pem) and a leaf for 127.0.0.1/localhost (origin-leaf.pem, cert + key)."""
    ca_path, leaf_path = folder / "origin-ca.pem", folder / "origin-leaf.pem"
    if ca_path.exists() and leaf_path.exists():
        return ca_path, leaf_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxyload origin CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(ORIGIN))]
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_path.write_bytes(ca.public_bytes(pem))
    leaf_path.write_bytes(leaf.public_bytes(pem) + leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_path, leaf_path


# ------------------------------------------------------------------ origins (child process)


def _answer(close: bool) -> bytes:
    conn = b"close" if close else b"keep-alive"
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
            % (len(BODY), conn)) + BODY


def _serve_http(sock: Any, _addr: Any) -> None:
    buf = b""
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    return
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                continue
            head, buf = buf[:end].lower(), buf[end + 4:]
            close = b"connection: close" in head or b"http/1.0" in head.split(b"\r\n", 1)[0]
            sock.sendall(_answer(close))
            if close:
                return
    except OSError:
        return
    finally:
        sock.close()


def _origin_main(ports: dict[str, int], bulk_bytes: int, leaf: str | None, ready: Any) -> None:
    """The origins, on gevent, in their own process (they must not share the client's GIL)."""
    import gevent
    from gevent import socket as gsocket
    from gevent.server import StreamServer

    block = memoryview(b"\0" * (256 * 1024))

    def bulk(sock: Any, _addr: Any) -> None:
        left = bulk_bytes
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            while left > 0:
                n = min(left, len(block))
                sock.sendall(block[:n])
                left -= n
        except OSError:
            pass
        finally:
            sock.close()

    def echo(sock: Any, _addr: Any) -> None:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)
        except OSError:
            return
        finally:
            sock.close()

    handlers: dict[str, Callable[..., None]] = {"http": _serve_http, "bulk": bulk, "echo": echo, "tls": _serve_http}
    servers = []
    actual = {}
    for name, port in ports.items():
        kwargs: dict[str, Any] = {}
        if name == "tls":
            if not leaf:
                continue
            # one context for every connection, as a real HTTPS server has: its session tickets
            # stay valid across connections, so a client (or an intercepting proxy) can resume
            from gevent import ssl as gssl

            tls_ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
            tls_ctx.load_cert_chain(leaf)
            kwargs = {"ssl_context": tls_ctx}
        listener = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ORIGIN, port))
        listener.listen(4096)
        server = StreamServer(listener, handlers[name], **kwargs)
        server.start()
        servers.append(server)
        actual[name] = listener.getsockname()[1]
    ready.send(actual)
    ready.close()
    parent = os.getppid()
    while os.getppid() == parent:  # ends with the generator, whatever way it ends
        gevent.sleep(1.0)


def start_origins(args: argparse.Namespace, leaf: Path | None) -> tuple[mp.Process, dict[str, int]]:
    base = args.origin_base_port
    names = ("http", "bulk", "echo", "tls")
    ports = {name: (base + i if base else 0) for i, name in enumerate(names)}
    parent_end, child_end = mp.Pipe(duplex=False)
    proc = mp.Process(target=_origin_main, args=(ports, args.bulk_bytes, str(leaf) if leaf else None, child_end),
                      daemon=True)
    proc.start()
    child_end.close()
    if not parent_end.poll(30):
        raise SystemExit("the origins did not start within 30 s")
    return proc, parent_end.recv()


# ------------------------------------------------------------------ client side (gevent, in workers)


class Refused(Exception):
    """The proxy said no (an HTTP status or a SOCKS5 reply code)."""


def _recv_head(sock: Any) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the head")
        buf += data
        if len(buf) > 65536:
            raise ConnectionError("head too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _recv_exact(sock: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("closed early")
        buf += data
    return buf


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ConnectionError("no Content-Length")


def read_response(sock: Any, leftover: bytes = b"") -> tuple[int, bytes]:
    """Status and what follows the body (nothing, with these origins)."""
    buf = leftover
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = _content_length(head)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed in the body")
        rest += data
    return status, rest[length:]


def open_tunnel(proxy: Proxy, port: int, host: str = ORIGIN) -> Any:
    """A connected tunnel; bytes the origin sent with the proxy's answer are refused (see open_stream)."""
    sock, rest = open_stream(proxy, port, host)
    if rest:
        sock.close()
        raise ConnectionError("bytes after the proxy's answer")
    return sock


def open_stream(proxy: Proxy, port: int, host: str = ORIGIN) -> tuple[Any, bytes]:
    """A tunnel and what the origin already sent (a server that speaks first may be that quick)."""
    from gevent import socket as gsocket

    if proxy.kind == "direct":
        sock = gsocket.create_connection((ORIGIN, port), timeout=OP_TIMEOUT)
    else:
        sock = gsocket.create_connection((proxy.host, proxy.port), timeout=OP_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rest = b""
    try:
        if proxy.kind == "http":
            sock.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n"
                         % (host.encode(), port, host.encode(), port, proxy.auth_header))
            head, rest = _recv_head(sock)
            status = head.split(b" ", 2)[1]
            if status != b"200":
                raise Refused(f"http_{status.decode(errors='replace')}")
        elif proxy.kind == "socks5":
            _socks5_connect(sock, proxy, host, port)
    except BaseException:
        sock.close()
        raise
    return sock, rest


def _socks5_connect(sock: Any, proxy: Proxy, host: str, port: int) -> None:
    method = 0x02 if proxy.user is not None else 0x00
    sock.sendall(bytes([5, 1, method]))
    ver, chosen = _recv_exact(sock, 2)
    if ver != 5 or chosen != method:
        raise Refused(f"socks_method_{chosen}")
    if method == 0x02:
        user, pw = proxy.user.encode(), proxy.password.encode()  # type: ignore[union-attr]
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(pw)]) + pw)
        if _recv_exact(sock, 2)[1] != 0:
            raise Refused("socks_auth")
    try:
        addr = b"\x01" + ipaddress.IPv4Address(host).packed
    except ValueError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    _ver, rep, _rsv, atyp = _recv_exact(sock, 4)
    if rep != 0:
        raise Refused(f"socks_reply_{rep}")
    tail = {1: 4, 4: 16}.get(atyp)
    if tail is None:
        tail = _recv_exact(sock, 1)[0]
    _recv_exact(sock, tail + 2)


def _get(host: str, port: int, close: bool, absolute: bool = False, auth: bytes = b"") -> bytes:
    target = f"http://{host}:{port}/" if absolute else "/"
    conn = b"Connection: close\r\n" if close else b""
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s%s\r\n" % (target.encode(), host.encode(), port, conn, auth)


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if exc.__class__.__name__.startswith("SSL"):
        return "tls"
    if isinstance(exc, ConnectionError):
        return "closed"
    return exc.__class__.__name__


@dataclass
class Job:
    scenario: str
    proxy: Proxy
    ports: dict[str, int]
    workers: int
    start_at: float
    measure_at: float
    stop_at: float
    cafile: str | None
    tls_host: str


def _tls_context(cafile: str | None) -> Any:
    from gevent import ssl as gssl

    # gssl.create_default_context would hand back the stdlib's context, whose sockets block the hub
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _worker_main(job: Job, out: Any) -> None:
    """Run job.workers greenlets until job.stop_at; report latencies of ops inside the window."""
    import gevent

    lat: list[float] = []
    kinds: dict[str, int] = {}
    issuers: set[str] = set()  # who signed the leaf the client saw: the proxy's CA when it intercepts
    ctx = _tls_context(job.cafile) if job.scenario.startswith("mitm") else None
    http_port, tls_port = job.ports["http"], job.ports.get("tls", 0)
    plain_req = _get(ORIGIN, http_port, close=True, absolute=job.proxy.kind == "http" and job.scenario == "plainhttp",
                     auth=job.proxy.auth_header if job.scenario == "plainhttp" else b"")
    tls_close = _get(job.tls_host, tls_port, close=True)
    tls_keep = _get(job.tls_host, tls_port, close=False)

    def once() -> None:
        if job.scenario == "connrate":
            sock = open_tunnel(job.proxy, http_port)
        elif job.scenario == "plainhttp":
            from gevent import socket as gsocket

            target = (job.proxy.host, job.proxy.port) if job.proxy.kind == "http" else (ORIGIN, http_port)
            sock = gsocket.create_connection(target, timeout=OP_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:  # mitm
            raw = open_tunnel(job.proxy, tls_port, job.tls_host)
            sock = ctx.wrap_socket(raw, server_hostname=job.tls_host)
            if not issuers:
                issuers.add(_issuer_cn(sock))
        try:
            sock.sendall(tls_close if job.scenario == "mitm" else plain_req)
            status, _ = read_response(sock)
            if status != 200:
                raise Refused(f"http_{status}")
        finally:
            sock.close()

    def loop() -> None:
        keep = None
        leftover = b""
        while True:
            t0 = time.monotonic()
            if t0 >= job.stop_at:
                break
            try:
                if job.scenario == "mitm-keepalive":
                    if keep is None:
                        raw = open_tunnel(job.proxy, tls_port, job.tls_host)
                        keep = ctx.wrap_socket(raw, server_hostname=job.tls_host)
                        issuers.add(_issuer_cn(keep))
                        leftover = b""
                        t0 = time.monotonic()
                    keep.sendall(tls_keep)
                    status, leftover = read_response(keep, leftover)
                    if status != 200:
                        raise Refused(f"http_{status}")
                else:
                    once()
                t1 = time.monotonic()
                if job.measure_at <= t1 <= job.stop_at:
                    lat.append(t1 - t0)
            except Exception as exc:  # noqa: BLE001 - every failure is counted by kind, the loop goes on
                if keep is not None:
                    keep.close()
                    keep = None
                if job.measure_at <= time.monotonic() <= job.stop_at:
                    kind = _error_kind(exc)
                    kinds[kind] = kinds.get(kind, 0) + 1
                gevent.sleep(0.005)
        if keep is not None:
            keep.close()

    while time.monotonic() < job.start_at:
        time.sleep(0.001)
    greenlets = [gevent.spawn(loop) for _ in range(job.workers)]
    gevent.sleep(max(0.0, job.measure_at - time.monotonic()))
    cpu0 = _self_cpu()
    gevent.sleep(max(0.0, job.stop_at - time.monotonic()))
    cpu1 = _self_cpu()
    gevent.joinall(greenlets, timeout=OP_TIMEOUT + 5)
    gevent.killall([g for g in greenlets if not g.dead], timeout=1)
    out.send({"lat": lat, "kinds": kinds, "cpu_s": cpu1 - cpu0, "issuers": sorted(issuers)})
    out.close()


def _issuer_cn(sock: Any) -> str:
    cert = sock.getpeercert() or {}
    for rdn in cert.get("issuer", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ accounting of other processes


def _proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int | None) -> list[int]:
    if not pid:
        return []
    kids, out, todo = _proc_children(), [], [pid]
    while todo and len(out) < 256:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kb(pids: list[int]) -> int | None:
    total, seen = 0, False
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    seen = True
        except OSError:
            continue
    return total if seen else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


# ------------------------------------------------------------------ scenarios (in the parent)


def run_rate(args: argparse.Namespace, scenario: str, proxy: Proxy, ports: dict[str, int], origin_pid: int) -> dict:
    start = time.monotonic() + 0.3
    measure, stop = start + args.warmup, start + args.warmup + args.duration
    per_proc = [args.workers // args.procs + (1 if i < args.workers % args.procs else 0) for i in range(args.procs)]
    cafile = args.cafile or str(Path(args.certdir) / "origin-ca.pem") if scenario.startswith("mitm") else None
    pipes, procs = [], []
    for n in per_proc:
        if n == 0:
            continue
        rd, wr = mp.Pipe(duplex=False)
        job = Job(scenario, proxy, ports, n, start, measure, stop, cafile, args.tls_host)
        p = mp.Process(target=_worker_main, args=(job, wr), daemon=True)
        p.start()
        wr.close()
        pipes.append(rd)
        procs.append(p)
    proxy_pids = tree(args.proxy_pid)
    time.sleep(max(0.0, measure - time.monotonic()))
    proxy_pids = tree(args.proxy_pid) or proxy_pids
    p0, o0 = cpu_seconds(proxy_pids), cpu_seconds([origin_pid])
    time.sleep(max(0.0, stop - time.monotonic()))
    p1, o1 = cpu_seconds(proxy_pids), cpu_seconds([origin_pid])
    results = []
    for rd in pipes:
        if rd.poll(OP_TIMEOUT + 15):
            results.append(rd.recv())
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    lat = sorted(x for r in results for x in r["lat"])
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    ops, dur = len(lat), args.duration
    line: dict[str, Any] = {
        "scenario": scenario, "workers": args.workers, "procs": len(procs), "duration_s": dur,
        "ok": ops, "rate_per_s": round(ops / dur, 1), "errors": sum(kinds.values()), "error_kinds": kinds,
        "lat_ms": {"p50": _ms(percentile(lat, 0.5)), "p99": _ms(percentile(lat, 0.99)),
                   "mean": _ms(statistics.fmean(lat)) if lat else None},
        "client_cpu_s": round(sum(r["cpu_s"] for r in results), 3),
        "origin_cpu_s": round(o1 - o0, 3),
    }
    line["client_cpu_pct"] = round(100 * line["client_cpu_s"] / dur, 1)
    line["origin_cpu_pct"] = round(100 * line["origin_cpu_s"] / dur, 1)
    if scenario.startswith("mitm"):
        issuers = sorted({i for r in results for i in r.get("issuers", ())})
        line["issuer_cn"] = issuers
        line["intercepted"] = bool(issuers) and "proxyload origin CA" not in issuers
    if len(results) < len(pipes):
        line["error"] = f"{len(pipes) - len(results)} client process(es) did not report"
    if args.proxy_pid:
        line["proxy_cpu_s"] = round(p1 - p0, 3)
        line["proxy_cpu_pct"] = round(100 * (p1 - p0) / dur, 1)
        line["proxy_cpu_us_per_op"] = round(1e6 * (p1 - p0) / ops, 1) if ops else None
    return line


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def _bulk_main(proxy: Proxy, port: int, nbytes: int, out: Any) -> None:
    try:
        t0 = time.monotonic()
        sock, rest = open_stream(proxy, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        buf = bytearray(1 << 20)
        got = len(rest)
        while got < nbytes:
            n = sock.recv_into(buf)
            if not n:
                break
            got += n
        out.send({"bytes": got, "seconds": time.monotonic() - t0})
    except Exception as exc:  # noqa: BLE001 - reported as the run's error
        out.send({"error": _error_kind(exc)})


def run_bulk(args: argparse.Namespace, proxy: Proxy, ports: dict[str, int]) -> dict:
    rd, wr = mp.Pipe(duplex=False)
    p = mp.Process(target=_bulk_main, args=(proxy, ports["bulk"], args.bulk_bytes, wr), daemon=True)
    pids = tree(args.proxy_pid)
    c0 = cpu_seconds(pids)
    p.start()
    wr.close()
    limit = max(30.0, args.bulk_bytes / (20 << 20))  # 20 MB/s at worst
    got = rd.recv() if rd.poll(limit) else {"error": f"no result within {limit:.0f} s"}
    c1 = cpu_seconds(pids)
    p.join(timeout=2)
    if p.is_alive():
        p.kill()
    line: dict[str, Any] = {"scenario": "bulk", "bulk_bytes": args.bulk_bytes}
    if "error" in got:
        line["error"] = got["error"]
        return line
    secs = max(got["seconds"], 1e-6)
    line.update(received=got["bytes"], seconds=round(secs, 3), mb_s=round(got["bytes"] / secs / 1e6, 1),
                errors=0 if got["bytes"] == args.bulk_bytes else 1)
    if args.proxy_pid:
        line["proxy_cpu_pct"] = round(100 * (c1 - c0) / secs, 1)
    return line


def _hold_main(proxy: Proxy, port: int, conns: int, idle_s: float, proxy_pid: int | None, out: Any) -> None:
    import gevent
    from gevent.pool import Pool

    pids = tree(proxy_pid)
    before = rss_kb(pids)
    socks: list[Any] = []
    failed: dict[str, int] = {}

    def opener() -> None:
        try:
            socks.append(open_tunnel(proxy, port))
        except Exception as exc:  # noqa: BLE001 - counted by kind
            kind = _error_kind(exc)
            failed[kind] = failed.get(kind, 0) + 1

    pool = Pool(64)
    with gevent.Timeout(120, False):
        for _ in range(conns):
            pool.spawn(opener)
        pool.join()
    opened = len(socks)
    at_open = rss_kb(tree(proxy_pid))
    gevent.sleep(idle_s)
    after_idle = rss_kb(tree(proxy_pid))
    survived, dead, no_reply = 0, 0, 0

    def check(s: Any) -> None:
        nonlocal survived, dead, no_reply
        try:
            s.settimeout(10)
            s.sendall(b"x")
            if s.recv(1) == b"x":
                survived += 1
            else:
                dead += 1
        except TimeoutError:
            no_reply += 1
        except OSError:
            dead += 1
        finally:
            s.close()

    for s in list(socks):
        pool.spawn(check, s)
    pool.join(timeout=30)
    line = {"scenario": "hold", "requested": conns, "opened": opened, "open_errors": failed, "idle_s": idle_s,
            "survived": survived, "dead": dead, "no_reply": no_reply,
            "proxy_rss_kb": {"before": before, "open": at_open, "after_idle": after_idle}}
    if before is not None and at_open is not None and opened:
        line["proxy_rss_kb_per_conn"] = round((at_open - before) / opened, 2)
    out.send(line)


def run_hold(args: argparse.Namespace, proxy: Proxy, ports: dict[str, int]) -> dict:
    rd, wr = mp.Pipe(duplex=False)
    p = mp.Process(target=_hold_main, args=(proxy, ports["echo"], args.hold_conns, args.hold_secs,
                                            args.proxy_pid, wr), daemon=True)
    p.start()
    wr.close()
    limit = args.hold_secs + 180
    line = rd.recv() if rd.poll(limit) else {"scenario": "hold", "error": f"no result within {limit:.0f} s"}
    p.join(timeout=2)
    if p.is_alive():
        p.kill()
    return line


def median_line(runs: list[dict]) -> dict:
    out: dict[str, Any] = {"scenario": runs[0]["scenario"], "run": "median", "runs": len(runs)}
    for key in ("rate_per_s", "mb_s", "proxy_cpu_pct", "proxy_cpu_us_per_op", "client_cpu_pct",
                "origin_cpu_pct", "client_cpu_s", "origin_cpu_s", "proxy_cpu_s"):
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if vals:
            out[key] = round(statistics.median(vals), 1)
    lats = [r["lat_ms"] for r in runs if r.get("lat_ms")]
    if lats:
        out["lat_ms"] = {k: round(statistics.median(x[k] for x in lats if x.get(k) is not None), 3)
                         for k in ("p50", "p99", "mean") if any(x.get(k) is not None for x in lats)}
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    kinds: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("error_kinds") or {}).items():
            kinds[k] = kinds.get(k, 0) + v
    out["error_kinds"] = kinds
    failed = [r["error"] for r in runs if "error" in r]
    if failed and len(failed) == len(runs):
        out["error"] = failed[-1]
    return out


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--proxy", help="http://[user:pass@]host:port or socks5://[user:pass@]host:port")
    g.add_argument("--direct", action="store_true", help="no proxy: the generator's own ceiling")
    ap.add_argument("--scenario", default="connrate", help=f"comma list of {', '.join(SCENARIOS)}")
    ap.add_argument("--label", help="copied into every JSON line")
    ap.add_argument("--workers", "-c", type=int, default=16, help="concurrent connections (greenlets)")
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1), help="client processes")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before them")
    ap.add_argument("--repeat", type=int, default=1, help="runs per scenario; a median line follows when > 1")
    ap.add_argument("--bulk-bytes", type=_size, default=_size("256M"), help="bytes the bulk origin sends")
    ap.add_argument("--hold-conns", type=int, default=1000)
    ap.add_argument("--hold-secs", type=float, default=10.0)
    ap.add_argument("--proxy-pid", type=int, help="measure this process's (and its children's) CPU and RSS")
    ap.add_argument("--origin-base-port", type=int, default=0, help="origins on B..B+3 (default: free ports)")
    ap.add_argument("--certdir", help="keep the origin CA and leaf here (default: a temporary folder)")
    ap.add_argument("--cafile", help="the CA the client trusts in the mitm scenarios (the proxy's)")
    ap.add_argument("--tls-host", default=ORIGIN, help="the name the mitm scenarios connect to (SNI)")
    ap.add_argument("--no-tls", action="store_true", help="no TLS origin (no certificates are made)")
    ap.add_argument("--timeout", type=float, default=600.0, help="hard limit on the whole run, in seconds")
    args = ap.parse_args(argv)
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not scenarios:
        ap.error(f"unknown scenario {bad}; choose from {', '.join(SCENARIOS)}")
    if not 1 <= args.workers <= 4096 or not 1 <= args.procs <= 64 or not 1 <= args.repeat <= 50:
        ap.error("--workers 1..4096, --procs 1..64, --repeat 1..50")
    if args.duration <= 0 or args.duration > 3600 or args.warmup < 0:
        ap.error("--duration must be in (0, 3600] and --warmup >= 0")
    proxy = parse_proxy(None if args.direct else args.proxy)
    skipped = []
    if proxy.kind == "socks5" and "plainhttp" in scenarios:
        scenarios.remove("plainhttp")  # no absolute-URI requests over SOCKS5: said, not failed
        skipped.append("plainhttp")
    if any(s.startswith("mitm") for s in scenarios) and args.no_tls:
        ap.error("the mitm scenarios need the TLS origin (drop --no-tls)")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.hold_conns * 2 + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    mp.set_start_method("fork")
    signal.signal(signal.SIGALRM, _on_deadline)
    signal.alarm(max(1, int(args.timeout)))

    leaf = None
    if not args.no_tls:
        import tempfile

        args.certdir = args.certdir or tempfile.mkdtemp(prefix="proxyload-")
        _ca, leaf = make_pki(Path(args.certdir))
    origin, ports = start_origins(args, leaf)
    base = {"label": args.label} if args.label else {}
    emit({**base, "loadgen": f"proxyload {VERSION}", "python": sys.version.split()[0], "ncpu": os.cpu_count(),
          "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "proxy": proxy.kind, "origin_ports": ports,
          "certdir": args.certdir})
    for scenario in skipped:
        emit({**base, "scenario": scenario, "run": 1, "skipped": "needs an HTTP proxy or --direct"})
    try:
        for scenario in scenarios:
            runs = []
            for i in range(1 if scenario in ("bulk", "hold") else args.repeat):
                if scenario == "bulk":
                    line = run_bulk(args, proxy, ports)
                elif scenario == "hold":
                    line = run_hold(args, proxy, ports)
                else:
                    line = run_rate(args, scenario, proxy, ports, origin.pid)
                line = {**base, **line, "run": i + 1}
                runs.append(line)
                emit(line)
            if len(runs) > 1:
                emit({**base, **median_line(runs)})
    finally:
        origin.kill()
        origin.join(timeout=2)
    return 0


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in "KMG" else ""
    try:
        value = int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 512M)") from None
    if not 0 < value <= 64 << 30:
        raise argparse.ArgumentTypeError("size out of range")
    return value


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def _on_deadline(_signum: int, _frame: Any) -> None:
    for child in mp.active_children():
        child.kill()
    emit({"error": "hard --timeout reached"})
    os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
