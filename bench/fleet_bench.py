"""Fleet mode figures (issue 14, docs/fleet.md).

1. Release latency across nodes: a plain HTTP request held on node B (a new container each
   time, so a new pending row), approved through node A's REST API; the time from sending the
   approval to the client's first response byte, p50/p99. The same with the approval sent to B
   itself, for comparison (what the notification hop adds).
2. Proxied req/s of one node on PostgreSQL vs on SQLite: `bench/proxyload.py` (the
   repository's load generator) with its `plainhttp` and `connrate` scenarios against one node,
   once per backend (medians of --repeat runs).

Without --database-url a throwaway PostgreSQL cluster is started (tests/pgcluster.py: Debian's
postgresql, run as an unprivileged user when root). Everything listens on loopback; every loop
and wait is bounded. One JSON object per figure on stdout, then a small table.

    .venv/bin/python bench/fleet_bench.py [--iterations 100] [--duration 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pgcluster import PgCluster  # noqa: E402 - after the path is set
from tests.ports import free_port  # noqa: E402


class Node:
    def __init__(self, root: Path, name: str, url: str | None, key: Path) -> None:
        self.name = name
        self.data = root / name
        self.data.mkdir(parents=True)
        cfg = root / f"{name}.yml"
        cfg.write_text(f"fleet: {{node_id: {name}, credential_key_file: '{key}'}}\n"
                       "log: {level: warning}\nlimits: {requests_per_second: 0}\nhold_seconds: 30\n")
        cmd = [sys.executable, "-m", "greyproxy", "serve", "-C", str(cfg), "--data-dir", str(self.data)]
        for listener in ("http", "socks5", "dns", "api"):
            cmd += [f"--listen-{listener}", "127.0.0.1:0"]
        if url:
            cmd += ["--database-url", url]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.log = open(root / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        handshake = self.data / "api-handshake.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(root / f'{name}.log').read_text()[-2000:]}")
            try:
                info = json.loads(handshake.read_text())
                self.ports, self.token = info["ports"], info["token"]
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{name} did not start")

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["api"], timeout=10)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def wait_fleet(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, health = self.api("GET", "/api/health")
            if health.get("fleet", {}).get("connected", "fleet" not in health):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: fleet link not up")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def held_request(proxy_port: int, container: str, origin: tuple[str, int], out: dict[str, float]) -> None:
    """A plain GET through the HTTP proxy; notes when the first response byte arrives."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=40)
    try:
        import base64

        auth = base64.b64encode(f"{container}:x".encode()).decode()
        host, port = origin
        sock.sendall(f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\nConnection: close\r\n\r\n".encode())
        first = sock.recv(1)
        out["answered"] = time.perf_counter()
        out["status_ok"] = float(first == b"H" and b" 200 " in first + sock.recv(64))
    finally:
        sock.close()


def release_latency(held_on: Node, approve_on: Node, origin: tuple[str, int], iterations: int,
                    tag: str) -> list[float]:
    lat = []
    for i in range(iterations):  # bounded
        container = f"{tag}{i}-{secrets.token_hex(3)}"
        out: dict[str, float] = {}
        client = threading.Thread(target=held_request, args=(held_on.ports["http"], container, origin, out))
        client.start()
        item = None
        deadline = time.monotonic() + 10
        while item is None and time.monotonic() < deadline:
            _, page = approve_on.api("GET", f"/api/pending?container={container}")
            items = [p for p in page["items"] if p["container_name"] == container]
            if items and items[0].get("waiter_count", 0) >= 1:
                item = items[0]
            else:
                time.sleep(0.005)
        if item is None:
            raise RuntimeError(f"pending row for {container} never showed on {approve_on.name}")
        started = time.perf_counter()
        status, _ = approve_on.api("POST", f"/api/pending/{item['id']}/allow", {"scope": "exact", "duration": "1h"})
        client.join(timeout=15)
        if status != 200 or "answered" not in out or not out.get("status_ok"):
            raise RuntimeError(f"approval {i} on {approve_on.name} did not release the client on {held_on.name}")
        lat.append((out["answered"] - started) * 1000)
    return lat


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(values), "p50_ms": round(statistics.median(ordered), 2), "p99_ms": round(p99, 2),
            "max_ms": round(ordered[-1], 2)}


def proxied_rate(node: Node, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "bench" / "proxyload.py"), "--proxy",
           f"http://bench:x@127.0.0.1:{node.ports['http']}", "--scenario", scenario, "--workers", str(args.workers),
           "--duration", str(args.duration), "--warmup", "1", "--repeat", str(args.repeat),
           "--proxy-pid", str(node.proc.pid), "--timeout", str(args.repeat * (args.duration + 5) + 30)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.repeat * (args.duration + 5) + 60)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in lines if r.get("scenario") == scenario]
    if not runs:
        raise RuntimeError(f"proxyload gave no result: {out.stderr[-2000:]}")
    median = next((r for r in runs if r.get("run") == "median"), runs[-1])
    return {"rate_per_s": median.get("rate_per_s"), "errors": median.get("errors"),
            "lat_ms": median.get("lat_ms"), "proxy_cpu_pct": median.get("proxy_cpu_pct")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="an existing PostgreSQL (default: a throwaway cluster)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="greyproxy-fleet-bench-"))
    key = root / "fleet.key"
    key.write_bytes(secrets.token_bytes(32))
    cluster = None
    nodes: list[Node] = []
    results: dict[str, Any] = {}
    try:
        if args.database_url:
            url = args.database_url
        else:
            cluster = PgCluster().init()
            url = cluster.fresh_url()
        origin_host = "127.0.0.2"
        server = ThreadingHTTPServer((origin_host, free_port(origin_host)), Origin)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        origin = (origin_host, server.server_address[1])

        if not args.skip_latency:
            a, b = Node(root, "node-a", url, key), Node(root, "node-b", url, key)
            nodes += [a, b]
            a.wait_fleet()
            b.wait_fleet()
            release_latency(b, a, origin, 5, "warm")  # warm up both paths
            results["release_across_nodes"] = percentiles(release_latency(b, a, origin, args.iterations, "x"))
            results["release_same_node"] = percentiles(release_latency(b, b, origin, args.iterations, "s"))
            for name, value in results.items():
                print(json.dumps({"figure": name, **value}), flush=True)
            for node in nodes:
                node.stop()
            nodes.clear()

        if not args.skip_throughput:
            backends = [("sqlite", None), ("postgresql", cluster.fresh_url() if cluster else url)]
            for backend, backend_url in backends:
                node = Node(root, f"tp-{backend}", backend_url, key)
                nodes.append(node)
                for scenario in ("plainhttp", "connrate"):
                    figure = {"figure": f"{scenario}_{backend}", **proxied_rate(node, scenario, args)}
                    results[figure["figure"]] = figure
                    print(json.dumps(figure), flush=True)
                node.stop()
                nodes.remove(node)
        print()
        for name, value in results.items():
            if "p50_ms" in value:
                print(f"{name:28s} p50 {value['p50_ms']:8.2f} ms   p99 {value['p99_ms']:8.2f} ms   (n={value['n']})")
            else:
                print(f"{name:28s} {value['rate_per_s']:10.1f} /s   errors {value['errors']}")
        return 0
    finally:
        for node in nodes:
            node.stop()
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
