"""Issue 12 (docs/decisions.md#interception-and-secrets), storage side: previews, the scrubber, container binding of placeholders, the
values the Redactor removes from a request, and the retro-active scrub job with its audit re-chain."""

from __future__ import annotations

import json
import logging

import pytest

from greyproxy.capture.redact import REDACTED, Redactor
from greyproxy.capture.scrub import MIN_EXCHANGE, MIN_GLOBAL, Scrubber, forms
from greyproxy.credentials.placeholders import mask_stored_preview, value_preview
from greyproxy.credentials.vault import Secret, Vault
from greyproxy.events import Bus
from greyproxy.services.audit import AuditLog, verify
from greyproxy.services.maintenance import ScrubJob
from greyproxy.store.db import bind, connect_sqlite
from greyproxy.store.migrate import apply_migrations
from greyproxy.store.models import AuditEntry, HttpTransaction, RequestLog

GPH = "greyproxy:credential:v1:global:" + "a" * 32
SPH = "greyproxy:credential:v1:sess-1:" + "b" * 32
SECRET = "sk-live-0123456789abcdef"


# -- previews ------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "preview"), [
    ("", "***"), ("a", "***"), ("abcdefghi", "***"), ("abcdefghijk", "***"),  # under 12: nothing
    ("abcdefghijkl", "abcd***"), (SECRET, "sk-l***"), ("x" * 200, "xxxx***"),
])
def test_preview_shows_at_most_four_characters_and_nothing_under_twelve(value, preview):
    assert value_preview(value) == preview
    shown = preview.replace("***", "")
    assert len(shown) <= 4 and (len(value) >= 12 or shown == "")


@pytest.mark.parametrize(("stored", "masked"), [
    ("sk-liv***def", "***"), ("***ab", "***"), ("***", "***"), ("sk-l***", "sk-l***"), ("whole-value", "***"),
])
def test_old_previews_are_masked_without_the_value(stored, masked):
    assert mask_stored_preview(stored) == masked


# -- the scrubber --------------------------------------------------------------------------
def vault_with(*secrets: Secret) -> Vault:
    vault = Vault()
    for s in secrets:
        vault.put(s)
    return vault


def test_nothing_to_do_without_values():
    scrubber = Scrubber(Vault())
    assert scrubber.everywhere() is None
    assert scrubber.for_exchange({}, []) is None
    assert scrubber.for_exchange(["abc"]) is None  # under MIN_EXCHANGE: never scrubbed
    assert scrubber.text("anything") == "anything"


def test_every_form_of_a_vault_value_is_replaced_in_text_and_bytes():
    value = 'p@ss/"w0rd" <x>&é'
    scrubber = Scrubber(vault_with(Secret(GPH, value, "k", None)))
    scrub = scrubber.everywhere()
    for form in forms(value):
        assert scrub(f"a {form} b") == f"a {REDACTED} b", form
        assert scrub(f"a {form} b".encode()) == f"a {REDACTED} b".encode(), form
    assert scrub("nothing here") == "nothing here"


def test_vault_changes_rebuild_the_matcher():
    vault = Vault()
    scrubber = Scrubber(vault)
    assert scrubber.everywhere() is None
    vault.put(Secret(GPH, SECRET, "k", None))
    assert scrubber.text(f"x{SECRET}x") == f"x{REDACTED}x"
    vault.remove([GPH])
    assert scrubber.everywhere() is None


def test_short_values_are_left_alone_globally_but_not_in_their_own_exchange():
    short = "abcde"  # MIN_EXCHANGE <= len < MIN_GLOBAL
    assert MIN_EXCHANGE <= len(short) < MIN_GLOBAL
    scrubber = Scrubber(vault_with(Secret(GPH, short, "k", None)))
    assert scrubber.everywhere() is None
    assert scrubber.for_exchange({short: GPH})(f"echo {short}") == f"echo {REDACTED}"


def test_overlapping_values_leave_nothing_of_either():
    scrubber = Scrubber(vault_with(Secret(GPH, "ABCDEFGH", "a", None), Secret(SPH, "EFGHIJKL", "b", "s")))
    assert scrubber.text("xxABCDEFGHIJKLyy") == f"xx{REDACTED}yy"


