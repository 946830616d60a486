#!/usr/bin/env python3
"""greyproxy beside its peers, in one go, as one table.

Starts, one after the other on loopback: greyproxy (`serve` with a fresh data dir and CA, one
rule allowing the benchmark origins), tinyproxy (HTTP CONNECT and absolute-URI), microsocks
(SOCKS5), mitmdump (TLS interception) and bench/floor_relay.py (the least a gevent process can
do for a CONNECT: the floor under greyproxy's cost), and drives each with bench/proxyload.py. Then prints
one markdown table: for each measure, the figure with no proxy, greyproxy's, the peer's,
greyproxy ÷ peer, and the proxy CPU per connection or request of both (µs) with their ratio.

    .venv/bin/python bench/peers.py                          # medians of 3 × 5 s, ~4 min
    .venv/bin/python bench/peers.py --duration 2 --repeat 1  # a quick look, ~1 min

A peer that is not installed is skipped with a note (as root, --install installs tinyproxy and
microsocks with apt-get; mitmdump comes from PyPI: `pip install mitmproxy` in any venv, then
--mitmdump PATH or MITMDUMP=PATH). Raw JSON lines go to --results (default
/tmp/greyproxy-peers/<UTC stamp>/). Every child has a deadline; --budget bounds the whole run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gp_api  # noqa: E402 - the stdlib API client next to this file
import proxyload  # noqa: E402 - for its certificates

USER = "bench-client"
RATE = ("connrate", "plainhttp", "mitm", "mitm-keepalive")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_run(count: int) -> int:
    """The first of `count` consecutive free loopback ports (the origins; greyproxy's rule names them),
    below the ephemeral range, so no port-0 bind (greyproxy's listeners) can take one meanwhile."""
    try:
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low_ephemeral = 32768
    for _ in range(200):
        base = random.randint(20000, max(20000, low_ephemeral - count - 1))
        socks: list[socket.socket] = []
        try:
            for i in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no run of free ports found")


def wait_port(port: int, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, out: Path, base: int) -> None:
        self.args, self.work, self.out, self.base = args, work, out, base
        self.lines: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.certs = work / "certs"
        proxyload.make_pki(self.certs)

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def load(self, label: str, scenarios: list[str], proxy: str | None, pid: int | None,
             cafile: str | None = None) -> None:
        """One proxyload run; its JSON lines are kept (and written to the results folder)."""
        a = self.args
        rate_runs = sum(a.repeat for s in scenarios if s in RATE)
        limit = rate_runs * (a.duration + a.warmup + 20) + sum(90 for s in scenarios if s == "bulk") + 30
        if self.left() < 30:
            self.notes.append(f"{label}: not run, the budget is spent")
            return
        limit = min(limit, self.left() - 10)
        cmd = [sys.executable, str(HERE / "proxyload.py"), "--label", label, "--scenario", ",".join(scenarios),
               "--duration", str(a.duration), "--warmup", str(a.warmup), "--repeat", str(a.repeat),
               "--workers", str(a.workers), "--procs", str(a.procs), "--bulk-bytes", a.bulk_bytes,
               "--origin-base-port", str(self.base), "--certdir", str(self.certs), "--timeout", str(int(limit))]
        cmd += ["--direct"] if proxy is None else ["--proxy", proxy]
        if pid:
            cmd += ["--proxy-pid", str(pid)]
        if cafile:
            cmd += ["--cafile", cafile]
        print(f"# {label}: {', '.join(scenarios)}", file=sys.stderr, flush=True)
        name = label.replace(" ", "-")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=limit + 15)
            stdout, stderr = res.stdout, res.stderr
        except subprocess.TimeoutExpired as exc:
            stdout, stderr = exc.stdout or "", f"killed after {limit + 15:.0f} s"
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        (self.out / f"{name}.jsonl").write_text(stdout)
        if stderr.strip():
            (self.out / f"{name}.err").write_text(stderr if isinstance(stderr, str) else stderr.decode())
        for raw in stdout.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            line.setdefault("label", label)
            self.lines.append(line)

    # ------------------------------------------------------------ the proxies

    def greyproxy(self) -> None:
        exe = self.args.greyproxy
        data = self.work / "greyproxy"
        cfg = self.work / "greyproxy.yml"
        # warning level: no line per connection; the rate limit is for agents, not for a load generator;
        # the origins' CA is trusted for interception.
        cfg.write_text(f"log: {{level: warning}}\nlimits: {{requests_per_second: 0}}\n"
                       f"mitm: {{extra_ca_bundle: {self.certs / 'origin-ca.pem'}}}\n")
        subprocess.run([exe, "cert", "generate", "--data-dir", str(data)], capture_output=True, timeout=60)
        log = open(self.out / "greyproxy.log", "w")
        cmd = [exe, "serve", "-C", str(cfg), "--data-dir", str(data), "--listen-http", "127.0.0.1:0",
               "--listen-socks5", "127.0.0.1:0", "--listen-dns", "127.0.0.1:0", "--listen-api", "127.0.0.1:0",
               "--workers", str(self.args.gp_workers), *self.args.gp_arg]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            hs = self._handshake(data, proc)
            if hs is None:
                self.notes.append(f"greyproxy did not start (see {self.out / 'greyproxy.log'})")
                return
            rule = {"container_pattern": USER, "destination_pattern": "127.0.0.1",
                    "port_pattern": f"{self.base}-{self.base + 3}", "action": "allow"}
            status, body = gp_api.request(hs, "POST", "/api/rules", json.dumps(rule).encode(), timeout=30)
            if status >= 300:
                self.notes.append(f"greyproxy rule not created: {status} {body[:200]!r}")
                return
            http = f"http://{USER}:x@127.0.0.1:{hs['ports']['http']}"
            socks = f"socks5://{USER}:x@127.0.0.1:{hs['ports']['socks5']}"
            ca = str(data / "ca-cert.pem")
            self.load("greyproxy http", ["connrate", "plainhttp", "bulk", "mitm", "mitm-keepalive"], http,
                      proc.pid, ca)
            self.load("greyproxy socks5", ["connrate", "bulk"], socks, proc.pid)
        finally:
            stop(proc)
            log.close()

    def _handshake(self, data: Path, proc: subprocess.Popen) -> dict | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                hs = gp_api.load_handshake(str(data))
                if hs.get("pid") == proc.pid or hs.get("pid") is None or proc.poll() is None:
                    status, _ = gp_api.request(hs, "GET", "/api/health", timeout=5)
                    if status == 200:
                        return hs
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        return None

    def tinyproxy(self) -> None:
        exe = self._installed("tinyproxy", self.args.tinyproxy)
        if not exe:
            return
        port = free_port()
        conf = self.work / "tinyproxy.conf"
        lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 600", "MaxClients 4096", "Allow 127.0.0.1",
                 "LogLevel Critical", "DisableViaHeader Yes"]
        if os.geteuid() == 0:  # tinyproxy refuses to run as root
            lines = ["User nobody", "Group nogroup", *lines]
        conf.write_text("\n".join(lines) + "\n")
        with open(self.out / "tinyproxy.log", "w") as log:
            proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
            try:
                if not wait_port(port, proc, 15):
                    self.notes.append("tinyproxy did not listen")
                    return
                self.load("tinyproxy http", ["connrate", "plainhttp", "bulk"], f"http://127.0.0.1:{port}", proc.pid)
            finally:
                stop(proc)

    def microsocks(self) -> None:
        exe = self._installed("microsocks", self.args.microsocks)
        if not exe:
            return
        port = free_port()
        with open(self.out / "microsocks.log", "w") as log:
            proc = subprocess.Popen([exe, "-i", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
            try:
                if not wait_port(port, proc, 15):
                    self.notes.append("microsocks did not listen")
                    return
                self.load("microsocks socks5", ["connrate", "bulk"], f"socks5://127.0.0.1:{port}", proc.pid)
            finally:
                stop(proc)

    def mitmdump(self) -> None:
        exe = self.args.mitmdump or shutil.which("mitmdump")
        if not exe:
            self.notes.append("mitmdump: not installed (pip install mitmproxy, then --mitmdump PATH): skipped")
            return
        port = free_port()
        conf = self.work / "mitmproxy"
        cmd = [exe, "-q", "--listen-host", "127.0.0.1", "-p", str(port), "--set", f"confdir={conf}",
               "--set", f"ssl_verify_upstream_trusted_ca={self.certs / 'origin-ca.pem'}"]
        with open(self.out / "mitmdump.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                ca = conf / "mitmproxy-ca-cert.pem"
                if not wait_port(port, proc, 60) or not ca.exists():
                    self.notes.append("mitmdump did not start")
                    return
                self.load("mitmdump http", ["mitm", "mitm-keepalive"], f"http://127.0.0.1:{port}", proc.pid,
                          str(ca))
            finally:
                stop(proc)

    def floor(self) -> None:
        """bench/floor_relay.py, run by the Python that runs greyproxy: CONNECT only."""
        python = Path(self.args.greyproxy).parent / "python"
        port = free_port()
        with open(self.out / "floor.log", "w") as log:
            proc = subprocess.Popen([str(python if python.exists() else sys.executable), str(HERE / "floor_relay.py"),
                                     str(port)], stdout=log, stderr=subprocess.STDOUT)
            try:
                if not wait_port(port, proc, 15):
                    self.notes.append("floor_relay did not listen")
                    return
                self.load("floor http", ["connrate"], f"http://127.0.0.1:{port}", proc.pid)
            finally:
                stop(proc)

    def _installed(self, name: str, given: str | None) -> str | None:
        exe = given or shutil.which(name)
        if not exe and self.args.install and os.geteuid() == 0 and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "-q", name], env=env, capture_output=True, timeout=300)
            exe = shutil.which(name)
        if not exe:
            self.notes.append(f"{name}: not installed (apt-get install {name}, or --install as root): skipped")
        return exe

    # ------------------------------------------------------------ the table

    def pick(self, label: str, scenario: str) -> dict[str, Any] | None:
        runs = [x for x in self.lines if x.get("label") == label and x.get("scenario") == scenario]
        med = [x for x in runs if x.get("run") == "median"]
        return (med or runs or [None])[-1]

    def table(self) -> list[str]:
        rows = [
            ("CONNECT conn/s", "connrate", "greyproxy http", "tinyproxy http", "rate_per_s"),
            ("CONNECT conn/s, gevent floor", "connrate", "greyproxy http", "floor http", "rate_per_s"),
            ("SOCKS5 conn/s", "connrate", "greyproxy socks5", "microsocks socks5", "rate_per_s"),
            ("plain absolute-URI req/s", "plainhttp", "greyproxy http", "tinyproxy http", "rate_per_s"),
            ("bulk CONNECT MB/s", "bulk", "greyproxy http", "tinyproxy http", "mb_s"),
            ("bulk SOCKS5 MB/s", "bulk", "greyproxy socks5", "microsocks socks5", "mb_s"),
            ("MITM keep-alive req/s", "mitm-keepalive", "greyproxy http", "mitmdump http", "rate_per_s"),
            ("MITM new connection req/s", "mitm", "greyproxy http", "mitmdump http", "rate_per_s"),
        ]
        out = ["| measure | direct | greyproxy | peer | greyproxy ÷ peer | greyproxy ÷ direct "
               "| greyproxy CPU µs/op | peer CPU µs/op | CPU ratio | errors (gp / peer) |",
               "|---|--:|--:|---|--:|--:|--:|--:|--:|---|"]
        for title, scenario, gp_label, peer_label, key in rows:
            d, g, p = (self.pick(x, scenario) for x in ("direct", gp_label, peer_label))
            dv, gv, pv = (_get(x, key) for x in (d, g, p))
            # bulk has no "op": its CPU columns are the proxy's CPU % of one core while it ran
            cpu_key, unit = ("proxy_cpu_pct", " %") if key == "mb_s" else ("proxy_cpu_us_per_op", "")
            gc, pc = _get(g, cpu_key), _get(p, cpu_key)
            out.append(f"| {title} | {_fmt(dv)} | {_fmt(gv)} | {peer_label.split()[0]} {_fmt(pv)} "
                       f"| {_ratio(gv, pv)} | {_ratio(gv, dv)} | {_fmt(gc, unit)} | {_fmt(pc, unit)} | {_ratio(gc, pc)} "
                       f"| {_errors(g)} / {_errors(p)} |")
        return out


def _get(line: dict[str, Any] | None, key: str) -> float | None:
    v = (line or {}).get(key)
    return v if isinstance(v, (int, float)) else None


def _fmt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:,.0f}{unit}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}"


