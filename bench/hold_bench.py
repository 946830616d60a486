#!/usr/bin/env python3
"""10,000 held connections in one greyproxy process: memory per held connection and how fast an
approval releases them (issue 19).

    .venv/bin/python bench/hold_bench.py                       # 10,000 connections, 100 destinations, 1 run
    .venv/bin/python bench/hold_bench.py --repeat 3            # 3 runs, a fresh proxy each, medians
    .venv/bin/python bench/hold_bench.py --conns 2000 --dests 20 --socks 0.5

Each run starts its own `greyproxy serve` (this interpreter, a fresh data dir, loopback ports) as
one process (`GREYPROXY_WORKERS=1`), with a config that lifts the connection and hold caps above
--conns (docs/configuration.md, `limits:`), `hold_seconds: 900` and `unanswered_seconds: 0`. No
rule allows the destinations, so every connection is held:

* destinations: --dests loopback addresses 127.1.x.y, each with a listening port (a sink process
  accepts and keeps what the proxy dials after a release; a fresh proxy lets 127.0.0.1 itself
  through without a rule), --conns / --dests connections to each, one container
  (`hold-bench`, from the proxy credentials), so one pending row per destination;
* clients: one process, a plain epoll loop (no greenlets: the client must not be the bottleneck):
  a share --socks of the connections go through SOCKS5 (username/password), the rest are HTTP
  CONNECTs with Proxy-Authorization. They are opened in waves of --wave: the next wave once the
  proxy holds the previous ones, so its listen backlog (1,024) never overflows (an overflowed
  backlog loses connections to SYN cookies and retransmissions, not to greyproxy);
* memory: the proxy's VmRSS (and Pss from smaps_rollup) after a warm-up round (100 connections
  held and released, so first-use allocations are not counted) and again once the proxy reports
  every connection held (`/api/metrics` held_connections) and 2 s have passed: (after - before)
  / held = kB per held connection. The proxy's CPU while it only holds them is sampled for 3 s;
* release: the first --each destinations are approved one at a time (POST
  /api/pending/ID/allow, scope exact), each once the previous one's connections are all
  answered, so each approval releases conns/dests connections while the others stay held; the
  remaining destinations are then approved in ONE call (POST /api/pending/bulk-allow). For each
  connection: the client's CLOCK_MONOTONIC when its "200 Connection established" (or SOCKS5
  success) arrived minus the moment the approval request was SENT (so the API's own transaction
  is included), and minus the moment its answer was read (both are printed).

Everything is bounded (--budget seconds per run, every wait has its own limit). Only loopback is
used (127.0.0.0/8). RLIMIT_NOFILE is raised for this process and the proxy it starts (they inherit
it; the hard limit too when allowed): the proxy needs one descriptor per held connection (and two per released one until the client, which
closes each connection once answered, has left), the client and sink one each.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONTAINER = "hold-bench"
CONNECT_OK = b"HTTP/1.1 200"
PAGE = 1000  # GET /api/pending pages


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # root may raise the hard limit too (up to fs.nr_open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, want), hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the sink: the destinations ----------------------------------------------------------------
def dest_ip(i: int) -> str:
    """Destination i's address (a fresh proxy lets 127.0.0.1 through without a rule, not these)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def sink_main(count: int, ports_out: Any, stop: Any) -> None:
    """Listen on `count` loopback addresses; accept and keep everything until told to stop."""
    ep = select.epoll()
    listeners: dict[int, socket.socket] = {}
    for i in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((dest_ip(i), 0))
        s.listen(4096)
        s.setblocking(False)
        listeners[s.fileno()] = s
        ports_out[i] = s.getsockname()[1]
        ep.register(s.fileno(), select.EPOLLIN)
    kept: dict[int, socket.socket] = {}
    while not stop.is_set():
        for fd, _ in ep.poll(0.2):
            if fd in kept:  # the proxy closed its end (the client left): close ours
                ep.unregister(fd)
                kept.pop(fd).close()
                continue
            while True:
                try:
                    conn, _ = listeners[fd].accept()
                except OSError:  # BlockingIOError: nothing more to accept now
                    break
                conn.setblocking(False)
                kept[conn.fileno()] = conn
                ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    for c in kept.values():
        c.close()


# -- the clients ---------------------------------------------------------------------------------
HTTP, SOCKS = 0, 1


