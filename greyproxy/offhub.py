"""CPU-heavy work off the gevent hub: a big JSON body, a rule index of 100,000 rules.

Work run on the hub stops every connection until it ends. Run in gevent's worker threads, it
shares the GIL with the hub, which gets it back every `sys.getswitchinterval()` (5 ms), so the
proxy keeps answering while the work goes on. Database statements have their own thread
(store/executor.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent

T = TypeVar("T")


def in_worker(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in a worker thread; the calling greenlet waits, the hub does not. Its
    error is raised here (returned as a value: raised in the pool, gevent would also report it
    to the hub's error handler as if it were unexpected)."""

    def call() -> tuple[bool, Any]:
        try:
            return True, work(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling greenlet
            return False, exc

    ok, value = gevent.get_hub().threadpool.apply(call)
    if ok:
        return value
    raise value
