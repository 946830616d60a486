#!/usr/bin/env python3
"""How connections per second scale with `greyproxy serve --workers 2` (docs/workers.md).

On a machine with few cores the load generator and the origins need CPU too, so "1 worker vs 2
workers, everything unpinned" cannot show what a second *free* core gives. This benchmark pins
the client side (bench/proxyload.py: its client processes and its origins) to one core (--client-cpu,
default 0) and runs each proxy set-up against it:

  gp-w1-pin   greyproxy --workers 1, the whole process pinned to --proxy-cpu (default 1)
  gp-w2-pin   greyproxy --workers 2, control plane and both workers pinned to that same one core:
              the same CPU as gp-w1-pin, so any loss is the cost of splitting into processes
  gp-w1-free  greyproxy --workers 1, unpinned (it may use the client's core too)
  gp-w2-free  greyproxy --workers 2, unpinned
  gp-w2-split greyproxy --workers 2, worker 1 on the proxy core, worker 2 on the client's core
  tiny-pin    tinyproxy pinned to the proxy core;  tiny-free  tinyproxy unpinned (it has threads)

For every measured window it reads the CPU time (utime + stime, all threads) of the control
plane and of each worker, and samples which worker holds the open proxy connections (socket
inodes of /proc/PID/fd against /proc/net/tcp). From that it reports the CPU per connection of each
process and a projection: with 2 cores free for greyproxy, the capacity is bounded by the busiest
worker (1 core ÷ its CPU per connection of the total) and by the total CPU (2 cores ÷ CPU per
connection); projected scaling = that capacity ÷ the 1-worker capacity (1 core ÷ its CPU per
connection). The measured conn/s ratios are printed beside it, labelled as such.

    .venv/bin/python bench/workers_bench.py                          # medians of 3 × 5 s, ~6 min
    .venv/bin/python bench/workers_bench.py --duration 2 --repeat 1 --setups gp-w1-pin,gp-w2-pin

It reuses bench/peers.py (greyproxy with a fresh data dir and a rule for the origins, tinyproxy)
and bench/proxyload.py (origins, client loop, CPU accounting). Raw JSON lines go to --results
(default /tmp/greyproxy-workers/<UTC stamp>/). Every child has a deadline; --budget bounds the run.
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
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gp_api  # noqa: E402 - the stdlib API client next to this file
import peers  # noqa: E402 - greyproxy / tinyproxy start-up and stop
import proxyload  # noqa: E402 - origins, client loop, CPU accounting

# label: (proxy, greyproxy workers, pinning)
SETUPS: dict[str, tuple[str, int, str]] = {
    "gp-w1-pin": ("greyproxy", 1, "pin"),
    "gp-w2-pin": ("greyproxy", 2, "pin"),
    "gp-w1-free": ("greyproxy", 1, "free"),
    "gp-w2-free": ("greyproxy", 2, "free"),
    "gp-w2-split": ("greyproxy", 2, "split"),
    "tiny-pin": ("tinyproxy", 0, "pin"),
    "tiny-free": ("tinyproxy", 0, "free"),
}
DEFAULT_SETUPS = "gp-w1-pin,gp-w2-pin,gp-w1-free,gp-w2-free,tiny-pin,tiny-free"
# what each set-up's ratios are taken against: the same proxy with one process (one core), pinned the same way
BASELINE = {"gp-w1-pin": "gp-w1-pin", "gp-w2-pin": "gp-w1-pin", "gp-w1-free": "gp-w1-pin",
            "gp-w2-free": "gp-w1-free", "gp-w2-split": "gp-w1-pin", "tiny-pin": "tiny-pin", "tiny-free": "tiny-pin"}


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (sched_setaffinity on a pid moves only that one thread);
    threads started later inherit the mask of the thread that starts them."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, OSError):
            pass


def worker_pids(hs: dict) -> list[int]:
    status, body = gp_api.request(hs, "GET", "/api/health", timeout=10)
    if status != 200:
        return []
    return [int(w["pid"]) for w in json.loads(body).get("workers") or [] if w.get("alive", True)]


def worker_channels(hs: dict) -> dict[int, dict]:
    """Messages each worker exchanged with the control plane so far: they should not grow per connection."""
    try:
        status, body = gp_api.request(hs, "GET", "/api/health", timeout=10)
        return {int(w["pid"]): {"sent": w.get("sent"), "received": w.get("received")}
                for w in json.loads(body).get("workers") or []} if status == 200 else {}
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------ the load (a child pinned to the client core)


class Spread:
    """Samples, every `every` s, how many file descriptors each worker holds open above its idle count.

    A tunnel is two sockets (client and origin side), so the excess is twice the connections the
    worker is serving at that instant. Counting descriptors is cheap; matching them against
    /proc/net/tcp is not (it lists every TIME_WAIT socket of a busy loopback: tens of thousands
    of rows, parsed on the client's core)."""

    def __init__(self, idle: dict[int, int], every: float = 0.05) -> None:
        self.idle, self.every = idle, every
        self.counts = {p: 0 for p in idle}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.counts

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for pid, idle in self.idle.items():
                self.counts[pid] += max(0, fd_count(pid) - idle)
            self.samples += 1


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def load_child(spec: dict) -> int:
    """Runs proxyload's rate scenarios in this process; adds per-process CPU and the spread to each line."""
    import multiprocessing as mp

    mp.set_start_method("fork")
    a = argparse.Namespace(origin_base_port=spec["base"], bulk_bytes=1 << 20, workers=spec["clients"],
                           procs=spec["procs"], duration=spec["duration"], warmup=spec["warmup"],
                           proxy_pid=spec["pid"], cafile=None, certdir=None, tls_host=proxyload.ORIGIN)
    origin, ports = proxyload.start_origins(a, None)
    watched = [spec["pid"], *spec["workers"]]
    real_cpu_seconds = proxyload.cpu_seconds
    marks: list[dict[int, float]] = []
    spread: list[Spread] = []

    def cpu_seconds(pids: list[int]) -> float:
        # run_rate reads the proxy's CPU exactly at the start and at the end of its measured
        # window: a snapshot per process is taken at those same two instants
        if pids != [origin.pid]:
            marks.append({p: real_cpu_seconds([p]) for p in watched})
            if spec["idle_fds"]:
                if len(marks) % 2 == 1:
                    spread.append(Spread({int(p): n for p, n in spec["idle_fds"].items()}))
                    spread[-1].start()
                else:
                    spread[-1].stop()
        return real_cpu_seconds(pids)

    proxyload.cpu_seconds = cpu_seconds
    proxy = proxyload.parse_proxy(spec["proxy"])
    try:
        for scenario in spec["scenarios"]:
            for i in range(spec["repeat"]):
                marks.clear()
                line = proxyload.run_rate(a, scenario, proxy, ports, origin.pid)
                if len(marks) >= 2:
                    line["cpu_s_by_pid"] = {str(p): round(marks[1][p] - marks[0][p], 4) for p in watched}
                if spread and spread[-1].samples:
                    line["open_conns_by_pid"] = {str(p): n for p, n in spread[-1].counts.items()}
                    line["spread_samples"] = spread[-1].samples
                spread.clear()
                proxyload.emit({**line, "run": i + 1})
    finally:
        origin.kill()
        origin.join(timeout=2)
    return 0


# ------------------------------------------------------------------ the set-ups


class WorkersBench(peers.Bench):
    """peers.Bench starts and stops each proxy and calls load(); load() here pins and measures."""

    setup = ""
    round = 0

    def run_setup(self, name: str) -> None:
        kind, workers, _mode = SETUPS[name]
        self.setup = name
        if kind == "greyproxy":
            self.args.gp_workers = str(workers)
            self.greyproxy()
        else:
            self.tinyproxy()

    def load(self, label: str, scenarios: list[str], proxy: str | None, pid: int | None,
             cafile: str | None = None) -> None:
        a = self.args
        kind, n_workers, mode = SETUPS[self.setup]
        wanted = [s for s in a.scenarios if (s == "connrate" and ("connrate" in scenarios))
                  or (s == "plainhttp" and "plainhttp" in scenarios)]
        if not wanted or not pid or proxy is None:
            return
        if label.endswith("socks5") and not a.socks5:
            return
        workers: list[int] = []
        hs = None
        if kind == "greyproxy":
            hs = gp_api.load_handshake(str(self.work / "greyproxy"))
            workers = worker_pids(hs)
            if len(workers) != n_workers and n_workers > 1:
                self.notes.append(f"{self.setup}: {len(workers)} workers listed by /api/health, {n_workers} asked")
        allc = set(range(os.cpu_count() or 1))
        where: dict[str, str] = {}
        for p in [pid, *workers]:
            pin(p, allc)  # undo a previous scenario's pinning
        if mode == "pin":
            for p in [pid, *workers]:
                pin(p, {a.proxy_cpu})
            where = {"proxy": f"cpu {a.proxy_cpu} (all processes)"}
        elif mode == "split":
            pin(pid, {a.proxy_cpu})
            for i, w in enumerate(workers):
                pin(w, {a.proxy_cpu} if i % 2 == 0 else {a.client_cpu})
            where = {"proxy": f"control plane and worker 1 on cpu {a.proxy_cpu}, worker 2 on cpu {a.client_cpu}"}
        else:
            where = {"proxy": "unpinned"}
        spec = {"base": self.base, "clients": a.clients, "procs": a.procs, "duration": a.duration,
                "warmup": a.warmup, "repeat": 1, "pid": pid, "workers": workers,
                "idle_fds": {w: fd_count(w) for w in workers}, "proxy": proxy, "scenarios": wanted}
        limit = len(wanted) * (a.duration + a.warmup + 25) + 30
        if self.left() < 30:
            self.notes.append(f"{self.setup} {label}: not run, the budget is spent")
            return
        limit = min(limit, self.left() - 10)
        ch0 = worker_channels(hs) if hs else {}
        cmd = ["taskset", "-c", str(a.client_cpu), sys.executable, __file__, "--load-child", json.dumps(spec)]
        print(f"# {self.setup} {label}: {', '.join(wanted)} ({where['proxy']}; client on cpu {a.client_cpu})",
              file=sys.stderr, flush=True)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            stdout, stderr = res.stdout, res.stderr
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr = f"killed after {limit:.0f} s"
        ch1 = worker_channels(hs) if hs else {}
        name = f"{self.setup}-{label.split()[-1]}-r{self.round}"
        if stderr.strip():
            (self.out / f"{name}.err").write_text(stderr)
        runs = []
        for raw in stdout.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            line.update(setup=self.setup, round=self.round, label=label, proxy_pid=pid, worker_pids=workers, pinning=where["proxy"],
                        client_cpu=a.client_cpu)
            runs.append(line)
        if ch0 and ch1:  # over all the runs of this label
            for r in runs:
                r["channel_msgs"] = {str(p): {k: (ch1[p][k] or 0) - (ch0[p][k] or 0) for k in ("sent", "received")}
                                     for p in ch1 if p in ch0}
        with open(self.out / "runs.jsonl", "a") as f:
            for r in runs:
                f.write(json.dumps(r) + "\n")
        self.lines.extend(runs)
        if not runs:
            self.notes.append(f"{self.setup} {label}: no result ({stderr.strip()[-200:]})")


# ------------------------------------------------------------------ the figures


def derive(run: dict) -> dict[str, Any]:
    """CPU µs per connection of the control plane and of each worker, and the 2-core projection."""
    ok = run.get("ok") or 0
    by = run.get("cpu_s_by_pid") or {}
    if not sum(by.values()):  # a window too short for one 10 ms CPU tick: nothing to divide by
        by = {}
    pid, workers = str(run["proxy_pid"]), [str(w) for w in run.get("worker_pids") or []]
    out: dict[str, Any] = {"rate": run.get("rate_per_s"), "errors": run.get("errors", 0)}
    if not ok or not by:
        return out
    total = sum(by.values())
    out["total_us"] = 1e6 * total / ok
    out["cp_us"] = 1e6 * by.get(pid, 0.0) / ok
    out["cp_cpu_pct"] = 100 * by.get(pid, 0.0) / run["duration_s"]
    if workers:
        w_cpu = [by.get(w, 0.0) for w in workers]
        out["worker_us"] = [1e6 * c / ok for c in w_cpu]  # of the total connections
        out["cpu_share"] = [c / sum(w_cpu) if sum(w_cpu) else None for c in w_cpu]
        opened = run.get("open_conns_by_pid") or {}
        n = sum(opened.get(w, 0) for w in workers)
        out["conn_share"] = [opened.get(w, 0) / n if n else None for w in workers]
        # a worker's CPU per connection it served, taking its share of the sampled open connections
        # as its share of the connections (they all last about as long)
        out["us_per_own_conn"] = [1e6 * c / (ok * s) if s else None for c, s in zip(w_cpu, out["conn_share"], strict=True)]
        # capacity if each worker had a core of its own: the busiest worker saturates first, and the
        # whole thing cannot exceed 2 cores of CPU (the control plane's included)
        out["workers_us"] = 1e6 * sum(w_cpu) / ok  # exact, comparable with the 1-worker figure
        busiest = max(w_cpu)
        out["capacity_2"] = min(ok / busiest if busiest else float("inf"), 2 * ok / total)
    out["capacity_1"] = ok / total  # connections per CPU-second: one saturated core
    return out


def med(vals: list[float | None]) -> float | None:
    v = [x for x in vals if isinstance(x, (int, float))]
    return statistics.median(v) if v else None


def summarize(lines: list[dict], setups: list[str], scenarios: list[str]) -> tuple[list[str], list[dict]]:
    summary: list[dict[str, Any]] = []
    for scenario in scenarios:
        for proto in ("http", "socks5"):
            for setup in setups:
                runs = [r for r in lines if r.get("setup") == setup and r.get("scenario") == scenario
                        and r.get("label", "").endswith(proto) and isinstance(r.get("run"), int)]
                if not runs:
                    continue
                d = [derive(r) for r in runs]
                s: dict[str, Any] = {"setup": setup, "scenario": scenario, "proto": proto, "runs": len(runs),
                                     "pinning": runs[0].get("pinning"),
                                     "rate": med([x["rate"] for x in d]), "total_us": med([x.get("total_us") for x in d]),
                                     "cp_us": med([x.get("cp_us") for x in d]),
                                     "workers_us": med([x.get("workers_us") for x in d]),
                                     "cp_cpu_pct": med([x.get("cp_cpu_pct") for x in d]),
                                     "capacity_1": med([x.get("capacity_1") for x in d]),
                                     "capacity_2": med([x.get("capacity_2") for x in d]),
                                     "client_cpu_pct": med([r.get("client_cpu_pct") for r in runs]),
                                     "origin_cpu_pct": med([r.get("origin_cpu_pct") for r in runs]),
                                     "proxy_cpu_pct": med([r.get("proxy_cpu_pct") for r in runs]),
                                     "errors": sum(x["errors"] or 0 for x in d),
                                     "channel_msgs": runs[-1].get("channel_msgs")}
                if any("worker_us" in x for x in d):
                    k = max(len(x.get("worker_us", [])) for x in d)
                    for key in ("worker_us", "cpu_share", "conn_share", "us_per_own_conn"):
                        s[key] = [med([x[key][i] for x in d if key in x and len(x[key]) > i]) for i in range(k)]
                summary.append(s)
    # the table: one row per set-up and protocol; ratios against its BASELINE of the same protocol
    out = ["| set-up | pinning (client + origins on the client core) | conn/s | measured ÷ baseline "
           "| proxy CPU % | CPU µs/conn (all processes) | control plane µs/conn (CPU %) "
           "| workers µs/conn | spread over workers (CPU / open conns) | projected conn/s, 2 free cores "
           "| projected ÷ 1 worker | client CPU % | errors |",
           "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"]
    for s in summary:
        base = next((b for b in summary if b["setup"] == BASELINE[s["setup"]] and b["scenario"] == s["scenario"]
                     and b["proto"] == s["proto"]), None)
        ratio = "—"
        if base and base["rate"] and s["rate"] and base is not s:
            ratio = f"{s['rate'] / base['rate']:.2f} (÷ {base['setup']})"
        proj, proj_ratio = "—", "—"
        if s.get("capacity_2") and base and base.get("capacity_1"):
            proj = f"{s['capacity_2']:,.0f}"
            proj_ratio = f"**{s['capacity_2'] / base['capacity_1']:.2f}** (÷ {base['setup']})"
        elif s["setup"].startswith("gp-w1") and s.get("capacity_1"):
            proj = f"{s['capacity_1']:,.0f} (1 core)"
        cp = "—" if s["cp_us"] is None or not s.get("worker_us") else f"{s['cp_us']:.0f} ({s['cp_cpu_pct']:.1f} %)"
        # the sum of the workers' CPU over all connections (the per-worker estimate, which leans on
        # the sampled open connections, is in summary.jsonl as us_per_own_conn)
        own = _f(s["workers_us"] if s.get("worker_us") else s["total_us"])
        spread = "—"
        if s.get("cpu_share"):
            spread = " · ".join(f"{_pct(c)} / {_pct(o)}" for c, o in zip(s["cpu_share"], s["conn_share"], strict=True))
        out.append(f"| {s['setup']} {s['scenario']} {s['proto']} | {s['pinning']} | {_f(s['rate'])} | {ratio} "
                   f"| {_f(s['proxy_cpu_pct'])} | {_f(s['total_us'])} | {cp} | {own} | {spread} | {proj} "
                   f"| {proj_ratio} | {_f(s['client_cpu_pct'])} | {s['errors']} |")
    return out, summary


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f} %"


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--load-child":
        return load_child(json.loads(sys.argv[2]))
    venv_bin = Path(sys.executable).parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds over all the set-ups (one window each, a fresh proxy); the table shows medians")
    ap.add_argument("--clients", type=int, default=16, help="concurrent client connections (greenlets)")
    ap.add_argument("--procs", type=int, default=1, help="client processes (all on the client core)")
    ap.add_argument("--scenarios", default="connrate", help="comma list of connrate, plainhttp")
    ap.add_argument("--socks5", action=argparse.BooleanOptionalAction, default=True,
                    help="also greyproxy's SOCKS5 connrate")
    ap.add_argument("--setups", default=DEFAULT_SETUPS, help=f"comma list of {', '.join(SETUPS)}")
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--greyproxy", default=os.environ.get("GREYPROXY") or str(venv_bin / "greyproxy"))
    ap.add_argument("--gp-arg", action="append", default=[], help="an extra `greyproxy serve` argument")
    ap.add_argument("--tinyproxy", default=os.environ.get("TINYPROXY"))
    ap.add_argument("--results", help="folder for the raw JSON lines")
    ap.add_argument("--table-from", metavar="DIR", help="print the table of an earlier run's runs.jsonl, run nothing")
    args = ap.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    bad = [s for s in setups if s not in SETUPS] + [s for s in args.scenarios if s not in ("connrate", "plainhttp")]
    if bad:
        ap.error(f"unknown set-up or scenario: {bad}")
    ncpu = os.cpu_count() or 1
    if not ({args.client_cpu, args.proxy_cpu} <= set(range(ncpu))) or args.client_cpu == args.proxy_cpu:
        ap.error(f"--client-cpu and --proxy-cpu must be two different CPUs among 0..{ncpu - 1}")
    # what peers.Bench reads and this benchmark does not use
    args.install, args.microsocks, args.mitmdump = False, None, None
    args.workers, args.bulk_bytes, args.gp_workers = args.clients, "1M", "1"
    if args.table_from:
        lines = [json.loads(x) for x in (Path(args.table_from) / "runs.jsonl").read_text().splitlines() if x.strip()]
        print("\n".join(summarize(lines, setups, args.scenarios)[0]))
        return 0
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.results or f"/tmp/greyproxy-workers/{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="greyproxy-workers-") as tmp:
        bench = WorkersBench(args, Path(tmp), out, peers.free_run(4))
        # round after round over the set-ups rather than all of one set-up then the next: what else
        # runs on the box drifts by the minute, and the set-ups compared should see the same drift
        for bench.round in range(1, args.repeat + 1):
            for name in setups:
                if bench.left() < 40:
                    bench.notes.append(f"{name} round {bench.round}: not run, the budget is spent")
                    continue
                bench.run_setup(name)
    table, summary = summarize(bench.lines, setups, args.scenarios)
    with open(out / "summary.jsonl", "w") as f:
        for s in summary:
            f.write(json.dumps(s) + "\n")
    load = os.getloadavg()
    head = (f"## greyproxy --workers: connections per second over cores ({stamp}; {ncpu} CPUs; "
            f"client and origins pinned to cpu {args.client_cpu}, {args.clients} connections in {args.procs} "
            f"process(es); {'medians of ' + str(args.repeat) + ' × ' if args.repeat > 1 else ''}"
            f"{args.duration:g} s windows; load average at the end {load[0]:.1f})")
    peers.print_table(out, head, table, bench.notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
