"""SIGHUP (reload, docs/configuration.md): a changed config applies while a tunnel stays open; what only a restart can
change is reported and keeps its old value; a broken config or rules file changes nothing."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from tests.integration.netutil import EchoServer, recv_exact, socks_connect


@pytest.fixture
def echoes():
    servers = [EchoServer(), EchoServer(), EchoServer()]
    yield servers
    for server in servers:
        server.close()


def rules_yaml(*entries: tuple[str, int, str]) -> str:
    return "".join(f"- {{container: agent1, destination: '{host}', ports: '{port}', action: {action}}}\n"
                   for host, port, action in entries)


def hup_and_wait(gp, count: int) -> str:
    """Send SIGHUP and wait for the `count`-th reload to be logged; the log text."""
    gp.proc.send_signal(signal.SIGHUP)
    done = gp.wait_for(lambda: gp.logs().count("reload: ") >= count and "reload: applied" in gp.logs(), timeout=10)
    assert done, gp.logs()
    time.sleep(0.2)  # the warning lines follow the 'applied' line
    return gp.logs()


def test_sighup_applies_changes_while_a_tunnel_stays_open(gp_factory, tmp_path, echoes):
    kept, removed, added = echoes
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(rules_yaml((kept.host, kept.port, "allow"), (removed.host, removed.port, "allow")))
    config = ("rules_files: [rules.yml]\nlog: {level: info, format: text}\n"
              "dns: {upstream: ['127.0.0.1:9']}\nblocked_message: null\n")
    gp = gp_factory(config_yaml=config, name="data")
    # The config file sits in tmp_path (conftest writes <name>-config.yml beside the data dir).
    assert gp.config_path is not None and gp.config_path.parent == tmp_path
    file_rules = [r for r in gp.api("GET", "/api/rules").json()["items"] if r["created_by"] == "rules-file"]
    assert len(file_rules) == 2

    code, tunnel = socks_connect(gp.ports["socks5"], kept.host, kept.port)
    assert code == 0
    tunnel.sendall(b"one")
    assert recv_exact(tunnel, 3) == b"one"

    rules_file.write_text(rules_yaml((kept.host, kept.port, "allow"), (added.host, added.port, "allow")))
    gp.config_path.write_text(
        "rules_files: [rules.yml]\nlog: {level: debug, format: json}\n"
        "dns: {upstream: ['127.0.0.1:10']}\nblocked_message: 'ask a human'\nhold_seconds: 7\n"
        "api: {allowed_origins: ['http://example.test']}\n"  # not live: reported, old value kept
    )
    logs = hup_and_wait(gp, 1)

    tunnel.sendall(b"two")  # the tunnel survived the reload
    assert recv_exact(tunnel, 3) == b"two"
    tunnel.close()
    assert gp.api("GET", "/api/health").status_code == 200

    file_rules = {(r["destination_pattern"], r["port_pattern"])
                  for r in gp.api("GET", "/api/rules").json()["items"] if r["created_by"] == "rules-file"}
    assert file_rules == {(kept.host, str(kept.port)), (added.host, str(added.port))}
    code, sock = socks_connect(gp.ports["socks5"], added.host, added.port)  # the new rule applies
    sock.close()
    assert code == 0

    # The new log format applies: decision lines are now single JSON objects.
    lines = [json.loads(line) for line in gp.logs().splitlines() if line.startswith("{")]
    decisions = [d for d in lines if d.get("msg") == "decision"]
    assert decisions, logs
    last = decisions[-1]
    assert (last["destination"], last["port"], last["decision"], last["reason"]) == (
        added.host, added.port, "allow", "allowed_by_rule")
    assert {"container", "rule_id", "hold_ms", "dialed_ip"} <= set(last)
    # The debug level applies: a malformed DNS packet is now logged.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"\x12\x34\x01\x00\x00\x05" + b"\x00" * 14, ("127.0.0.1", gp.ports["dns"]))
    assert gp.wait_for(lambda: "malformed query dropped" in gp.logs())

    applied = next(line for line in gp.logs().splitlines() if "reload: applied" in line)
    for key in ("rules_files", "log.level", "log.format", "dns.upstream", "blocked_message"):
        assert key in applied, applied
    # A --hold-seconds flag (conftest passes one) still wins over the file after a reload.
    assert "hold_seconds" not in applied
    assert "only applied after a restart: api.allowed_origins" in gp.logs()
    refused = gp.api("GET", "/api/health", headers={"Origin": "http://example.test"})
    assert refused.status_code == 403  # the old origin list is still the one in force


def test_bad_reload_changes_nothing(gp_factory, tmp_path, echoes):
    kept = echoes[0]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(rules_yaml((kept.host, kept.port, "allow")))
    gp = gp_factory(config_yaml="rules_files: [rules.yml]\n")

    gp.config_path.write_text("rules_files: [rules.yml]\nno_such_key: 1\n")
    hup_and_wait(gp, 1)
    assert "configuration not reloaded: unknown configuration key 'no_such_key'" in gp.logs()

    gp.config_path.write_text("rules_files: [rules.yml]\nhold_seconds: 9\n")
    rules_file.write_text("- {container: agent1, destination: 'x[y'}\n")
    hup_and_wait(gp, 2)
    assert "rule 1" in gp.logs()
    rules = [r for r in gp.api("GET", "/api/rules").json()["items"] if r["created_by"] == "rules-file"]
    assert [(r["destination_pattern"], r["port_pattern"]) for r in rules] == [(kept.host, str(kept.port))]
    code, sock = socks_connect(gp.ports["socks5"], kept.host, kept.port)
    sock.close()
    assert code == 0
    assert gp.proc.poll() is None
    metrics = gp.api("GET", "/api/metrics").json()["reloads"]
    assert metrics == {"error": 2}


def test_bad_rules_file_stops_the_start(gp_factory, tmp_path):
    (tmp_path / "rules.yml").write_text("- {container: agent1, destination: b, action: maybe}\n")
    with pytest.raises(RuntimeError) as exc:
        gp_factory(config_yaml="rules_files: [rules.yml]\n")
    assert "cannot start" in str(exc.value) and "'action' must be allow or deny" in str(exc.value)
