#!/usr/bin/env python3
"""Intercepted HTTPS through greyproxy beside mitmproxy's mitmdump, in one go, as one table.

Both proxies run at the same time in front of the same local HTTPS origin (bench/proxyload.py's
`tls` origin, with its own throw-away CA that both proxies trust upstream); each client trusts
the CA of the proxy it goes through. Every round measures, through each proxy in turn (the order
alternates between rounds, so the box's load falls alike on both):

- keep-alive: proxyload `mitm-keepalive`, one tunnel and TLS session per worker, GETs back to back;
- new connection: proxyload `mitm`, CONNECT + TLS handshake + one GET + close per request.

It prints medians over the rounds: req/s, greyproxy ÷ mitmdump, and each proxy's CPU µs per request.

    .venv/bin/python bench/mitm_vs_mitmdump.py                     # 3 rounds × 3 s windows, ~1.5 min
    .venv/bin/python bench/mitm_vs_mitmdump.py --rounds 1 --duration 2
    .venv/bin/python bench/mitm_vs_mitmdump.py --compare before=/tmp/old/bin/greyproxy  # two builds, same rounds

mitmdump is not a dependency of greyproxy: by default the script installs PyPI's mitmproxy into
its own venv (--mitmvenv, default /tmp/greyproxy-mitmvenv) on first use, or takes --mitmdump PATH
(or MITMDUMP=PATH). --no-install skips mitmdump when it is missing. Raw JSON lines go to
--results (default /tmp/greyproxy-mitm/<UTC stamp>/). Every child has a deadline; --budget
bounds the measuring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gp_api  # noqa: E402 - the stdlib API client next to this file
import peers  # noqa: E402 - proxyload runs, ports and process helpers shared with the peers table

SCENARIOS = (("keep-alive", "mitm-keepalive"), ("new connection", "mitm"))
TARGETS = {"mitm-keepalive": 3.0, "mitm": 2.0}  # issue 19: greyproxy ÷ mitmdump at least this


def mitmdump_path(args: argparse.Namespace) -> str | None:
    """--mitmdump, or the one in --mitmvenv, installed there from PyPI unless --no-install."""
    if args.mitmdump:
        return args.mitmdump
    venv = Path(args.mitmvenv)
    exe = venv / "bin" / "mitmdump"
    if exe.exists() or args.no_install:
        return str(exe) if exe.exists() else None
    print(f"# installing mitmproxy into {venv} (once)", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "mitmproxy"], check=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"# mitmproxy install failed: {exc}", file=sys.stderr)
        return None
    return str(exe) if exe.exists() else None


def start_greyproxy(args: argparse.Namespace, exe: str, work: Path, certs: Path, base: int, log: Any) -> tuple:
    data = work / "greyproxy"
    cfg = work / "greyproxy.yml"
    work.mkdir(parents=True, exist_ok=True)
    # warning level: no line per connection; the rate limit is for agents, not a load generator;
    # the origin's CA trusted for the upstream side of interception.
    cfg.write_text(f"log: {{level: warning}}\nlimits: {{requests_per_second: 0}}\n"
                   f"mitm: {{extra_ca_bundle: {certs / 'origin-ca.pem'}}}\n")
    subprocess.run([exe, "cert", "generate", "--data-dir", str(data)], capture_output=True, timeout=60)
    cmd = [exe, "serve", "-C", str(cfg), "--data-dir", str(data), "--listen-http", "127.0.0.1:0",
           "--listen-socks5", "127.0.0.1:0", "--listen-dns", "127.0.0.1:0", "--listen-api", "127.0.0.1:0",
           *args.gp_arg]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            hs = gp_api.load_handshake(str(data))
            if gp_api.request(hs, "GET", "/api/health", timeout=5)[0] == 200:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    else:
        return proc, None, None
    # one rule: the benchmark identity may reach the origins without a human (still decided,
    # logged and checked on every request)
    rule = {"container_pattern": peers.USER, "destination_pattern": "127.0.0.1",
            "port_pattern": f"{base}-{base + 3}", "action": "allow"}
    status, body = gp_api.request(hs, "POST", "/api/rules", json.dumps(rule).encode(), timeout=30)
    if status >= 300:
        raise SystemExit(f"greyproxy rule not created: {status} {body[:200]!r}")
    return proc, f"http://{peers.USER}:x@127.0.0.1:{hs['ports']['http']}", str(data / "ca-cert.pem")


def start_mitmdump(exe: str, work: Path, certs: Path, log: Any) -> tuple:
    port = peers.free_port()
    conf = work / "mitmproxy"
    cmd = [exe, "-q", "--listen-host", "127.0.0.1", "-p", str(port), "--set", f"confdir={conf}",
           "--set", f"ssl_verify_upstream_trusted_ca={certs / 'origin-ca.pem'}"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    ca = conf / "mitmproxy-ca-cert.pem"
    if not peers.wait_port(port, proc, 60) or not ca.exists():
        return proc, None, None
    return proc, f"http://127.0.0.1:{port}", str(ca)


def median(lines: list[dict[str, Any]], key: str) -> float | None:
    vals = [x[key] for x in lines if isinstance(x.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def table(bench: peers.Bench, rounds: int, builds: list[str]) -> list[str]:
    out = ["| measure | greyproxy build | greyproxy req/s | mitmdump req/s | greyproxy ÷ mitmdump | target "
           "| greyproxy CPU µs/req | mitmdump CPU µs/req | CPU ratio | errors (gp / mitmdump) | intercepted |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for title, scenario in SCENARIOS:
        for build in builds:
            pair = (build, "mitmdump")
            runs = {who: [x for x in bench.lines if x.get("label") == who and x.get("scenario") == scenario]
                    for who in pair}
            g, m = (median(runs[w], "rate_per_s") for w in pair)
            gc, mc = (median(runs[w], "proxy_cpu_us_per_op") for w in pair)
            errs = " / ".join(str(sum(x.get("errors", 0) for x in runs[w])) + ("" if len(runs[w]) == rounds else
                              f" ({len(runs[w])} of {rounds} rounds)") for w in pair)
            seen = " / ".join("yes" if runs[w] and all(x.get("intercepted") for x in runs[w]) else "NO"
                              for w in pair)
            out.append(f"| MITM {title} | {build} | {peers._fmt(g)} | {peers._fmt(m)} | {peers._ratio(g, m)} "
                       f"| ≥ {TARGETS[scenario]:g} | {peers._fmt(gc)} | {peers._fmt(mc)} | {peers._ratio(gc, mc)} "
                       f"| {errs} | {seen} |")
    return out


def main(argv: list[str] | None = None) -> int:
    venv_bin = Path(sys.executable).parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds of each window")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the measuring")
    ap.add_argument("--greyproxy", default=os.environ.get("GREYPROXY") or str(venv_bin / "greyproxy"))
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH",
                    help="another greyproxy build measured in the same rounds (e.g. before=/tmp/old/bin/greyproxy)")
    ap.add_argument("--gp-arg", action="append", default=[], help="an extra `greyproxy serve` argument")
    ap.add_argument("--mitmdump", default=os.environ.get("MITMDUMP"))
    ap.add_argument("--mitmvenv", default="/tmp/greyproxy-mitmvenv", help="where mitmproxy is installed if missing")
    ap.add_argument("--no-install", action="store_true", help="never pip-install mitmproxy")
    ap.add_argument("--results", help="folder for the raw JSON lines")
    args = ap.parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.results or f"/tmp/greyproxy-mitm/{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    exe = mitmdump_path(args)
    builds = [("greyproxy", args.greyproxy)]
    for item in args.compare:
        label, _, path = item.partition("=")
        if not label or not path or label in ("greyproxy", "mitmdump"):
            ap.error(f"--compare {item!r}: LABEL=PATH, LABEL not greyproxy or mitmdump")
        builds.append((label, path))
    # peers.Bench.load reads these: one window per call, the rounds are ours
    load_args = SimpleNamespace(repeat=1, duration=args.duration, warmup=args.warmup, workers=args.workers,
                                procs=args.procs, bulk_bytes="1M", budget=args.budget)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="greyproxy-mitm-") as tmp, \
            open(out / "greyproxy.log", "w") as gp_log, open(out / "mitmdump.log", "w") as mitm_log:
        work = Path(tmp)
        base = peers.free_run(4)
        bench = peers.Bench(load_args, work, out, base)  # type: ignore[arg-type]
        try:
            proxies: list[tuple[str, str, int, str]] = []
            for label, path in builds:
                proc, url, ca = start_greyproxy(args, path, work / label, bench.certs, base, gp_log)
                procs.append(proc)
                if url is None:
                    raise SystemExit(f"greyproxy {label} did not start (see {out / 'greyproxy.log'})")
                proxies.append((label, url, proc.pid, ca))
            if exe:
                proc, url, ca = start_mitmdump(exe, work, bench.certs, mitm_log)
                procs.append(proc)
                if url is None:
                    bench.notes.append(f"mitmdump did not start (see {out / 'mitmdump.log'})")
                else:
                    proxies.append(("mitmdump", url, proc.pid, ca))
            else:
                bench.notes.append("mitmdump: not installed (drop --no-install, or --mitmdump PATH): skipped")
            for r in range(args.rounds):
                for label, url, pid, ca in (proxies if r % 2 == 0 else proxies[::-1]):  # alternate the order
                    bench.load(label, [s for _, s in SCENARIOS], url, pid, ca)
                    raw = out / f"{label}.jsonl"  # Bench.load writes one file per label: keep each round's
                    if raw.exists():
                        raw.rename(out / f"{label}-round{r + 1}.jsonl")
        finally:
            for proc in procs:
                peers.stop(proc)
    head = (f"## intercepted HTTPS: greyproxy vs mitmdump ({stamp}; {os.cpu_count()} CPUs shared by client, "
            f"origin and proxies; {args.workers} workers in {args.procs} processes; medians of {args.rounds} "
            f"× {args.duration:g} s windows)")
    lines = [head, "", *table(bench, args.rounds, [b for b, _ in builds])]
    if bench.notes:
        lines += ["", *(f"* {n}" for n in bench.notes)]
    lines += ["", f"raw JSON lines: {out}"]
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
