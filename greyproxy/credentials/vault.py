"""The in-memory map placeholder → secret used on the request path, and substitution
(docs/sessions.md): only where the destination matches the credential's `hosts` when set, and
only for the connection a secret belongs to: a session's secret for that session's container
(a connection that names the session has that container as its identity); a global one
for the containers its `containers` patterns match (any container when unset). A placeholder
sent from anywhere else goes upstream unchanged and the event is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from greyproxy.credentials.placeholders import PLACEHOLDER_RE, PREFIX
from greyproxy.policy.patterns import container_matcher, destination_matcher

log = logging.getLogger("greyproxy.credentials")


@dataclass(frozen=True, slots=True)
class Secret:
    placeholder: str
    value: str
    label: str
    session_id: str | None  # None = a global credential
    hosts: tuple[str, ...] = ()  # destination patterns; empty = any destination (greyproxy)
    # Global credentials: container patterns; empty = any container. Session secrets: the
    # session's container (set by the session service), nobody else's.
    containers: tuple[str, ...] = ()

    def allowed_for(self, host: str) -> bool:
        return not self.hosts or any(destination_matcher(p)(host) for p in self.hosts)

    def owned_by(self, container: str | None, session_id: str | None = None) -> bool:
        """Whether this connection may use the secret. `container` None = not checked (callers
        that have no connection, e.g. unit tests of the hosts binding)."""
        if container is None:
            return True
        if self.session_id is not None:
            if session_id is not None and session_id == self.session_id:
                return True
            return container in self.containers
        return not self.containers or any(container_matcher(p)(container) for p in self.containers)


@dataclass(slots=True)
class Substitution:
    labels: list[str] = field(default_factory=list)
    session_id: str | None = None
    refused: list[str] = field(default_factory=list)  # placeholders sent to a host outside their `hosts`
    foreign: list[str] = field(default_factory=list)  # placeholders sent by a container they do not belong to
    per_session: dict[str, int] = field(default_factory=dict)
    # Each real value actually substituted into this request → its placeholder: what the
    # response path swaps back and what storage scrubs.
    reverse: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.labels)


class Vault:
    def __init__(self) -> None:
        self._secrets: dict[str, Secret] = {}
        self.version = 0  # bumped on every change: storage scrubbing rebuilds its matcher on it

    def __len__(self) -> int:
        return len(self._secrets)

    def values(self) -> list[str]:
        """Every real value held (global credentials and session mappings)."""
        return [s.value for s in self._secrets.values()]

    def secrets(self) -> list[Secret]:
        return list(self._secrets.values())

    def get(self, placeholder: str) -> Secret | None:
        return self._secrets.get(placeholder)

    def put(self, secret: Secret) -> None:
        self._secrets[secret.placeholder] = secret
        self.version += 1

    def remove(self, placeholders: Iterable[str]) -> None:
        for p in placeholders:
            if self._secrets.pop(p, None) is not None:
                self.version += 1

    def remove_session(self, session_id: str) -> None:
        self.remove([p for p, s in self._secrets.items() if s.session_id == session_id])

    def _replace(self, text: str, host: str, result: Substitution, container: str | None = None,
                 session_id: str | None = None) -> str:
        def swap(match) -> str:  # noqa: ANN001 - re.Match
            placeholder = match.group(0)
            secret = self._secrets.get(placeholder)
            if secret is None:
                return placeholder
            if not secret.owned_by(container, session_id):
                result.foreign.append(placeholder)
                return placeholder
            if not secret.allowed_for(host):
                result.refused.append(placeholder)
                return placeholder
            if secret.label not in result.labels:
                result.labels.append(secret.label)
            result.reverse[secret.value] = placeholder
            if secret.session_id is not None:
                result.session_id = result.session_id or secret.session_id
                result.per_session[secret.session_id] = result.per_session.get(secret.session_id, 0) + 1
            return secret.value

        return PLACEHOLDER_RE.sub(swap, text)

    def substitute_headers(self, headers: list[tuple[str, str]], host: str, result: Substitution,
                           container: str | None = None, session_id: str | None = None) -> list[tuple[str, str]]:
        if not self._secrets:
            return headers
        return [(k, self._replace(v, host, result, container, session_id) if PREFIX in v else v)
                for k, v in headers]

    def substitute_target(self, target: str, host: str, result: Substitution, container: str | None = None,
                          session_id: str | None = None) -> str:
        """Placeholders in query values (possibly percent-encoded: ':' as %3A)."""
        if not self._secrets or "?" not in target:
            return target
        path, _, query = target.partition("?")
        if PREFIX not in unquote(query):
            return target
        pieces = []
        for piece in query.split("&"):
            key, sep, value = piece.partition("=")
            raw = unquote(value)
            if sep and PREFIX in raw:
                new = self._replace(raw, host, result, container, session_id)
                if new != raw:
                    value = quote(new, safe="")  # re-encode the whole value: always valid
            pieces.append(f"{key}{sep}{value}")
        return f"{path}?{'&'.join(pieces)}"

    def substitute_request(
        self, headers: list[tuple[str, str]], target: str, host: str, container: str | None = None,
        session_id: str | None = None,
    ) -> tuple[list[tuple[str, str]], str, Substitution]:
        """`container` is the connection's identity and `session_id` the session it named,
        if any; a secret that belongs to neither is not substituted (`result.foreign`)."""
        result = Substitution()
        new_headers = self.substitute_headers(headers, host, result, container, session_id)
        new_target = self.substitute_target(target, host, result, container, session_id)
        if result.refused:
            log.warning("credential placeholder(s) sent to %s, outside their allowed hosts: not substituted "
                        "(%d placeholder(s))", host, len(result.refused))
        if result.foreign:
            # One escaped line (logsetup): the container name and host come from the agent.
            log.warning("credential_foreign_container", extra={"fields": {
                "event": "credential_foreign_container", "container": container, "destination": host,
                "placeholders": len(result.foreign),
                "labels": ",".join(sorted({self._secrets[p].label for p in result.foreign if p in self._secrets})),
            }})
        return new_headers, new_target, result
