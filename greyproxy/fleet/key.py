"""The credential key in fleet mode (docs/fleet.md): every node must hold the same one, and it is
never stored in the database (a copy of the database alone never reveals a credential).

Where it comes from, first found wins:
1. `GREYPROXY_CREDENTIAL_KEY`: the 32 bytes in base64 (or 64 hex digits), e.g. from a secret store;
2. `fleet.credential_key_file` / `GREYPROXY_CREDENTIAL_KEY_FILE`: a file holding the 32 raw bytes
   (as `session.key`), or their base64 / hex text;
3. `<data_dir>/session.key`, as on a single node.

On a single node a missing `session.key` is generated. In fleet mode it is not: a node that
invented its own key would fail to decrypt what the others stored, and its start would take
those rows for secrets of a lost key and delete them. So a fleet node without a key runs with
credential support off and says why.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from greyproxy.credentials.crypto import KEY_FILE, KEY_SIZE, KeyFileError, load_or_create_key

ENV_KEY = "GREYPROXY_CREDENTIAL_KEY"


def _decode(raw: bytes, where: str) -> bytes:
    if len(raw) == KEY_SIZE:
        return raw
    text = raw.strip()
    candidates = []
    if len(text) == 2 * KEY_SIZE:
        try:
            candidates.append(binascii.unhexlify(text))
        except (binascii.Error, ValueError):
            pass
    try:
        candidates.append(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        pass
    for key in candidates:
        if len(key) == KEY_SIZE:
            return key
    raise KeyFileError(f"{where}: the credential key must be {KEY_SIZE} bytes (raw, base64 or hex); "
                       "credential support is disabled until it is fixed")


def credential_key(data_dir: Path, key_file: str | None, fleet: bool,
                   env: Mapping[str, str] | None = None) -> tuple[bytes, bool]:
    """(key, created); raises KeyFileError (credential support then stays off)."""
    env = os.environ if env is None else env
    if env.get(ENV_KEY):
        return _decode(env[ENV_KEY].encode(), ENV_KEY), False
    if key_file:
        try:
            raw = Path(key_file).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{key_file}: cannot read the credential key: {exc.strerror or exc}") from None
        return _decode(raw, key_file), False
    if fleet and not (data_dir / KEY_FILE).exists():
        raise KeyFileError(
            "fleet mode: no credential key (every node needs the same one): set GREYPROXY_CREDENTIAL_KEY, "
            f"fleet.credential_key_file, or copy one {KEY_FILE} into each node's data dir; "
            "credential support is disabled until then")
    return load_or_create_key(data_dir)
