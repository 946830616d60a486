"""Per-container modes (docs/decisions.md#decisions-on-the-connection-path): container glob -> enforce | report | open."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee

from greyproxy.events import Bus
from greyproxy.policy.decide import ModeEntry
from greyproxy.services.rules import NotFound
from greyproxy.store.models import ContainerMode
from greyproxy.timeutil import iso, utcnow

MODES = ("enforce", "report", "open")


def mode_to_json(row: ContainerMode) -> dict[str, Any]:
    return {"id": row.id, "container_pattern": row.container_pattern, "mode": row.mode, "created_at": iso(row.created_at)}


class ModeService:
    """Modes from the YAML file come first (negative ids win ties), then the ones set via REST."""

    def __init__(
        self, db: peewee.Database, bus: Bus, on_change: Callable[[], None], from_config: tuple[tuple[str, str], ...]
    ) -> None:
        self.db = db
        self.bus = bus
        self.on_change = on_change
        self.from_config = tuple(
            ModeEntry(id=i - len(from_config), container_pattern=c, mode=m) for i, (c, m) in enumerate(from_config)
        )
        # The stored modes as last read (`reload`), so `entries` never waits on the database: the
        # policy swaps them in without yielding, and a rule patch cannot fall between the two.
        self._stored: tuple[ModeEntry, ...] = ()
        self._reads_started = 0

    def entries(self) -> tuple[ModeEntry, ...]:
        return self.from_config + self._stored

    def reload(self) -> None:
        """Read the stored modes again (after a change here or on another node). Of overlapping
        reads only the newest is kept: an older one may have read the store before the change."""
        self._reads_started += 1
        number = self._reads_started
        stored = tuple(ModeEntry(r.id, r.container_pattern, r.mode) for r in ContainerMode.select())
        if number == self._reads_started:
            self._stored = stored

    def list(self) -> list[dict[str, Any]]:
        return [mode_to_json(r) for r in ContainerMode.select().order_by(ContainerMode.id)]

    def set(self, container_pattern: str, mode: str) -> dict[str, Any]:
        with self.db.atomic():
            row = ContainerMode.get_or_none(ContainerMode.container_pattern == container_pattern)
            if row is None:
                row = ContainerMode.create(container_pattern=container_pattern, mode=mode, created_at=utcnow())
            else:
                row.mode = mode
                row.save()
        self.on_change()
        data = mode_to_json(row)
        self.bus.publish("container_mode.changed", data)
        return data

    def delete(self, mode_id: int) -> None:
        row = ContainerMode.get_or_none(ContainerMode.id == mode_id)
        if row is None:
            raise NotFound(f"container mode {mode_id} not found")
        data = mode_to_json(row)
        row.delete_instance()
        self.on_change()
        self.bus.publish("container_mode.deleted", data)
