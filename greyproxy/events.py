"""The in-process event bus: publish never blocks; slow subscribers lose events."""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gevent.queue import Empty, Full, Queue

Event = dict[str, Any]  # {"type": str, "data": Any}

# Set while this node applies another fleet node's change (greyproxy/fleet/sync.py): that node
# has recorded it (its audit entry), so what is published meanwhile runs no recorder here.
from_other_node: contextvars.ContextVar[bool] = contextvars.ContextVar("greyproxy_from_other_node",
                                                                      default=False)


@dataclass(eq=False)
class Subscription:
    """One subscriber's bounded queue. `types=None` means every event type."""

    bus: Bus
    queue: Queue
    types: set[str] | None
    accept: Callable[[Event], bool] | None = None
    dropped: int = 0

    def get(self, timeout: float | None = None) -> Event | None:
        try:
            return self.queue.get(timeout=timeout)
        except Empty:
            return None

    def close(self) -> None:
        self.bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count()
        # Synchronous hooks run inside publish (e.g. the hold manager re-deciding waiters);
        # they must not block.
        self._hooks: list[Callable[[Event], None]] = []
        # Recorders keep a durable record of changes (the audit log), given a list of events at
        # a time. They run first in publish, or earlier, through record()/record_many(), inside
        # the transaction that made the change.
        self._recorders: list[Callable[[list[Event]], None]] = []
        # Whether an event type is handed on elsewhere (a worker process's to its control plane,
        # in publish order): it counts as wanted even with no subscriber here.
        self._forwarded: Callable[[str], bool] = lambda _type: False
        # Called when a subscriber comes or goes (the workers' control plane tells them what is wanted).
        self.subscribers_changed: Callable[[], None] = lambda: None

    def subscribe(
        self,
        maxsize: int = 128,
        types: Iterable[str] | None = None,
        accept: Callable[[Event], bool] | None = None,
    ) -> Subscription:
        sub = Subscription(self, Queue(maxsize), set(types) if types is not None else None, accept)
        self._subs[id(sub)] = sub
        self.subscribers_changed()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(id(sub), None) is not None:
            self.subscribers_changed()

    def add_hook(self, hook: Callable[[Event], None]) -> None:
        self._hooks.append(hook)

    def forward(self, wanted: Callable[[str], bool], send: Callable[[Event], None]) -> None:
        """`send(event)` inside publish (it must not block) for every event whose type
        `wanted` says someone elsewhere wants now."""
        self._forwarded = wanted
        self.add_hook(lambda event: send(event) if wanted(event["type"]) else None)

    def add_recorder(self, recorder: Callable[[list[Event]], None]) -> None:
        self._recorders.append(recorder)

    def record(self, type_: str, data: Any) -> None:
        """Run the recorders for an event that will be published once its transaction commits:
        called inside `db.atomic()`, the record is part of the change (all or nothing). The
        caller then publishes the event with `recorded=True` after the commit."""
        self.record_many([(type_, data)])

    def record_many(self, events: list[tuple[str, Any]]) -> None:
        """`record` for many events at once (a bulk decision: one audit write, not thousands)."""
        batch: list[Event] = [{"type": type_, "data": data} for type_, data in events]
        if batch:
            for recorder in list(self._recorders):
                recorder(batch)

    def publish(self, type_: str, data: Any, *, recorded: bool = False) -> None:
        event: Event = {"type": type_, "data": data}
        if not recorded and not from_other_node.get():
            for recorder in list(self._recorders):
                recorder([event])
        for hook in list(self._hooks):
            hook(event)
        for sub in list(self._subs.values()):
            if sub.types is not None and type_ not in sub.types:
                continue
            if sub.accept is not None and not sub.accept(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except Full:
                sub.dropped += 1

    def wants(self, type_: str) -> bool:
        """Whether a subscriber would receive an event of this type, so a costly payload can be
        skipped. Hooks do not count: they are for control events (rules), not traffic."""
        return self._forwarded(type_) or any(s.types is None or type_ in s.types for s in self._subs.values())

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
