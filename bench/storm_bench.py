#!/usr/bin/env python3
"""Proxied request latency with 10,000 rules, quiet vs during a control-plane storm (issue 13).

    python3 bench/storm_bench.py [--python PY] [--rules 10000] [--bulk 10000] [--quiet 5] [--storm 30]

Starts its own `PY -m greyproxy serve` (default: this interpreter) on loopback ports in a temp
data dir, loads --rules rules (bench/decision_bench.py's mix, one of them allowing the local
origin), writes --bulk pending rows straight into the database, then measures:

* quiet: proxied GETs (a new connection each, plain HTTP through the HTTP proxy) for --quiet s;
* storm: the same, while heartbeats of 3 sessions go out every 50 ms, a rule is created or
  deleted every 100 ms, GET /api/logs/stats every 200 ms, and one POST /api/pending/bulk-allow
  names all --bulk ids (in calls of 10,000, the API's bound); the storm ends when the bulk call has answered (and at least 3 s have
  passed), or after --storm s.

`/api/health` is polled every 50 ms throughout. Prints p50 / p99 / max per phase and one JSON
line. Bounded: a full run takes under a minute (--storm caps the storm). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from decision_bench import emit_rules  # noqa: E402
from gp_api import load_handshake  # noqa: E402

CONTAINER = "bench-client"
TIMEOUT = 30.0


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def api(hs: dict, method: str, path: str, body: object = None, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", hs["port"], timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {hs['token']}"} if hs.get("token") else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def proxied_get(proxy_port: int, origin_port: int) -> bool:
    auth = base64.b64encode(f"{CONTAINER}:x".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"http://127.0.0.1:{origin_port}/", headers={"Proxy-Authorization": f"Basic {auth}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    finally:
        conn.close()


class Sampler(threading.Thread):
    """Calls `probe` back to back (or every `interval` s) and keeps (start, seconds, ok)."""

    def __init__(self, probe, interval: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.probe, self.interval = probe, interval
        self.samples: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()
        self.in_flight: float | None = None  # start of the probe still waiting for its answer

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = self.in_flight = time.monotonic()
            try:
                ok = bool(self.probe())
            except OSError:
                ok = False
            self.in_flight = None
            self.samples.append((t0, time.monotonic() - t0, ok))
            if self.interval:
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))


def stats(samples: list[tuple[float, float, bool]], start: float, end: float) -> dict:
    samples = list(samples)
    xs = sorted(s for t, s, _ in samples if start <= t < end)
    failed = sum(1 for t, _, ok in samples if start <= t < end and not ok)
    if not xs:
        return {"n": 0, "failed": failed}

    def pct(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

    return {"n": len(xs), "failed": failed, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(xs[-1] * 1000, 2)}


def periodic(stop: threading.Event, interval: float, action) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                action()
            except OSError:
                pass
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter whose greyproxy is measured")
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--bulk", type=int, default=10_000, help="pending rows allowed by one bulk call")
    ap.add_argument("--quiet", type=float, default=5.0)
    ap.add_argument("--storm", type=float, default=35.0, help="longest storm (s)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    args = ap.parse_args(argv)
    begun = time.monotonic()

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    origin_port = origin.server_address[1]

    tmp = tempfile.mkdtemp(prefix="gp-storm-")
    data = os.path.join(tmp, "data")
    log = open(os.path.join(tmp, "greyproxy.log"), "wb")  # noqa: SIM115 - closed at the end
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    cmd = [args.python, "-m", "greyproxy", "serve", "--data-dir", data, "--listen-http", "127.0.0.1:0",
           "--listen-socks5", "127.0.0.1:0", "--listen-dns", "127.0.0.1:0", "--listen-api", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                hs = load_handshake(data)
                break
            except (OSError, ValueError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"greyproxy did not start; see {tmp}/greyproxy.log", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        http_port = int(hs["ports"]["http"])

        # 10,000 rules, one of them allowing the origin; the bulk's pending rows.
        rules_file = os.path.join(tmp, "rules.json")
        emit_rules(rules_file, args.rules, 1, CONTAINER, "127.0.0.1", str(origin_port))
        with open(rules_file, "rb") as fh:
            status, body = api(hs, "POST", "/api/rules/ingest", json.load(fh), timeout=120)
        if status != 200:
            print(f"ingest: {status} {body[:200]!r}", file=sys.stderr)
            return 1
        now = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
        with sqlite3.connect(os.path.join(data, "greyproxy.db"), timeout=30) as db:
            db.executemany(
                "INSERT INTO pending_requests (container_name, container_id, destination_host, destination_port,"
                " first_seen, last_seen, attempt_count) VALUES (?, '', ?, 443, ?, ?, 1)",
                [(f"storm-{i % 7}", f"h{i}.storm.example", now, now) for i in range(args.bulk)])
            ids = [r[0] for r in db.execute("SELECT id FROM pending_requests WHERE destination_host LIKE '%.storm.example'")]
        sessions = [f"gw-storm-{i:012d}" for i in range(3)]
        for sid in sessions:
            api(hs, "POST", "/api/sessions", {
                "session_id": sid, "container_name": f"agent-{sid[-1]}", "ttl_seconds": 300,
                "network_rules": [{"destination_pattern": f"{sid[-1]}.session.example", "port_pattern": "443"}]})
        setup = time.monotonic() - begun

        # 100 a second: under the per-container rate limit (limits.requests_per_second, 200)
        proxied = Sampler(lambda: proxied_get(http_port, origin_port), interval=0.01)
        health = Sampler(lambda: api(hs, "GET", "/api/health")[0] == 200, interval=0.05)
        proxied.start()
        health.start()
        q0 = time.monotonic()
        time.sleep(args.quiet)
        q1 = s0 = time.monotonic()

        stop = threading.Event()
        beats = {"n": 0}

        def heartbeat() -> None:
            sid = sessions[beats["n"] % len(sessions)]
            beats["n"] += 1
            api(hs, "POST", f"/api/sessions/{sid}/heartbeat")

        created: list[int] = []

        def churn() -> None:
            if created:
                api(hs, "DELETE", f"/api/rules/{created.pop()}")
                return
            status, body = api(hs, "POST", "/api/rules", {
                "container_pattern": "churn", "destination_pattern": f"c{time.monotonic_ns()}.churn.example",
                "port_pattern": "443", "action": "allow"})
            if status in (200, 201):
                created.append(json.loads(body)["id"])

        threads = [periodic(stop, 0.05, heartbeat), periodic(stop, 0.1, churn),
                   periodic(stop, 0.2, lambda: api(hs, "GET", "/api/logs/stats"))]
        bulk: dict = {}

        def bulk_allow() -> None:
            # A call names at most 10,000 ids (the API's bound): a bigger --bulk is sent as
            # back-to-back calls, as a client with that many would.
            t0 = time.monotonic()
            bulk["removed"] = 0
            try:
                for start in range(0, len(ids), 10_000):
                    status, body = api(hs, "POST", "/api/pending/bulk-allow", {"pending_ids": ids[start:start + 10_000]},
                                       timeout=args.storm + 60)
                    bulk["status"] = status
                    if status != 200:
                        bulk["removed"] = body[:200].decode()
                        break
                    bulk["removed"] += json.loads(body).get("pending_removed")
            except OSError as exc:
                bulk["status"] = repr(exc)
            bulk["seconds"] = round(time.monotonic() - t0, 2)

        bulk_thread = threading.Thread(target=bulk_allow, daemon=True)
        bulk_thread.start()
        bulk_thread.join(args.storm)
        if time.monotonic() - s0 < 3:
            time.sleep(3 - (time.monotonic() - s0))
        s1 = time.monotonic()
        stop.set()
        proxied.stop.set()
        health.stop.set()
        for t in (*threads, proxied, health):
            t.join(max(0.1, s1 + 10 - time.monotonic()))  # a stalled server: report what was measured
        for sampler in (proxied, health):  # a probe still unanswered counts with what it waited so far
            started = sampler.in_flight
            if sampler.is_alive() and started is not None and s0 <= started < s1:
                sampler.samples.append((started, time.monotonic() - started, False))
        if not bulk:  # still running: how far it got
            with sqlite3.connect(f"file:{os.path.join(data, 'greyproxy.db')}?mode=ro", uri=True, timeout=30) as db:
                left = db.execute("SELECT count(*) FROM pending_requests WHERE destination_host LIKE '%.storm.example'")
                bulk["status"] = f"still running after {args.storm} s"
                bulk["done"] = len(ids) - left.fetchone()[0]
        try:
            status, body = api(hs, "GET", "/api/metrics", timeout=5)
            policy = json.loads(body).get("policy") if status == 200 else None
        except OSError as exc:  # a stalled hub (the bulk call still holding it)
            status, policy = 0, f"no answer: {exc!r}"
        result = {
            "rules": args.rules, "bulk_ids": len(ids), "setup_s": round(setup, 1),
            "quiet": {"proxied": stats(proxied.samples, q0, q1), "health": stats(health.samples, q0, q1)},
            "storm": {"seconds": round(s1 - s0, 1), "proxied": stats(proxied.samples, s0, s1),
                      "health": stats(health.samples, s0, s1), "heartbeats": beats["n"],
                      "bulk": bulk},
            "policy": policy,
            "total_s": round(time.monotonic() - begun, 1),
        }
        for phase in ("quiet", "storm"):
            p, h = result[phase]["proxied"], result[phase]["health"]
            print(f"{phase:5}  proxied n={p['n']:5} failed={p['failed']} p50={p.get('p50_ms')} ms "
                  f"p99={p.get('p99_ms')} ms max={p.get('max_ms')} ms | /api/health max={h.get('max_ms')} ms")
        print(f"bulk-allow: {result['storm']['bulk']}; heartbeats sent: {beats['n']}; policy: {policy}")
        print(json.dumps(result))
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        origin.shutdown()
        if args.keep:
            print(f"data kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    socket.setdefaulttimeout(TIMEOUT)
    sys.exit(main())