def test_cut_values_at_the_edges_of_a_body_or_fragment():
    scrub = Scrubber(vault_with(Secret(GPH, SECRET, "k", None))).everywhere()
    assert scrub(b"... sk-live-0123", tail=True) == b"... " + REDACTED.encode()
    assert scrub(b"... sk-live-0123") == b"... sk-live-0123"  # only a truncated body is trimmed
    assert scrub(b"89abcdef and on", head=True) == REDACTED.encode() + b" and on"


def test_headers_are_scrubbed_whatever_their_name():
    scrub = Scrubber(Vault()).for_exchange(["Bearer raw-token-0001", "raw-token-0001"])
    stored = Redactor().headers([("Echo-Authorization", "Bearer raw-token-0001"), ("X-Seen", "t=raw-token-0001"),
                                 ("Authorization", "Bearer raw-token-0001")])
    assert scrub.headers(stored) == {"Echo-Authorization": [REDACTED], "X-Seen": [f"t={REDACTED}"],
                                     "Authorization": [REDACTED]}


def test_redacted_values_of_a_request():
    values = Redactor().redacted_values(
        [("Authorization", "Bearer tok-AAAAAAAA"), ("Cookie", "theme=dark; sid=cookie-BBBB"), ("Accept", "*/*"),
         ("X-Api-Key", REDACTED), ("Proxy-Authorization", "Basic YWdlbnQxOnB3LUNDQ0NDQ0ND")],
        "http://h/p?x=1&token=q%2BDDDD&api_key=EEEE#frag")
    assert {"Bearer tok-AAAAAAAA", "tok-AAAAAAAA", "theme=dark; sid=cookie-BBBB", "cookie-BBBB",
            "agent1:pw-CCCCCCCC", "pw-CCCCCCCC", "q%2BDDDD", "q+DDDD", "EEEE"} <= set(values)
    # parts under PART_MIN are no credential: scrubbing "dark" would shred the stored response
    assert "dark" not in values and "*/*" not in values and REDACTED not in values


# -- binding placeholders to their owner ---------------------------------------------------
def test_session_secret_only_for_its_container_or_named_session(caplog):
    vault = vault_with(Secret(SPH, "session-value-1234", "gh", "sess-1", (), ("claude",)),
                       Secret(GPH, SECRET, "openai", None, (), ("claude", "build-*")))
    headers = [("Authorization", f"Bearer {SPH}"), ("X-Api-Key", GPH)]
    out, _, result = vault.substitute_request(headers, "/", "api.example", container="claude")
    assert dict(out) == {"Authorization": "Bearer session-value-1234", "X-Api-Key": SECRET}
    assert result.reverse == {"session-value-1234": SPH, SECRET: GPH}
    out, _, result = vault.substitute_request(headers, "/", "api.example", container="build-7")
    assert dict(out) == {"Authorization": f"Bearer {SPH}", "X-Api-Key": SECRET}
    with caplog.at_level(logging.WARNING, logger="greyproxy.credentials"):
        out, target, result = vault.substitute_request(headers, f"/q?k={GPH}", "api.example", container="intruder")
    assert out == headers and target == f"/q?k={GPH}" and not result.changed and not result.reverse
    assert sorted(result.foreign) == sorted([SPH, GPH, GPH])
    assert any(r.getMessage() == "credential_foreign_container" for r in caplog.records)
    # naming the session is enough even under another name
    out, _, _ = vault.substitute_request(headers[:1], "/", "api.example", container="other", session_id="sess-1")
    assert dict(out) == {"Authorization": "Bearer session-value-1234"}


# -- the retro-active job ------------------------------------------------------------------
@pytest.fixture
def db(tmp_path):
    database = connect_sqlite(tmp_path / "t.db")
    bind(database)
    apply_migrations(database)
    yield database
    database.close()