def client_main(http_port: int, socks_port: int, targets: list[tuple[int, str, int]], allowed: Any,
                answered: Any, status: Any, opened: Any, close_gen: Any, stop: Any, deadline: float) -> None:
    """Open one connection per target (kind, host, port) and wait for the proxy's answer to each:
    `answered[i]` = CLOCK_MONOTONIC when it arrived, `status[i]` 1 on success, < 0 otherwise.
    Answered connections stay open (live tunnels) until `close_gen` changes: the parent closes
    them between measurements, so a tunnel's teardown is not timed as another's release and the
    proxy's descriptors (two per released tunnel) fit in an RLIMIT_NOFILE of 20,000."""
    ep = select.epoll()
    socks: dict[int, tuple[int, socket.socket]] = {}  # fd -> (index, socket)
    state: dict[int, int] = {}  # fd -> step
    user = CONTAINER.encode()
    auth = "Basic " + base64.b64encode(f"{CONTAINER}:x".encode()).decode()
    pending_connects = 0
    nxt = 0
    kept: list[socket.socket] = []
    gen = close_gen.value

    def fail(fd: int, code: int) -> None:
        i, s = socks.pop(fd)
        status[i] = code
        answered[i] = time.monotonic()
        state.pop(fd, None)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        kept.append(s)

    while time.monotonic() < deadline and not stop.is_set():
        while nxt < min(len(targets), allowed.value):
            kind = targets[nxt][0]
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", http_port if kind == HTTP else socks_port))
            except BlockingIOError:
                pass
            except OSError:
                status[nxt] = -3
                s.close()
                nxt += 1
                continue
            socks[s.fileno()] = (nxt, s)
            state[s.fileno()] = 0
            ep.register(s.fileno(), select.EPOLLOUT)
            pending_connects += 1
            nxt += 1
        opened.value = nxt
        if close_gen.value != gen:
            gen = close_gen.value
            for s in kept:
                s.close()
            kept.clear()
        for fd, ev in ep.poll(0.05):
            if fd not in socks:
                continue
            i, s = socks[fd]
            kind, dhost, dport = targets[i]
            step = state[fd]
            if step == 0:  # connected (or failed)
                pending_connects -= 1
                if ev & (select.EPOLLERR | select.EPOLLHUP):
                    fail(fd, -4)
                    continue
                try:
                    if kind == HTTP:
                        s.send(f"CONNECT {dhost}:{dport} HTTP/1.1\r\nHost: {dhost}:{dport}\r\n"
                               f"Proxy-Authorization: {auth}\r\n\r\n".encode())
                        state[fd] = 9
                    else:
                        s.send(b"\x05\x01\x02")
                        state[fd] = 1
                    ep.modify(fd, select.EPOLLIN)
                except OSError:
                    fail(fd, -4)
                continue
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                fail(fd, -2)
                continue
            if not data:
                fail(fd, -2)
                continue
            if step == 9:  # HTTP: the answer to the CONNECT
                ok = data.startswith(CONNECT_OK)
                answered[i] = time.monotonic()
                status[i] = 1 if ok else -1
            elif step == 1:  # SOCKS5 method chosen
                s.send(bytes((1, len(user))) + user + b"\x01x")
                state[fd] = 2
                continue
            elif step == 2:  # SOCKS5 authenticated
                s.send(b"\x05\x01\x00\x01" + socket.inet_aton(dhost) + struct.pack(">H", dport))
                state[fd] = 3
                continue
            else:  # SOCKS5 reply
                answered[i] = time.monotonic()
                status[i] = 1 if data[:2] == b"\x05\x00" else -1
            ep.unregister(fd)  # answered: kept open, no longer watched
            del socks[fd]
            del state[fd]
            kept.append(s)
        if nxt >= len(targets) and not socks and pending_connects == 0:
            stop.wait(0.2)  # all answered: idle until told to close
    for s in kept:
        s.close()
    for _, s in socks.values():
        s.close()


