"""Records the data path hands to the store writer (it never writes itself)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Attempt:
    """One held connection's claim on the pending queue (queued by the proxy, written later)."""

    container_name: str
    container_id: str
    destination_host: str
    destination_port: int
    resolved_hostname: str | None
    when: dt.datetime  # the latest attempt this one stands for
    count: int = 1  # how many attempts (the writer merges those of one destination queued together)
    first: dt.datetime | None = None  # the earliest of them, when more than one


def merge_attempts(attempts: Iterable[Attempt]) -> list[Attempt]:
    """One attempt per destination (container, id, host, port, resolved name), in the order each
    first appears, carrying how many it stands for and their first and last time: 10,000 held
    connections to 100 destinations are 100 pending-row writes, not 10,000."""
    merged: dict[tuple[str, str, str, int, str | None], Attempt] = {}
    for a in attempts:
        key = (a.container_name, a.container_id, a.destination_host, a.destination_port, a.resolved_hostname)
        seen = merged.get(key)
        if seen is None:
            merged[key] = a
            continue
        earliest = min(seen.first or seen.when, a.first or a.when)
        merged[key] = replace(seen, when=max(seen.when, a.when), count=seen.count + a.count, first=earliest)
    return list(merged.values())
