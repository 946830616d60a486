#!/usr/bin/env python3
"""How much the traffic tools hold up the proxy's hub: a real `greyproxy serve`, /api/health
probed every 20 ms while (1) a HAR of N entries (~1.5 KiB each, just under the 8 MiB body cap at
5,000) is imported and (2) every transaction is exported as one HAR.

    .venv/bin/python bench/traffic_bench.py [N]      # from the repository root; N default 5000

Prints one line per phase: its duration and the probes' median and maximum latency (the idle
median first, for comparison). Only 127.0.0.1 is used; the data directory is a temporary one.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import Greyproxy  # noqa: E402 - the repository's serve launcher


def entry(i: int) -> dict:
    return {"startedDateTime": "2026-01-02T03:04:05Z", "time": 5,
            "request": {"method": "POST", "url": f"https://api.example.com/v1/items/{i}?api_key=k{i}",
                        "headers": [{"name": "Authorization", "value": f"Bearer sk-{i:08d}"},
                                    {"name": "Content-Type", "value": "application/json"}],
                        "postData": {"mimeType": "application/json", "text": json.dumps({"i": i, "pad": "x" * 500})}},
            "response": {"status": 200, "headers": [{"name": "Content-Type", "value": "application/json"}],
                         "content": {"mimeType": "application/json", "text": json.dumps({"ok": i, "pad": "y" * 500})}}}


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    gp = Greyproxy(Path(tempfile.mkdtemp()) / "data").start()
    lat: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            gp.api("GET", "/api/health", timeout=30)
            lat.append(time.perf_counter() - t)
            time.sleep(0.02)

    def phase(name: str, call) -> None:
        lat.clear()
        t = time.perf_counter()
        detail = call()
        took = time.perf_counter() - t
        time.sleep(0.2)
        print(f"{name}: {took:.2f} s {detail}; /api/health during: n={len(lat)} "
              f"median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")

    thread = threading.Thread(target=probe, daemon=True)
    try:
        raw = json.dumps({"log": {"version": "1.2", "entries": [entry(i) for i in range(n)]}}).encode()
        thread.start()
        time.sleep(1.0)
        print(f"idle: /api/health median {statistics.median(lat) * 1000:.0f} ms")

        def do_import() -> str:
            r = gp.api("POST", "/api/recordings/import", data=raw, headers={"Content-Type": "application/json"},
                       timeout=300)
            return f"(HTTP {r.status_code}, {len(raw) / 2**20:.1f} MiB, {n} entries)"

        def do_export() -> str:
            r = gp.api("GET", "/api/transactions/export/har", timeout=300)
            return f"({len(r.json()['log']['entries'])} entries, {len(r.content) / 2**20:.1f} MiB)"

        phase("HAR import", do_import)
        phase("HAR export (all)", do_export)
    finally:
        stop.set()
        gp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