def _errors(line: dict[str, Any] | None) -> str:
    if line is None:
        return "—"
    if "error" in line:
        return f"FAIL ({line['error']})"
    kinds = line.get("error_kinds") or {}
    return str(line.get("errors", 0)) + (f" {kinds}" if kinds else "")


def main(argv: list[str] | None = None) -> int:
    venv_bin = Path(sys.executable).parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--bulk-bytes", default="256M")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--greyproxy", default=os.environ.get("GREYPROXY") or str(venv_bin / "greyproxy"))
    # serve's default is one worker per core; the table has always been one process against the peers
    ap.add_argument("--gp-workers", default="1", help="greyproxy's data-path processes (serve --workers)")
    ap.add_argument("--gp-arg", action="append", default=[], help="an extra `greyproxy serve` argument")
    ap.add_argument("--tinyproxy", default=os.environ.get("TINYPROXY"))
    ap.add_argument("--microsocks", default=os.environ.get("MICROSOCKS"))
    ap.add_argument("--mitmdump", default=os.environ.get("MITMDUMP"))
    ap.add_argument("--skip", default="", help="comma list of direct, greyproxy, tinyproxy, microsocks, mitmdump, floor")
    ap.add_argument("--install", action="store_true", help="apt-get install missing Debian peers (root only)")
    ap.add_argument("--results", help="folder for the raw JSON lines")
    args = ap.parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.results or f"/tmp/greyproxy-peers/{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    with tempfile.TemporaryDirectory(prefix="greyproxy-peers-") as tmp:
        bench = Bench(args, Path(tmp), out, free_run(4))
        if "direct" not in skip:
            bench.load("direct", ["connrate", "plainhttp", "bulk", "mitm", "mitm-keepalive"], None, None)
        for name in ("greyproxy", "tinyproxy", "microsocks", "mitmdump", "floor"):
            if name not in skip:
                getattr(bench, name)()
    head = (f"## greyproxy and its peers ({stamp}; {os.cpu_count()} CPUs shared by client, origins and proxy; "
            f"{args.workers} workers in {args.procs} processes; greyproxy --workers {args.gp_workers}; "
            f"{'medians of ' + str(args.repeat) + ' × ' if args.repeat > 1 else ''}{args.duration:g} s windows)")
    print_table(out, head, bench.table(), bench.notes)
    return 0


def print_table(out: Path, head: str, table: list[str], notes: list[str]) -> None:
    """The table with its heading and notes, printed and kept as out/table.md."""
    lines = [head, "", *table]
    if notes:
        lines += ["", *(f"* {n}" for n in notes)]
    lines += ["", f"raw JSON lines: {out}"]
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
