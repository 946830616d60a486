"""The control plane's side of `serve --workers N` (docs/workers.md).

The control-plane process forks the N worker processes once everything is built, keeps one
`Channel` to each, and is the hub of their messages:

- its own changes (rules, pending decisions, sessions, credentials, modes, silent mode,
  settings: the fleet sync's outbound messages) go to every worker, which follows them from the
  shared database exactly as a fleet node follows another node;
- a worker's messages are applied here (pending rows it wrote reach the dashboards, its waiter
  counts join the pending list) and passed on to the other workers (and, in fleet mode, to the
  other nodes); events a worker publishes for the dashboards (captured transactions, held HTTP
  requests) are published on this bus;
- DNS answers given here go to the workers (they decide raw-IP connections by those names).

A worker that dies is not forked again (a fork of the running control plane would carry all of
its state and greenlets): the kernel sends new connections to the others, and /api/health says
`degraded` until a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent

from greyproxy.workers.channel import Channel, Message

log = logging.getLogger("greyproxy.workers")

# What a worker sends that concerns only the control plane (not the other workers or nodes).
LOCAL_KINDS = ("event", "transactions", "docker")  # replies never get here: the channel answers its calls
READY_SECONDS = 20.0  # a worker binds its sockets and starts its parts within this
BARRIER_SECONDS = 2.0


@dataclass
class Worker:
    index: int
    pid: int
    channel: Channel
    exited: int | None = None  # its exit status, once reaped
    ready: bool = False  # serving on its own sockets
    started_at: float = field(default_factory=time.time)


class WorkerPool:
    def __init__(self, count: int, node: str, apply: Callable[[Message], None], resync: Callable[[], None]) -> None:
        """`apply`: the control plane's fleet sync applying a change made elsewhere; `resync`:
        read everything again."""
        self.count = count
        self.node = node
        self.apply = apply
        self.resync = resync
        # The kinds only the control plane handles (greyproxy/workers/control.py).
        self.on_worker_message: Callable[[int, Message], None] = lambda _index, _message: None
        self.workers: dict[int, Worker] = {}
        self.fleet_link: Any = None  # the PostgreSQL link of fleet mode, when there is one
        self._stopping = False

    # -- start ---------------------------------------------------------------------------
    def fork(self, run_child: Callable[[int, socket.socket], None]) -> None:
        """Fork the workers. In each child, `run_child(index, its socket)` runs and the child
        exits when it returns: it never comes back into the caller's code."""
        for index in range(1, self.count + 1):
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # the child
                ours.close()
                for worker in self.workers.values():  # the earlier workers' links are not its own
                    worker.channel.sock.close()
                code = 0
                try:
                    run_child(index, theirs)
                except BaseException:  # noqa: BLE001 - a child never unwinds into the parent's code
                    log.exception("worker %d failed", index)
                    code = 1
                finally:
                    logging.shutdown()
                    os._exit(code)
            theirs.close()
            channel = Channel(ours, self.node, lambda m, i=index: self._from_worker(i, m),
                              lambda i=index: self._worker_gone(i))
            self.workers[index] = Worker(index, pid, channel)
        for worker in self.workers.values():
            worker.channel.start()
        log.info("workers: %d data-path processes (pids %s)", self.count,
                 ", ".join(str(w.pid) for w in self.workers.values()))

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Until every worker serves on its own sockets (or is gone): only then may the
        control plane let go of the ports, and say it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w.ready or w.channel.closed for w in self.workers.values()):
                break
            gevent.sleep(0.02)
        if not any(w.ready for w in self.workers.values()):
            raise OSError("no worker process started (see the errors above)")

    # -- the link the control plane's fleet sync sends through ---------------------------
    def send(self, message: Message) -> None:
        """A change made here: to every worker, and to the other fleet nodes."""
        self.broadcast({"n": self.node, **message})
        if self.fleet_link is not None:
            self.fleet_link.send(message)

    def broadcast(self, message: Message, skip: int | None = None) -> None:
        for worker in self.workers.values():
            if worker.index != skip:
                worker.channel.send(message)

    def barrier(self, timeout: float = BARRIER_SECONDS) -> bool:
        """Wait until every live worker has applied what was sent to it so far (a worker
        handles its messages in order, so its answer to this ping comes after them). The API
        calls it before answering a change: once a rule's creation returns, no worker still
        decides by the rules before it. False when a worker did not answer in time."""
        live = sum(1 for w in self.workers.values() if not w.channel.closed)
        answered = len(self.ask_all({"t": "ping"}, timeout)) == live
        if not answered:
            log.warning("workers: not every worker confirmed a change within %.1f s", timeout)
        return answered

    def ask_all(self, message: Message, timeout: float = BARRIER_SECONDS) -> dict[int, Any]:
        """`message` to every live worker at once; their replies by worker index."""
        live = [w for w in self.workers.values() if not w.channel.closed]
        calls = {w.index: gevent.spawn(w.channel.call, message, timeout) for w in live}
        gevent.joinall(list(calls.values()), timeout=timeout + 0.5)
        return {index: call.value for index, call in calls.items() if call.value is not None}

    def reply(self, index: int, request: Message, value: Any) -> None:
        worker = self.workers.get(index)
        if worker is not None:
            worker.channel.reply(request, value)

    def call(self, index: int, message: Message) -> Any:
        worker = self.workers.get(index)
        return None if worker is None else worker.channel.call(message)

    # -- the fleet's PostgreSQL link delivers here (fleet mode) --------------------------
    def from_fleet(self, message: Message) -> None:
        self.apply(message)
        self.broadcast(message)

    def fleet_resync(self) -> None:
        self.resync()
        self.broadcast({"t": "resync"})

    # -- from a worker -------------------------------------------------------------------
    def _from_worker(self, index: int, message: Message) -> None:
        kind = message.get("t")
        if kind == "ready":
            self.workers[index].ready = True
            return
        if kind in LOCAL_KINDS:
            self.on_worker_message(index, message)
            return
        self.apply(message)
        self.broadcast(message, skip=index)
        if self.fleet_link is not None:
            self.fleet_link.send(message)  # it keeps the worker's node id ("n")

    def _worker_gone(self, index: int) -> None:
        worker = self.workers.get(index)
        if worker is None or self._stopping:
            return
        gevent.spawn(self._reap, worker)
        log.error("workers: worker %d (pid %d) is gone; its connections ended, the others carry on "
                  "(restart greyproxy to run %d again)", index, worker.pid, self.count)
        self.on_worker_message(index, {"t": "gone"})

    def _reap(self, worker: Worker) -> None:
        for _ in range(50):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                worker.exited = os.waitstatus_to_exitcode(status)
                return
            gevent.sleep(0.1)

    # -- health and stop -----------------------------------------------------------------
    def alive(self) -> int:
        return sum(1 for w in self.workers.values() if not w.channel.closed)

    def health(self) -> list[str]:
        gone = [w for w in self.workers.values() if w.channel.closed]
        if not gone or self._stopping:
            return []
        return [f"{len(gone)} of {self.count} worker processes exited (pids "
                f"{', '.join(str(w.pid) for w in gone)}); restart greyproxy"]

    def status(self) -> list[dict[str, Any]]:
        return [{"index": w.index, "pid": w.pid, "alive": not w.channel.closed, "exit_code": w.exited,
                 **w.channel.status()} for w in self.workers.values()]

    def stop(self, grace: float) -> None:
        """SIGTERM each worker (it drains for up to `grace` seconds), then SIGKILL what is left."""
        self._stopping = True
        for worker in self.workers.values():
            worker.channel.flush(0.5)
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace + 2.0
        waiting = dict(self.workers)
        while waiting and time.monotonic() < deadline:
            for index, worker in list(waiting.items()):
                try:
                    pid, status = os.waitpid(worker.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = worker.pid, 0
                if pid:
                    worker.exited = os.waitstatus_to_exitcode(status) if status else 0
                    del waiting[index]
            if waiting:
                gevent.sleep(0.05)
        for worker in waiting.values():
            log.warning("workers: worker %d (pid %d) did not stop in time; killed", worker.index, worker.pid)
            try:
                os.kill(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for worker in self.workers.values():
            worker.channel.close()