# -- the proxy -------------------------------------------------------------------------------------
class Proxy:
    def __init__(self, root: Path, conns: int, python: str, source: Path = REPO) -> None:
        self.data = root / "data"
        cfg = root / "greyproxy.yaml"
        cap = conns * 2 + 4096
        cfg.write_text(
            "log: {level: warning}\nhold_seconds: 900\nunanswered_seconds: 0\n"
            f"limits: {{connections_total: {cap}, connections_per_address: {cap}, held_total: {cap}, "
            f"held_per_container: {cap}, requests_per_second: 0}}\n")
        cmd = [python, "-m", "greyproxy", "serve", "-C", str(cfg), "--data-dir", str(self.data)]
        for listener in ("http", "socks5", "dns", "api"):
            cmd += [f"--listen-{listener}", "127.0.0.1:0"]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONPATH"] = str(source)  # this tree's greyproxy, whatever the interpreter has installed
        # ONE process (docs/workers.md: `auto` forks a data-path worker per core); older trees
        # ignore the variable, and the checks below count this pid's descriptors.
        env["GREYPROXY_WORKERS"] = "1"
        self.log_path = root / "greyproxy.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(source))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"greyproxy exited: {self.log_path.read_text()[-2000:]}")
            try:
                info = json.loads((self.data / "api-handshake.json").read_text())
                self.ports, self.token, self.pid = info["ports"], info["token"], info["pid"]
                break
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise RuntimeError("greyproxy did not start within 60 s") from None
                time.sleep(0.05)
        self.wait(lambda: self.api("GET", "/api/health")[0] == 200, 30, "health")

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["api"], timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def held(self) -> int:
        return int(self.api("GET", "/api/metrics")[1]["held_connections"])

    def pending(self) -> list[dict]:
        items: list[dict] = []
        for offset in range(0, 100 * PAGE, PAGE):  # bounded
            _, page = self.api("GET", f"/api/pending?limit={PAGE}&offset={offset}")
            items += page["items"]
            if len(page["items"]) < PAGE:
                break
        return items

    def memory_kb(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
        try:
            for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out["pss_kb"] = int(line.split()[1])
        except OSError:
            pass
        return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait(self, ok: Any, seconds: float, what: str, state: Any = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"greyproxy exited while waiting for {what}: {self.log_path.read_text()[-2000:]}")
            try:
                if ok():
                    return
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {seconds:g} s waiting for {what}" + (f": {state()}" if state else ""))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


# -- one run ---------------------------------------------------------------------------------------
class Clients:
    """The client process with its shared arrays."""

    def __init__(self, proxy: Proxy, targets: list[tuple[int, str, int]], allowed: int, seconds: float) -> None:
        n = len(targets)
        self.answered = mp.RawArray("d", n)
        self.status = mp.RawArray("b", n)
        self.opened = mp.RawValue("i", 0)
        self.close_gen = mp.RawValue("i", 0)
        self.allowed = mp.RawValue("i", allowed)  # how many of the targets may be opened so far
        self.stop = mp.Event()
        self.proc = mp.Process(target=client_main, daemon=True, args=(
            proxy.ports["http"], proxy.ports["socks5"], targets, self.allowed, self.answered, self.status,
            self.opened, self.close_gen, self.stop, time.monotonic() + seconds))
        self.proc.start()

    def state(self) -> str:
        """What the clients saw, for an error message: opened, and connections per status."""
        counts: dict[int, int] = {}
        for i in range(self.opened.value):
            counts[self.status[i]] = counts.get(self.status[i], 0) + 1
        return f"opened {self.opened.value}, by status {counts} (0 waiting, 1 answered, < 0 failed)"

    def done(self, indexes: range | list[int]) -> bool:
        return all(self.status[i] != 0 for i in indexes)

    def close_answered(self, proxy: Proxy, held: int) -> None:
        """Close the answered connections and wait (bounded) until the proxy has let go of
        their tunnels: it is back to its held connections and a few descriptors of its own."""
        self.close_gen.value += 1
        try:
            proxy.wait(lambda: proxy.fds() <= held + 64, 30, "the closed tunnels to end")
        except RuntimeError:
            pass  # measured anyway; the next release then shares the CPU with this teardown

    def close(self) -> None:
        self.stop.set()
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(pct(values, 0.5), 2), "p99_ms": round(pct(values, 0.99), 2),
            "max_ms": round(max(values), 2)}


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    budget_end = time.monotonic() + args.budget
    root = Path(tempfile.mkdtemp(prefix="greyproxy-hold-bench-"))
    stop_sink = mp.Event()
    ports = mp.RawArray("i", args.dests + 1)
    sink = mp.Process(target=sink_main, args=(args.dests + 1, ports, stop_sink), daemon=True)
    sink.start()
    proxy = None
    clients: list[Clients] = []
    try:
        deadline = time.monotonic() + 10
        while ports[args.dests] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        dests = [(dest_ip(i), ports[i]) for i in range(args.dests)]
        warm_host, warm_port = dest_ip(args.dests), ports[args.dests]
        proxy = Proxy(root, args.conns, args.python, args.source)

        # Warm-up: 100 connections held and released on a destination of its own, then closed.
        warm = Clients(proxy, [(HTTP if i % 2 else SOCKS, warm_host, warm_port) for i in range(100)],
                       100, 120)
        clients.append(warm)
        proxy.wait(lambda: proxy.held() >= 100, 60, "the warm-up connections to be held")
        (item,) = [p for p in proxy.pending() if p["destination_host"] == warm_host]
        proxy.api("POST", f"/api/pending/{item['id']}/allow", {"scope": "exact", "duration": "1h"})
        proxy.wait(lambda: warm.done(range(100)), 30, "the warm-up releases")
        warm.close()
        clients.remove(warm)
        time.sleep(2)
        before = proxy.memory_kb()
        fds_before = proxy.fds()

        # Hold --conns connections: destination d gets connections d, d + dests, ...; a share
        # --socks of each destination's connections is SOCKS5.
        targets = []
        for i in range(args.conns):
            d = i % args.dests
            kind = SOCKS if (i // args.dests) < args.socks * (args.conns // args.dests) else HTTP
            targets.append((kind, *dests[d]))
        t_open = time.monotonic()
        main = Clients(proxy, targets, 0, max(10.0, budget_end - time.monotonic()))
        clients.append(main)
        for wave in range(args.wave, args.conns + args.wave, args.wave):
            main.allowed.value = min(wave, args.conns)
            proxy.wait(lambda: proxy.held() >= main.allowed.value, min(120, budget_end - time.monotonic()),
                       f"{main.allowed.value} connections to be held", main.state)
        open_s = time.monotonic() - t_open
        early = sum(1 for i in range(args.conns) if main.status[i] != 0)
        time.sleep(2)
        held = proxy.held()
        after = proxy.memory_kb()
        fds_held = proxy.fds()
        cpu0, w0 = proxy.cpu_seconds(), time.monotonic()
        time.sleep(3)
        idle_cpu_pct = round(100 * (proxy.cpu_seconds() - cpu0) / (time.monotonic() - w0), 1)

        # Release: one destination at a time, then the rest in one bulk call.
        by_host = {p["destination_host"]: p for p in proxy.pending() if p["container_name"] == CONTAINER}
        missing = [h for h, _ in dests if h not in by_host]
        if missing:
            raise RuntimeError(f"{len(missing)} destinations have no pending row")
        dest_hosts = [h for h, _ in dests]
        members: dict[str, list[int]] = {h: [] for h in dest_hosts}
        for i, t in enumerate(targets):
            members[t[1]].append(i)
        sent: dict[str, float] = {}
        returned: dict[str, float] = {}
        each = dest_hosts[: args.each]
        released = 0
        for port in each:
            t0 = time.monotonic()
            status, body = proxy.api("POST", f"/api/pending/{by_host[port]['id']}/allow",
                                     {"scope": "exact", "duration": "1h"})
            t1 = time.monotonic()
            if status != 200:
                raise RuntimeError(f"allow: HTTP {status}: {body}")
            sent[port], returned[port] = t0, t1
            proxy.wait(lambda port=port: main.done(members[port]), min(60, budget_end - time.monotonic()),
                       f"the connections to {port} to be released")
            released += len(members[port])
            main.close_answered(proxy, args.conns - released)
        rest = dest_hosts[args.each:]
        if rest:
            t0 = time.monotonic()
            status, body = proxy.api("POST", "/api/pending/bulk-allow",
                                     {"pending_ids": [by_host[p]["id"] for p in rest], "duration": "1h"},
                                     timeout=120)
            t1 = time.monotonic()
            if status != 200:
                raise RuntimeError(f"bulk-allow: HTTP {status}: {body}")
            for port in rest:
                sent[port], returned[port] = t0, t1
            idx = [i for p in rest for i in members[p]]
            proxy.wait(lambda: main.done(idx), min(120, budget_end - time.monotonic()),
                       "the bulk-approved connections to be released")

        def lat(ports_: list[str], since: dict[str, float]) -> list[float]:
            return [(main.answered[i] - since[p]) * 1000 for p in ports_ for i in members[p] if main.status[i] == 1]

        failed = sum(1 for i in range(args.conns) if main.status[i] != 1)
        result: dict[str, Any] = {
            "run": run, "conns": args.conns, "dests": args.dests,
            "socks": sum(1 for t in targets if t[0] == SOCKS), "held": held,
            "answered_before_approval": early, "failed": failed, "open_s": round(open_s, 2),
            "rss_before_kb": before.get("rss_kb"), "rss_held_kb": after.get("rss_kb"),
            "kb_per_held": round((after["rss_kb"] - before["rss_kb"]) / max(1, held), 2),
            "pss_kb_per_held": (round((after["pss_kb"] - before["pss_kb"]) / max(1, held), 2)
                                if "pss_kb" in after and "pss_kb" in before else None),
            "fds_before": fds_before, "fds_held": fds_held, "idle_held_cpu_pct": idle_cpu_pct,
            "release_each": {"approvals": len(each), **summary(lat(each, sent)),
                             "from_return": summary(lat(each, returned)),
                             "api_ms": summary([(returned[p] - sent[p]) * 1000 for p in each])},
            "release_bulk": {"approvals": 1 if rest else 0, "released": sum(len(members[p]) for p in rest),
                             **summary(lat(rest, sent)), "from_return": summary(lat(rest, returned)),
                             "api_ms": round((returned[rest[0]] - sent[rest[0]]) * 1000, 2) if rest else None},
        }
        return result
    finally:
        for c in clients:
            c.close()
        if proxy is not None:
            proxy.stop()
        stop_sink.set()
        sink.join(timeout=30)
        if sink.is_alive():
            sink.kill()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--dests", type=int, default=100, help="distinct destinations (127.1.x.y addresses)")
    ap.add_argument("--each", type=int, default=None,
                    help="destinations approved one at a time (default: half); the rest in one bulk call")
    ap.add_argument("--socks", type=float, default=0.2, help="share of the connections made through SOCKS5")
    ap.add_argument("--wave", type=int, default=500, help="connections opened at once (below the backlog, 1,024)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--budget", type=float, default=600, help="seconds per run, at most")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs greyproxy")
    ap.add_argument("--source", type=Path, default=REPO,
                    help="the greyproxy tree to run (a git worktree of another commit, to compare)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (greyproxy.log)")
    args = ap.parse_args()
    if args.conns < args.dests or args.dests < 1:
        ap.error("--conns must be at least --dests (>= 1)")
    if args.each is None:
        args.each = args.dests // 2
    args.each = max(0, min(args.each, args.dests))
    nofile = raise_nofile(args.conns * 2 + 8192)
    if nofile < args.conns + 2048:
        print(f"RLIMIT_NOFILE is {nofile}: too low for {args.conns} connections", file=sys.stderr)
        return 1
    results = []
    for run in range(args.repeat):
        res = one_run(args, run)
        results.append(res)
        print(json.dumps(res), flush=True)
    if len(results) > 1:
        def med(get: Any) -> float:
            return round(statistics.median(get(r) for r in results), 2)
        median = {
            "run": "median", "held": med(lambda r: r["held"]), "kb_per_held": med(lambda r: r["kb_per_held"]),
            "idle_held_cpu_pct": med(lambda r: r["idle_held_cpu_pct"]),
            "release_each": {k: med(lambda r, k=k: r["release_each"][k]) for k in ("p50_ms", "p99_ms", "max_ms")},
            "release_bulk": {k: med(lambda r, k=k: r["release_bulk"][k]) for k in ("p50_ms", "p99_ms", "max_ms")}
            if results[0]["release_bulk"]["n"] else {},
        }
        print(json.dumps(median), flush=True)
        results.append(median)
    last = results[-1]
    print(f"\nheld {last['held']}  kB/held {last['kb_per_held']}  idle CPU {last['idle_held_cpu_pct']} %")
    for name in ("release_each", "release_bulk"):
        r = last[name]
        if r.get("p50_ms") is not None:
            print(f"{name:13s} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  max {r['max_ms']:8.2f} ms"
                  "  (from the approval being sent)")
    return 0 if all(r.get("failed", 0) == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
