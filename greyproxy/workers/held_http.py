"""The held HTTP requests of every worker, as the control plane's API sees them (docs/workers.md).

A held request is a waiting client in one worker's memory. The worker announces it (the
`pending_http.*` events it forwards); the control plane keeps a copy of each one's JSON, lists
them beside its own, and sends a human's answer to the worker that holds the request, which
answers it exactly as it would have answered a local call and replies with the result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greyproxy.proxy.request_hold import MAX_DECIDED
from greyproxy.services.audit import current_actor

if TYPE_CHECKING:
    from greyproxy.proxy.request_hold import HeldRequest, RequestHolds

DONE = ("allowed", "denied", "expired", "gone")


@dataclass(eq=False)
class RemoteHeld:
    """A request held in worker `worker`: what answering it needs, read from its JSON."""

    worker: int
    data: dict[str, Any]

    @property
    def id(self) -> int:
        return int(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def container(self) -> str:
        return str(self.data["container_name"])

    @property
    def host(self) -> str:
        return str(self.data["destination_host"])

    @property
    def port(self) -> int:
        return int(self.data["destination_port"])

    @property
    def method(self) -> str:
        return str(self.data["method"])

    @property
    def url(self) -> str:
        return str(self.data["url"])

    @property
    def path(self) -> str:
        return str(self.data["path"])

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


class SharedRequestHolds:
    def __init__(self, local: RequestHolds, call: Callable[[int, dict[str, Any]], Any]) -> None:
        self.local = local  # the control plane's own (the replayer's, say)
        self.call = call  # (worker index, message) -> the worker's reply, None when none came
        self._pending: dict[int, RemoteHeld] = {}
        self._decided: deque[RemoteHeld] = deque(maxlen=MAX_DECIDED)

    # -- what the workers say ------------------------------------------------------------
    def observe(self, worker: int, kind: str, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            return
        status = kind.removeprefix("pending_http.")
        if status == "created":
            self._pending[data["id"]] = RemoteHeld(worker, dict(data))
        elif status in DONE:
            held = self._pending.pop(data["id"], None) or RemoteHeld(worker, {})
            held.data = dict(data)
            self._decided.append(held)

    def worker_gone(self, worker: int) -> None:
        for held in [h for h in self._pending.values() if h.worker == worker]:
            self.observe(worker, "pending_http.gone", {**held.data, "status": "gone"})

    # -- what the API asks ---------------------------------------------------------------
    def get(self, request_id: int) -> HeldRequest | RemoteHeld | None:
        found = self.local.get(request_id) or self._pending.get(request_id)
        if found is not None:
            return found
        return next((r for r in self._decided if r.id == request_id), None)

    def list(self, status: str | None = None, container: str | None = None) -> list[HeldRequest | RemoteHeld]:
        rows: list[HeldRequest | RemoteHeld] = list(self.local.list(status, container))
        if status in (None, "pending"):
            rows[:0] = [r for r in self._pending.values() if container is None or r.container == container]
        if status != "pending":
            rows += [r for r in reversed(self._decided)
                     if (status is None or r.status == status) and (container is None or r.container == container)]
        return rows

    def count(self) -> int:
        return self.local.count() + len(self._pending)

    def answer(self, request_id: int, allow: bool, actor: str | None,
               reason: str | None = None) -> HeldRequest | RemoteHeld | None:
        held = self._pending.get(request_id)
        if held is None:
            return self.local.answer(request_id, allow, actor, reason)
        reply = self.call(held.worker, {"t": "http.answer", "id": request_id, "allow": allow, "actor": actor,
                                        "reason": reason, "who": current_actor.get()})
        if not isinstance(reply, dict):
            return None
        held.data = reply
        return held

    # -- what the runtime does to its own ------------------------------------------------
    def reevaluate(self) -> None:
        self.local.reevaluate()

    def release_all(self, reason: str) -> None:
        self.local.release_all(reason)
