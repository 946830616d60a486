"""Cost of parsing one HTTP/1 request head: greyproxy's engine (llhttp via httptools, plus our
framing checks and Head building) against h11, the other maintained candidate, on the same heads.

    python3 bench/parser_bench.py            # --rounds 20000

Prints µs per head (median of 5 batches) for a short curl-like head and a 20-field browser head.
h11 is measured doing the same job: a server-role connection fed the head, up to the Request event.
"""

from __future__ import annotations

import argparse
import statistics
import time

import h11

from greyproxy.proxy.httpwire import head_bytes, parse_head

CURL = (b"GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\nProxy-Authorization: Basic YWdlbnQxOng=\r\n\r\n")
BROWSER = (b"GET /assets/app.js HTTP/1.1\r\nHost: example.com\r\n" + b"".join(
    f"X-Field-{i}: value number {i} with some text\r\n".encode() for i in range(19)) + b"\r\n")


def time_per_head(fn, raw: bytes, rounds: int) -> float:
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            fn(raw)
        batches.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(batches)


def ours(raw: bytes) -> None:
    head_bytes(parse_head(raw, is_request=True))  # parse, then rebuild what goes on


def with_h11(raw: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'head':10} {'greyproxy (llhttp) µs':>22} {'h11 µs':>8}")
    for name, raw in (("curl", CURL), ("browser", BROWSER)):
        print(f"{name:10} {time_per_head(ours, raw, args.rounds):22.2f} {time_per_head(with_h11, raw, args.rounds):8.2f}")


if __name__ == "__main__":
    main()
