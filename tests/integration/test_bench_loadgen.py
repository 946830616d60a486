"""bench/proxyload.py, the repository's own load generator, works from a clean checkout: with no
proxy, and through a real `greyproxy serve` over CONNECT, SOCKS5, absolute-URI and interception
(short, small runs: this checks the tool, it measures nothing)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = ROOT / "bench" / "proxyload.py"
SHORT = ["--duration", "0.5", "--warmup", "0.1", "--workers", "2", "--procs", "1", "--timeout", "90"]


def origin_base() -> int:
    """Four consecutive free loopback ports (the generator's origins sit on B..B+3)."""
    for _ in range(100):
        base = free_port("127.0.0.1")
        socks = []
        try:
            for i in range(4):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no four consecutive free ports")


def run(*args: str) -> dict[str, dict[str, Any]]:
    res = subprocess.run([sys.executable, str(LOADGEN), *SHORT, *args], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert lines and "loadgen" in lines[0], res.stdout
    return {x["scenario"]: x for x in lines[1:] if "scenario" in x}


def test_direct_every_scenario(tmp_path: Path) -> None:
    got = run("--direct", "--scenario", "connrate,plainhttp,bulk,hold,mitm,mitm-keepalive",
              "--bulk-bytes", "2M", "--hold-conns", "5", "--hold-secs", "0.2",
              "--origin-base-port", str(origin_base()), "--certdir", str(tmp_path / "certs"))
    for name in ("connrate", "plainhttp", "mitm", "mitm-keepalive"):
        assert got[name]["ok"] > 0 and got[name]["errors"] == 0, got[name]
    assert got["mitm"]["intercepted"] is False
    assert got["bulk"]["received"] == 2 << 20 and got["bulk"]["mb_s"] > 0
    assert got["hold"]["opened"] == 5 and got["hold"]["survived"] == 5


def test_through_greyproxy(gp_factory: Any, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import proxyload
    finally:
        sys.path.remove(str(ROOT / "bench"))
    origin_ca, _leaf = proxyload.make_pki(certs)
    base = origin_base()
    gp = gp_factory(config_yaml=f"limits: {{requests_per_second: 0}}\nmitm: {{extra_ca_bundle: '{origin_ca}'}}\n")
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "bench-client", "destination_pattern": "127.0.0.1",
                                              "port_pattern": f"{base}-{base + 3}"})
    assert resp.status_code in (200, 201), resp.text
    common = ["--origin-base-port", str(base), "--certdir", str(certs), "--proxy-pid", str(gp.proc.pid)]
    http = f"http://bench-client:x@127.0.0.1:{gp.ports['http']}"
    got = run("--proxy", http, "--scenario", "connrate,plainhttp,mitm", "--cafile", str(gp.data_dir / "ca-cert.pem"),
              *common)
    for name in ("connrate", "plainhttp", "mitm"):
        assert got[name]["ok"] > 0 and got[name]["errors"] == 0, got[name]
        assert got[name]["proxy_cpu_us_per_op"] is not None
    assert got["mitm"]["intercepted"] is True  # the leaf the client saw was greyproxy's
    socks = run("--proxy", f"socks5://bench-client:x@127.0.0.1:{gp.ports['socks5']}",
                "--scenario", "connrate,plainhttp", *common)
    assert socks["connrate"]["ok"] > 0 and socks["connrate"]["errors"] == 0, socks["connrate"]
    assert "skipped" in socks["plainhttp"]  # no absolute-URI requests over SOCKS5: said, not failed
    # a proxy that refuses is counted by kind, not hidden
    resp = gp.api("POST", "/api/rules", json={"container_pattern": "stranger", "destination_pattern": "127.0.0.1",
                                              "action": "deny"})
    assert resp.status_code in (200, 201), resp.text
    denied = run("--proxy", f"http://stranger:x@127.0.0.1:{gp.ports['http']}", "--scenario", "connrate",
                 "--origin-base-port", str(base))
    assert denied["connrate"]["ok"] == 0 and denied["connrate"]["error_kinds"].get("http_403", 0) > 0, denied


def test_workers_bench_smoke(tmp_path: Path) -> None:
    """bench/workers_bench.py runs 1 and 2 workers end to end and finds both workers busy."""
    cmd = [sys.executable, str(ROOT / "bench" / "workers_bench.py"), "--duration", "0.5", "--warmup", "0.1",
           "--repeat", "1", "--clients", "2", "--no-socks5", "--setups", "gp-w1-pin,gp-w2-pin",
           "--budget", "80", "--results", str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    runs = {(x["setup"]): x for x in map(json.loads, (tmp_path / "out" / "runs.jsonl").read_text().splitlines())}
    assert set(runs) == {"gp-w1-pin", "gp-w2-pin"}, res.stdout
    for line in runs.values():
        assert line["ok"] > 0 and line["errors"] == 0, line
    two = runs["gp-w2-pin"]
    assert len(two["worker_pids"]) == 2
    assert set(two["cpu_s_by_pid"]) == {str(p) for p in [two["proxy_pid"], *two["worker_pids"]]}, two
    assert "| gp-w2-pin connrate http |" in res.stdout
