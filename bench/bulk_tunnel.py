#!/usr/bin/env python3
"""Bulk MB/s through greyproxy's plain tunnels, with and without splice(2), in one run.

Starts two `greyproxy serve` processes on loopback: one as shipped (bulky plain tunnels are
spliced through a kernel pipe) and one with GREYPROXY_SPLICE=0 (the recv/send copy). Then, in
rounds so that the machine's load falls alike on every row, it runs bench/proxyload.py's
`bulk` scenario (one tunnel, the origin streams --bulk-bytes, the client reads every byte):
direct, copy CONNECT, copy SOCKS5, splice CONNECT, splice SOCKS5. Prints one markdown table of
medians: MB/s, ÷ direct, and the proxy's CPU time per GiB moved (from /proc schedstat).

    .venv/bin/python bench/bulk_tunnel.py                       # 3 rounds × 256 MiB, ~1-2 min
    .venv/bin/python bench/bulk_tunnel.py --rounds 1 --bulk-bytes 64M
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gp_api  # noqa: E402 - the stdlib API client next to this file
from peers import USER, free_run, stop  # noqa: E402 - same origins and process handling as peers.py
from proxyload import tree  # noqa: E402 - the process and its children


def start(exe: str, work: Path, name: str, splice: bool, base: int) -> tuple[subprocess.Popen, dict]:
    data = work / name
    cfg = work / f"{name}.yml"
    # warning level: no line per connection; no per-container rate limit for a load generator.
    cfg.write_text("log: {level: warning}\nlimits: {requests_per_second: 0}\n")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["GREYPROXY_SPLICE"] = "1" if splice else "0"
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen([exe, "serve", "-C", str(cfg), "--data-dir", str(data), "--listen-http", "127.0.0.1:0",
                             "--listen-socks5", "127.0.0.1:0", "--listen-dns", "127.0.0.1:0",
                             "--listen-api", "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            hs = gp_api.load_handshake(str(data))
            if gp_api.request(hs, "GET", "/api/health", timeout=5)[0] == 200:
                rule = {"container_pattern": USER, "destination_pattern": "127.0.0.1",
                        "port_pattern": f"{base}-{base + 3}", "action": "allow"}
                status, body = gp_api.request(hs, "POST", "/api/rules", json.dumps(rule).encode(), timeout=30)
                if status >= 300:
                    raise SystemExit(f"{name}: rule not created: {status} {body[:200]!r}")
                return proc, hs
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"{name} did not start (see {work / (name + '.log')})")


def oncpu_ns(pid: int | None) -> int:
    """Nanoseconds the threads of the process and its children (`serve --workers`: the data-path
    workers) have run (/proc schedstat: exact, unlike the 10 ms ticks of utime/stime, which a
    sub-second transfer barely moves)."""
    total = 0
    for p in tree(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def bulk(args: argparse.Namespace, base: int, certs: Path, proxy: str | None, pid: int | None) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "proxyload.py"), "--scenario", "bulk", "--bulk-bytes", args.bulk_bytes,
           "--origin-base-port", str(base), "--certdir", str(certs), "--no-tls", "--timeout", "120"]
    cmd += ["--direct"] if proxy is None else ["--proxy", proxy]
    if pid:
        cmd += ["--proxy-pid", str(pid)]
    before = oncpu_ns(pid)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=140)
    used = oncpu_ns(pid) - before
    for raw in res.stdout.splitlines():
        line = json.loads(raw)
        if line.get("scenario") == "bulk":
            if pid and line.get("received"):
                line["proxy_cpu_ms_per_gib"] = round(used / 1e6 / (line["received"] / (1 << 30)), 1)
            return line
    return {"error": res.stderr.strip()[-200:] or "no result"}


def main(argv: list[str] | None = None) -> int:
    venv_bin = Path(sys.executable).parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="medians over this many rounds (1..9)")
    ap.add_argument("--bulk-bytes", default="256M")
    ap.add_argument("--greyproxy", default=os.environ.get("GREYPROXY") or str(venv_bin / "greyproxy"))
    ap.add_argument("--modes", default="copy,splice", help="which proxies to run: copy, splice or both")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 9:
        ap.error("--rounds 1..9")
    modes = [m for m in ("copy", "splice") if m in args.modes.split(",")]
    if not modes:
        ap.error("--modes: copy, splice or copy,splice")
    rows = ("direct", *(f"{m} {p}" for m in modes for p in ("CONNECT", "SOCKS5")))
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in rows}
    base = free_run(4)
    with tempfile.TemporaryDirectory(prefix="greyproxy-bulk-") as tmp:
        work = Path(tmp)
        procs: list[subprocess.Popen] = []
        try:
            targets: dict[str, tuple[str | None, int | None]] = {"direct": (None, None)}
            for mode in modes:
                proc, hs = start(args.greyproxy, work, mode, mode == "splice", base)
                procs.append(proc)
                targets[f"{mode} CONNECT"] = (f"http://{USER}:x@127.0.0.1:{hs['ports']['http']}", proc.pid)
                targets[f"{mode} SOCKS5"] = (f"socks5://{USER}:x@127.0.0.1:{hs['ports']['socks5']}", proc.pid)
            for i in range(args.rounds):
                # direct first, then the proxied rows rotated by one each round: no row always
                # runs right after another (the box's state after a transfer favours the next)
                order = [rows[0], *(rows[1 + (i + k) % (len(rows) - 1)] for k in range(len(rows) - 1))]
                for row in order:
                    proxy, pid = targets[row]
                    line = bulk(args, base, work / "certs", proxy, pid)
                    print(f"# round {i + 1} {row}: {json.dumps(line)}", file=sys.stderr, flush=True)
                    results[row].append(line)
        finally:
            for proc in procs:
                stop(proc)

    def med(row: str, key: str) -> float | None:
        values = [line[key] for line in results[row] if key in line and not line.get("errors")]
        return statistics.median(values) if values else None

    direct = med("direct", "mb_s")
    out = [f"## bulk through plain tunnels ({os.cpu_count()} CPUs shared by client, origin and proxy; "
           f"{args.bulk_bytes} per transfer; medians of {args.rounds})", "",
           "| path | MB/s | ÷ direct | proxy CPU ms per GiB | failed runs |", "|---|--:|--:|--:|--:|"]
    for row in rows:
        mbs, cpu = med(row, "mb_s"), med(row, "proxy_cpu_ms_per_gib")
        ratio = f"{mbs / direct:.2f}" if mbs and direct else "–"
        failed = sum(1 for line in results[row] if "error" in line or line.get("errors"))
        out.append(f"| {row} | {round(mbs, 1) if mbs is not None else '–'} | {ratio} | "
                   f"{cpu if cpu is not None else '–'} | {failed} |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
