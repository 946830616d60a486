"""Which capture recording a new exchange belongs to: the in-memory view the recorder reads.

The control plane (services/recordings.py) sets it whenever a recording starts or stops; the
connection path only asks `recording_for(container)`, a walk over the few running recordings
(no SQL). A transaction belongs to at most one recording: when several running recordings take
its container, one that names containers wins over one that takes every container, then the
newest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from greyproxy.policy.patterns import container_matcher


@dataclass(frozen=True, slots=True)
class Running:
    id: int
    container_pattern: str | None  # None: every container


class ActiveRecordings:
    def __init__(self) -> None:
        self._running: tuple[Running, ...] = ()

    def set(self, running: Iterable[Running]) -> None:
        # Replaced whole, never mutated: a reader on the path sees the old or the new tuple.
        self._running = tuple(sorted(running, key=lambda r: (r.container_pattern is not None, r.id), reverse=True))

    def recording_for(self, container: str) -> int | None:
        for rec in self._running:
            if rec.container_pattern is None or container_matcher(rec.container_pattern)(container):
                return rec.id
        return None
