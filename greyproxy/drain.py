"""A graceful stop's drain (docs/configuration.md, `drain_seconds`): the proxy connections still open get up to
`drain_seconds` to end on their own; what is left is then closed. Shared by the single process
and each worker process (docs/workers.md), so both say the same in the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Sized

import gevent
from gevent.event import Event

log = logging.getLogger("greyproxy")


def drain(pools: list[Sized], grace: float, hurry: Event, who: str = "") -> None:
    """Wait until every pool is empty, `grace` seconds pass, or `hurry` is set (a second
    SIGTERM/SIGINT); the caller closes what is still open."""
    deadline = time.monotonic() + grace
    if any(len(p) for p in pools):
        log.info("%sdraining %d connection(s) for up to %g s", who, sum(len(p) for p in pools), grace)
    while any(len(p) for p in pools) and time.monotonic() < deadline and not hurry.is_set():
        gevent.sleep(0.05)
    left = sum(len(p) for p in pools)
    if left:
        log.info("%sclosing %d connection(s) still open after the drain", who, left)
