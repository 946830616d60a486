"""Fleet units: the shared credential key's sources, node ids, and what crosses between nodes."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from greyproxy.credentials.crypto import KeyFileError
from greyproxy.fleet.key import credential_key
from greyproxy.fleet.link import MAX_PAYLOAD, FleetLink
from greyproxy.fleet.node import node_id
from greyproxy.fleet.sync import to_message
from greyproxy.store.postgres import connect_params, safe_url


def test_key_from_the_environment_wins_base64_or_hex(tmp_path):
    key = secrets.token_bytes(32)
    assert credential_key(tmp_path, None, True, {"GREYPROXY_CREDENTIAL_KEY": base64.b64encode(key).decode()}) \
        == (key, False)
    assert credential_key(tmp_path, None, True, {"GREYPROXY_CREDENTIAL_KEY": key.hex()}) == (key, False)
    assert not (tmp_path / "session.key").exists()  # nothing written to the data dir


@pytest.mark.parametrize("content", ["raw", "base64", "hex"])
def test_key_file_raw_or_text(tmp_path, content):
    key = secrets.token_bytes(32)
    path = tmp_path / "k"
    path.write_bytes({"raw": key, "base64": base64.b64encode(key) + b"\n", "hex": key.hex().encode()}[content])
    assert credential_key(tmp_path, str(path), True, {}) == (key, False)


@pytest.mark.parametrize("bad", [b"short", b"x" * 31, base64.b64encode(b"y" * 16)])
def test_a_key_of_the_wrong_size_is_refused(tmp_path, bad):
    path = tmp_path / "k"
    path.write_bytes(bad)
    with pytest.raises(KeyFileError, match="32 bytes"):
        credential_key(tmp_path, str(path), True, {})
    with pytest.raises(KeyFileError):
        credential_key(tmp_path, None, True, {"GREYPROXY_CREDENTIAL_KEY": "not-a-key"})


def test_fleet_mode_never_makes_up_a_key(tmp_path):
    with pytest.raises(KeyFileError, match="every node needs the same one"):
        credential_key(tmp_path, None, True, {})
    assert not (tmp_path / "session.key").exists()
    key, created = credential_key(tmp_path, None, False, {})  # a single node makes one
    assert created and len(key) == 32
    assert credential_key(tmp_path, None, True, {}) == (key, False)  # a copied session.key is used


def test_node_id_is_kept_and_cleaned(tmp_path):
    first = node_id(None, tmp_path)
    assert first and node_id(None, tmp_path) == first
    assert node_id("proxy a/\n", tmp_path) == "proxy-a-"  # no separators a log line or a payload trips on
    assert node_id("a;b\x00c", tmp_path) == "a-b-c"
    assert len(node_id("n" * 500, tmp_path)) == 64


def test_messages_carry_ids_not_rows():
    rule = {"id": 7, "container_pattern": "a", "notes": "x" * 10_000}
    assert to_message("rule.created", rule) == {"t": "rule.created", "ids": [7]}
    assert to_message("pending_request.created", {"id": 3, "container_name": "c"}) == \
        {"t": "pending_request.created", "id": 3}
    assert to_message("session.created", "s1") == {"t": "session.created", "id": "s1"}
    assert to_message("transaction.new", {"id": 1}) is None  # traffic does not cross
    assert to_message("waiters.changed", {"container_name": "c", "host": "h", "port": 1, "previous_count": 0,
                                          "current_count": 2, "node": "other"}) is None  # not sent back


def test_a_message_over_the_notify_limit_becomes_a_resync():
    link = FleetLink("postgresql://u@127.0.0.1:1/db", "n1", lambda _payload: None, lambda _m: None, lambda: None)
    link.send({"t": "rule.deleted", "ids": [1], "data": {"notes": "x" * (MAX_PAYLOAD + 1)}})
    link.send({"t": "rule.created", "ids": [2]})
    first, second = (json.loads(link._outbox.get_nowait()) for _ in range(2))  # noqa: SLF001
    assert first == {"n": "n1", "t": "resync"} and second == {"n": "n1", "t": "rule.created", "ids": [2]}


def test_connection_parameters_are_bounded_and_urls_shown_without_password():
    params = connect_params("postgresql://u:secret@db.example:5433/gp?sslmode=require")
    assert params["connect_timeout"] == 5 and params["keepalives"] == 1 and params["sslmode"] == "require"
    assert "statement_timeout=" in params["options"] and "idle_in_transaction_session_timeout=" in params["options"]
    assert safe_url("postgresql://u:secret@db.example:5433/gp") == "postgresql://u@db.example:5433/gp"
    with pytest.raises(ValueError):
        connect_params("postgresql://[::1")