def test_scrub_job_rewrites_rows_and_rechains_the_audit_log(db):
    import datetime as dt

    bus = Bus()
    vault = vault_with(Secret(GPH, SECRET, "openai", None))
    audit = AuditLog(db, bus, {})
    audit.record("credential.create", "credential:c1", None,
                 {"id": "c1", "label": "openai", "placeholder": GPH, "value_preview": "sk-liv***def"}, actor="token")
    audit.record("credential.create", "credential:c2", None,
                 {"id": "c2", "label": "gone", "placeholder": SPH, "value_preview": "abcdef***xyz"}, actor="token")
    audit.record("rule.create", "rule:1", None, {"notes": f"pasted {SECRET} by mistake"}, actor="cli")
    when = dt.datetime(2030, 1, 1)
    txn = HttpTransaction.create(
        timestamp=when, container_name="c", destination_host="h", destination_port=80, method="GET",
        url=f"http://h/?token=raw-query-TOKEN&k={SECRET}",
        request_headers=json.dumps({"Cookie": ["sid=raw-cookie-VALUE"], "X-Custom-Token": ["custom-raw-VALUE"]}),
        response_headers=json.dumps({"Echo-Cookie": ["sid=raw-cookie-VALUE"], "Echo": [SECRET]}),
        response_body=json.dumps({"cookie": "sid=raw-cookie-VALUE", "t": "raw-query-TOKEN", "k": SECRET,
                                  "c": "custom-raw-VALUE"}).encode(),
        request_body=None)
    RequestLog.create(timestamp=when, container_name="c", destination_host="h", result="allowed",
                      reason=f"x {SECRET}")
    scrubber = Scrubber(vault)
    job = ScrubJob(db, bus, lambda: Redactor(["x-custom-token"]), scrubber, vault, audit)
    assert job.run() >= 4
    row = HttpTransaction.get_by_id(txn.id)
    stored = "".join([row.url, row.request_headers, row.response_headers, bytes(row.response_body).decode()])
    for secret in (SECRET, "raw-query-TOKEN", "raw-cookie-VALUE", "custom-raw-VALUE"):
        assert secret not in stored
    assert json.loads(row.request_headers) == {"Cookie": [REDACTED], "X-Custom-Token": [REDACTED]}
    assert SECRET not in RequestLog.get().reason
    entries = list(AuditEntry.select().order_by(AuditEntry.id))
    text = "".join((e.before or "") + (e.after or "") for e in entries)
    assert SECRET not in text and "sk-liv***def" not in text and "abcdef***xyz" not in text
    assert '"value_preview":"sk-l***"' in text and '"value_preview":"***"' in text
    rows = [(e.id, e.timestamp, e.actor, e.kind, e.target, e.before, e.after, e.prev_hash, e.hash) for e in entries]
    assert verify(rows) == (4, None)
    assert entries[-1].kind == "maintenance.scrub"
    audit.record("rule.delete", "rule:1", None, None, actor="cli")  # the chain goes on from the new head
    entries = list(AuditEntry.select().order_by(AuditEntry.id))
    rows = [(e.id, e.timestamp, e.actor, e.kind, e.target, e.before, e.after, e.prev_hash, e.hash) for e in entries]
    assert verify(rows) == (5, None)
    assert job.run() == 0  # idempotent


def test_migration_0008_masks_old_previews_and_adds_container_binding(tmp_path):
    import datetime as dt
    import importlib

    from greyproxy.store import migrate as runner

    database = connect_sqlite(tmp_path / "m.db")
    bind(database)
    database.create_tables([runner.SchemaMigration], safe=True)
    for version, name in runner.available():
        if version >= 8:
            break
        importlib.import_module(f"migrations.{name}").up(database)
        runner.SchemaMigration.create(version=version, name=name, applied_at=dt.datetime(2030, 1, 1))
    for i, preview in enumerate(["sk-liv***def", "***ab", "***"]):
        database.execute_sql(
            "INSERT INTO global_credentials (id, label, placeholder, value_enc, value_preview, hosts_json,"
            " created_at) VALUES (?, ?, ?, x'00', ?, '[]', '2030-01-01')", (f"c{i}", f"l{i}", f"p{i}", preview))
    assert 8 in runner.apply_migrations(database)
    rows = database.execute_sql("SELECT value_preview, containers_json FROM global_credentials ORDER BY id").fetchall()
    assert rows == [("***", "[]")] * 3
    database.close()
