"""Global credentials (docs/sessions.md): values encrypted at rest, loaded into the vault at start; bound to
destinations (`hosts`) and to containers (`containers`) when those are set."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

import peewee

from greyproxy.credentials.crypto import DecryptError, decrypt, encrypt
from greyproxy.credentials.placeholders import new_placeholder, value_preview
from greyproxy.credentials.vault import Secret, Vault
from greyproxy.events import Bus
from greyproxy.services.rules import Conflict, NotFound
from greyproxy.store.models import GlobalCredential
from greyproxy.timeutil import iso, utcnow

log = logging.getLogger("greyproxy.credentials")


class UnknownCredentials(ValueError):
    """A session asked for global credential labels that do not exist."""


class CredentialsUnavailable(RuntimeError):
    """No usable key (a broken session.key): credentials cannot be stored or used."""


def credential_to_json(row: GlobalCredential) -> dict[str, Any]:
    return {
        "id": row.id,
        "label": row.label,
        "placeholder": row.placeholder,
        "value_preview": row.value_preview,
        "hosts": json.loads(row.hosts_json or "[]"),
        "containers": json.loads(row.containers_json or "[]"),
        "created_at": iso(row.created_at),
    }


class CredentialService:
    def __init__(self, db: peewee.Database, bus: Bus, vault: Vault, key: bytes | None, key_error: str | None) -> None:
        self.db = db
        self.bus = bus
        self.vault = vault
        self.key = key
        self.key_error = key_error

    def require_key(self) -> bytes:
        if self.key is None:
            raise CredentialsUnavailable(self.key_error or "credential support is disabled")
        return self.key

    def load(self, key_was_created: bool) -> None:
        """Fill the vault; with a fresh key, rows that cannot be decrypted are purged."""
        if self.key is None:
            return
        for row in GlobalCredential.select():
            try:
                value = decrypt(self.key, bytes(row.value_enc)).decode()
            except DecryptError:
                if key_was_created:
                    log.warning("dropping global credential %s: it was encrypted with a lost key", row.label)
                    row.delete_instance()
                continue
            preview = value_preview(value)
            if row.value_preview != preview:  # stored by an older rule: recomputed from the value
                GlobalCredential.update(value_preview=preview).where(GlobalCredential.id == row.id).execute()
            self.vault.put(Secret(row.placeholder, value, row.label, None, tuple(json.loads(row.hosts_json or "[]")),
                                  tuple(json.loads(row.containers_json or "[]"))))

    def list(self) -> list[dict[str, Any]]:
        return [credential_to_json(r) for r in GlobalCredential.select().order_by(GlobalCredential.created_at)]

    def create(self, label: str, value: str, hosts: Sequence[str] = (), containers: Sequence[str] = ()) -> dict[str, Any]:
        key = self.require_key()
        if GlobalCredential.get_or_none(GlobalCredential.label == label) is not None:
            raise Conflict(f"a global credential labelled {label!r} already exists")
        row = GlobalCredential.create(
            id=f"cred_{secrets.token_hex(8)}",
            label=label,
            placeholder=new_placeholder("global"),
            value_enc=encrypt(key, value.encode()),
            value_preview=value_preview(value),
            hosts_json=json.dumps(list(hosts)),
            containers_json=json.dumps(list(containers)),
            created_at=utcnow(),
        )
        self.vault.put(Secret(row.placeholder, value, label, None, tuple(hosts), tuple(containers)))
        data = credential_to_json(row)
        self.bus.publish("credential.created", data)
        return data

    def delete(self, credential_id: str) -> None:
        row = GlobalCredential.get_or_none(GlobalCredential.id == credential_id)
        if row is None:
            raise NotFound(f"credential {credential_id} not found")
        row.delete_instance()
        self.vault.remove([row.placeholder])  # every session stops substituting it at once
        self.bus.publish("credential.deleted", {"id": credential_id, "label": row.label})

    def placeholders_for(self, labels: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """({label: placeholder}, unknown labels)."""
        rows = {r.label: r.placeholder for r in GlobalCredential.select().where(GlobalCredential.label.in_(list(labels)))}
        return rows, [label for label in labels if label not in rows]
