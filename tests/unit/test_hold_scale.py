"""Issue 19: what 10,000 held connections cost (bench/hold_bench.py). A held connection is noticed
hanging up by a read watcher, with no greenlet of its own, also when it sent bytes early; policy
changes decide each held destination once, not each waiter; the pending attempts of one burst
are written once per destination, every attempt still counted."""

from __future__ import annotations

import datetime as dt

import gevent
import pytest
from gevent import socket as gsocket

from greyproxy.events import Bus
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.proxy import hold as hold_module
from greyproxy.proxy.hold import HoldManager
from greyproxy.store.records import Attempt, merge_attempts
from greyproxy.store.writer import StoreWriter


def pair() -> tuple[gsocket.socket, gsocket.socket]:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gsocket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def test_a_held_client_that_hangs_up_is_answered_at_once_without_a_greenlet():
    manager = HoldManager(Bus(), lambda _r: Decision(Verdict.HOLD, "pending"))
    client, server = pair()
    before = gevent.get_hub().loop.activecnt
    held = gevent.spawn(manager.hold, ConnectionRequest("c", "h.example", 443), 10.0, server)
    gevent.sleep(0.05)
    assert manager.total == 1
    waiter = next(iter(manager._waiters[("c", "h.example", 443)]))  # noqa: SLF001
    assert not isinstance(waiter.watcher, gevent.Greenlet)  # a watcher in the loop, not a poller
    client.close()
    with gevent.Timeout(1.0):  # well before HANGUP_POLL_SECONDS would matter
        decision = held.get()
    assert decision.reason == "client_gone"
    assert manager.total == 0
    assert gevent.get_hub().loop.activecnt <= before  # the watcher is gone with the hold
    server.close()


def test_a_held_client_that_sent_bytes_early_is_polled_and_still_seen_leaving(monkeypatch):
    monkeypatch.setattr(hold_module, "HANGUP_POLL_SECONDS", 0.05)
    manager = HoldManager(Bus(), lambda _r: Decision(Verdict.HOLD, "pending"))
    client, server = pair()
    client.sendall(b"\x16\x03\x01")  # a TLS hello sent before the tunnel was answered
    held = gevent.spawn(manager.hold, ConnectionRequest("c", "h.example", 443), 10.0, server)
    gevent.sleep(0.2)
    assert not held.ready()  # bytes waiting are no hang-up
    waiter = next(iter(manager._waiters[("c", "h.example", 443)]))  # noqa: SLF001
    assert isinstance(waiter.watcher, gevent.Greenlet)
    assert server.recv(3) == b"\x16\x03\x01"  # nothing was consumed
    client.close()
    with gevent.Timeout(1.0):
        assert held.get().reason == "client_gone"
    server.close()


def test_reevaluate_decides_each_destination_once_and_wakes_only_its_waiters():
    allowed: set[str] = set()
    calls: list[ConnectionRequest] = []

    def decide(request: ConnectionRequest) -> Decision:
        calls.append(request)
        return Decision(Verdict.ALLOW if request.host in allowed else Verdict.HOLD, "x")

    manager = HoldManager(Bus(), decide)
    hosts = [f"h{i}.example" for i in range(5)]
    held = [gevent.spawn(manager.hold, ConnectionRequest("c", hosts[i % 5], 443), 10.0, None) for i in range(100)]
    gevent.sleep(0.05)
    assert manager.total == 100
    allowed.add("h0.example")
    calls.clear()
    manager.reevaluate()
    assert len(calls) == 5  # one decision per destination, not one per waiter
    gevent.sleep(0.05)
    released = [g for g in held if g.ready()]
    assert len(released) == 20 and all(g.value.verdict is Verdict.ALLOW for g in released)
    assert manager.total == 80
    manager.release_all("shutting_down")
    gevent.joinall(held, timeout=1)
    assert manager.total == 0


def test_waiters_of_one_destination_that_resolved_differently_are_decided_apart():
    def decide(request: ConnectionRequest) -> Decision:
        ok = request.resolved_hostname == "ok.example"
        return Decision(Verdict.ALLOW if ok else Verdict.HOLD, "x")

    manager = HoldManager(Bus(), lambda _r: Decision(Verdict.HOLD, "pending"))
    a = gevent.spawn(manager.hold, ConnectionRequest("c", "10.0.0.1", 443, "ok.example"), 10.0, None)
    b = gevent.spawn(manager.hold, ConnectionRequest("c", "10.0.0.1", 443, "other.example"), 10.0, None)
    gevent.sleep(0.05)
    manager.decide = decide
    manager.reevaluate()
    gevent.sleep(0.05)
    assert a.ready() and a.value.verdict is Verdict.ALLOW
    assert not b.ready()
    manager.release_all("shutting_down")
    b.join(timeout=1)


def at(second: int) -> dt.datetime:
    return dt.datetime(2026, 1, 1, 0, 0, second)


def attempt(host: str, second: int, resolved: str | None = None) -> Attempt:
    return Attempt("c", "", host, 443, resolved, at(second))


def test_merge_counts_every_attempt_once_per_destination_in_order():
    merged = merge_attempts([attempt("b", 3), attempt("a", 1), attempt("b", 2), attempt("b", 5),
                             attempt("a", 4, "name.example")])
    assert [(m.destination_host, m.resolved_hostname, m.count) for m in merged] == [
        ("b", None, 3), ("a", None, 1), ("a", "name.example", 1)]
    b = merged[0]
    assert (b.first, b.when) == (at(2), at(5))
    assert merged[1].first is None and merged[1].when == at(1)
    assert merge_attempts(merged + [attempt("b", 9)])[0].count == 4  # merged ones merge again


def test_writer_writes_one_attempt_per_destination_and_puts_back_what_failed():
    written: list[Attempt] = []
    fail_at = [2]

    def record(a: Attempt) -> None:
        if len(written) == fail_at[0]:
            fail_at[0] = -1
            raise OSError("disk full")
        written.append(a)

    writer = StoreWriter(None, record, lambda *_a: None)  # type: ignore[arg-type]
    for i in range(1000):
        writer.attempt(attempt(f"h{i % 10}", i % 60))
    with pytest.raises(OSError):
        writer._flush_attempts()  # noqa: SLF001
    assert [a.destination_host for a in written] == ["h0", "h1"]
    writer._flush_attempts()  # noqa: SLF001
    assert [a.destination_host for a in written] == [f"h{i}" for i in range(10)]
    assert sum(a.count for a in written) == 1000
