"""Records the data path hands to the store writer (it never writes itself)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Attempt:
    """One held connection's claim on the pending queue (queued by the proxy, written later)."""

    container_name: str
    container_id: str
    destination_host: str
    destination_port: int
    resolved_hostname: str | None
    when: dt.datetime
