"""The audit log (docs/decisions.md#audit-observability-traffic-tools) in a real `greyproxy serve`: control-plane changes from REST, the
dashboard cookie, the WebSocket, the CLI and SIGHUP land with their actor, kind and
before/after; no secret reaches it; `greyproxy audit verify` finds a tampered entry."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading

import websocket

from tests.integration.netutil import socks_connect, wait_until

SECRET = "sk-live-audit-secret-4242"


def audit(gp, **params) -> list[dict]:
    resp = gp.api("GET", "/api/audit", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def verify(gp) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greyproxy", "audit", "verify", "--data-dir", str(gp.data_dir)],
                          capture_output=True, text=True, timeout=30)


def new_rule(gp, dest: str = "audit.example", **headers) -> dict:
    resp = gp.api("POST", "/api/rules", headers=headers or None, json={
        "container_pattern": "agent1", "destination_pattern": dest, "port_pattern": "443", "action": "allow"})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_rest_changes_are_audited_with_before_and_after(gp):
    rule = new_rule(gp)
    assert gp.api("PUT", f"/api/rules/{rule['id']}", json={"port_pattern": "8443"}).status_code == 200
    assert gp.api("DELETE", f"/api/rules/{rule['id']}").status_code in (200, 204)
    entries = audit(gp, kind="rule")
    assert [e["kind"] for e in entries] == ["rule.delete", "rule.update", "rule.create"]
    assert {e["actor"] for e in entries} == {"token"} and {e["target"] for e in entries} == {f"rule:{rule['id']}"}
    delete, update, create = entries
    assert create["before"] is None and create["after"]["destination_pattern"] == "audit.example"
    assert update["before"]["port_pattern"] == "443" and update["after"]["port_pattern"] == "8443"
    assert delete["before"]["port_pattern"] == "8443" and delete["after"] is None

    assert gp.api("PUT", "/api/settings", json={"theme": "dark"}).status_code == 200
    settings = audit(gp, kind="settings.update")[0]
    assert settings["after"]["theme"] == "dark" and settings["before"]["theme"] != "dark"
    assert gp.api("POST", "/api/allowall", json={"mode": "deny", "duration": "1m"}).status_code == 200
    assert audit(gp, kind="silent_mode")[0]["after"]["mode"] == "deny"

    # a credential: audited by label and preview, the value is nowhere
    cred = gp.api("POST", "/api/credentials", json={"label": "vendor", "value": SECRET}).json()
    entry = audit(gp, kind="credential")[0]
    assert entry["kind"] == "credential.create" and entry["after"]["label"] == "vendor"
    assert SECRET not in gp.api("GET", "/api/audit").text
    with sqlite3.connect(gp.data_dir / "greyproxy.db") as db:
        rows = db.execute("SELECT before, after FROM audit_log").fetchall()
    assert not any(SECRET in (text or "") for row in rows for text in row)
    assert cred["placeholder"] in json.dumps(entry["after"])

    assert [e["kind"] for e in audit(gp, since="2000-01-01T00:00:00Z", until="2001-01-01T00:00:00Z")] == []
    assert gp.api("GET", "/api/audit", params={"since": "yesterday"}).status_code == 400
    assert gp.api("GET", "/api/audit", params={"limit": "0"}).status_code == 400
    assert gp.api("GET", "/api/audit", token=False).status_code == 401


def test_actors_dashboard_websocket_cli_and_signal(gp, tmp_path):
    cookie = gp.session.get(f"{gp.api_url}/dashboard?token={gp.token}", allow_redirects=False).cookies
    resp = gp.session.post(f"{gp.api_url}/api/rules", cookies=cookie, headers={"Origin": gp.api_url}, json={
        "container_pattern": "agent1", "destination_pattern": "from-dashboard.example", "action": "allow"})
    assert resp.status_code == 201, resp.text

    # a held connection approved over the control WebSocket
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        rep=socks_connect(gp.ports["socks5"], "127.0.0.9", 9, user="agent1")[0]))
    worker.start()
    pending = wait_until(lambda: gp.api("GET", "/api/pending").json()["items"], 5)
    ws = websocket.create_connection(f"ws://127.0.0.1:{gp.ports['api']}/ws",
                                     header=[f"Authorization: Bearer {gp.token}"], timeout=10)
    json.loads(ws.recv())
    ws.send(json.dumps({"command": "deny", "pending_id": pending[0]["id"]}))
    wait_until(lambda: audit(gp, kind="pending"), 5)
    ws.close()
    worker.join(10)

    rules_file = tmp_path / "rules.yml"
    rules_file.write_text("rules:\n  - {container: agent1, destination: from-cli.example, ports: '*', action: allow}\n")
    done = subprocess.run([sys.executable, "-m", "greyproxy", "rules", "import", str(rules_file),
                           "--data-dir", str(gp.data_dir)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    gp.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: audit(gp, kind="config.reload"), 5)

    entries = audit(gp, limit=100)
    actors = {e["kind"]: e["actor"] for e in reversed(entries)}
    created = {e["after"]["destination_pattern"]: e["actor"] for e in entries if e["kind"] == "rule.create"}
    assert created["from-dashboard.example"] == "dashboard"
    assert created["127.0.0.9"] == actors["pending.deny"] and actors["pending.deny"].startswith("ws:")
    assert actors["rule.ingest"] == "cli"
    assert actors["config.reload"] == "signal"
    assert [e["kind"] for e in audit(gp, actor="cli")] == ["rule.ingest"]


def test_verify_finds_the_first_tampered_entry(gp):
    for i in range(3):
        new_rule(gp, f"chain{i}.example")
    ok = verify(gp)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    entries = audit(gp)
    assert all(e["prev_hash"] == older["hash"] for e, older in zip(entries, entries[1:], strict=False))

    gp.stop()
    db_path = gp.data_dir / "greyproxy.db"
    with sqlite3.connect(db_path) as db:
        second = db.execute("SELECT id FROM audit_log ORDER BY id LIMIT 1 OFFSET 1").fetchone()[0]
        db.execute("UPDATE audit_log SET after = replace(after, 'chain1', 'evil1') WHERE id = ?", (second,))
    bad = verify(gp)
    assert bad.returncode == 1 and f"entry #{second}" in bad.stderr and "changed" in bad.stderr, bad.stderr

    with sqlite3.connect(db_path) as db:  # undo the edit, then remove an entry instead
        db.execute("UPDATE audit_log SET after = replace(after, 'evil1', 'chain1') WHERE id = ?", (second,))
        db.execute("DELETE FROM audit_log WHERE id = ?", (second,))
    gone = verify(gp)
    assert gone.returncode == 1 and "removed or inserted" in gone.stderr, gone.stderr

    gp.start()  # a restart continues the chain from the last entry
    new_rule(gp, "after-restart.example")
    entries = audit(gp)
    assert entries[0]["prev_hash"] == entries[1]["hash"]
