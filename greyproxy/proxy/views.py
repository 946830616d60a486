"""The control plane as the proxy path sees it: the few methods the listeners call on the policy
and the sessions, as protocols. The proxy imports no service module (docs/architecture.md);
runtime.py hands it the services, which have these methods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from greyproxy.policy.decide import ConnectionRequest, Decision, PolicyState


class PolicyView(Protocol):
    """The live policy (services/policy_state.py PolicyHolder): decisions are made in memory."""

    @property
    def state(self) -> PolicyState: ...

    def decide(self, request: ConnectionRequest) -> Decision: ...


class SessionView(Protocol):
    """Sessions as a connection meets them (services/sessions.py SessionService)."""

    def identity(self, username: str | None, password: str | None, container: str) -> tuple[str, str | None]: ...

    def current_sessions(self) -> Mapping[str, str]: ...

    def count_substitutions(self, per_session: dict[str, int]) -> None: ...
