"""Operations pieces in isolation: log formats, rules YAML, the Docker listing parser and cache,
sd_notify on abstract sockets, the user unit file, metrics snapshot = exposition."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greyproxy import sdnotify
from greyproxy.cli_install import user_unit
from greyproxy.logsetup import JsonFormatter, TextFormatter
from greyproxy.metrics import Metrics
from greyproxy.proxy.docker import (
    ContainerInfo,
    DockerResolver,
    EngineError,
    containers_by_ip,
    parse_http_response,
)
from greyproxy.rulesyaml import RulesFileError, dump_rules, parse_rules

REPO = Path(__file__).resolve().parents[2]


def _record(msg: str, fields: dict | None = None) -> logging.LogRecord:
    record = logging.LogRecord("greyproxy.decision", logging.INFO, __file__, 1, msg, (), None)
    if fields is not None:
        record.fields = fields
    return record


# -- logging -----------------------------------------------------------------------------------
def test_json_log_line_is_one_object_with_top_level_fields():
    fields = {"container": "agent 1", "destination": "x.com", "port": 443, "decision": "block",
              "reason": "denied_by_rule", "rule_id": 7, "hold_ms": 12, "msg": "clash"}
    line = JsonFormatter().format(_record('decision "quoted"', fields))
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == 'decision "quoted"' and data["level"] == "info" and data["logger"] == "greyproxy.decision"
    assert {k: data[k] for k in ("container", "port", "rule_id", "hold_ms")} == {
        "container": "agent 1", "port": 443, "rule_id": 7, "hold_ms": 12}
    assert data["field_msg"] == "clash"  # a field may not overwrite the envelope
    assert data["time"].endswith("Z")


def test_text_log_line_appends_key_values_quoting_when_needed():
    line = TextFormatter().format(_record("decision", {"container": "agent 1", "port": 443, "rule_id": None}))
    assert line.endswith('decision container="agent 1" port=443 rule_id=""')


# -- rules YAML ----------------------------------------------------------------------------------
def test_rules_yaml_round_trip_skips_builtin_session_and_expired():
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(microsecond=0)
    items = [
        {"id": 3, "container_pattern": "agent1", "destination_pattern": "*.github.com", "port_pattern": "443",
         "action": "allow", "notes": "code", "expires_at": future.isoformat().replace("+00:00", "Z"),
         "source": "global", "is_active": True},
        {"id": 1, "container_pattern": "*", "destination_pattern": "localhost", "port_pattern": "*",
         "action": "allow", "source": "builtin", "is_active": True},
        {"id": 2, "container_pattern": "c", "destination_pattern": "s.example", "port_pattern": "*",
         "action": "allow", "source": "session", "is_active": True},
        {"id": 4, "container_pattern": "agent1", "destination_pattern": "evil.test", "port_pattern": "*",
         "action": "deny", "notes": None, "source": "global", "is_active": True},
    ]
    text = dump_rules(items, header="test")
    assert text.startswith("# test\n")
    entries, expired = parse_rules(text)
    assert expired == 0
    assert [(e.container_pattern, e.destination_pattern, e.port_pattern, e.action, e.notes) for e in entries] == [
        ("agent1", "*.github.com", "443", "allow", "code"), ("agent1", "evil.test", "*", "deny", None)]
    assert entries[0].expires_at == future.replace(tzinfo=None)
    assert 7000 < entries[0].ingest_item()["expires_in_seconds"] <= 7200


def test_rules_yaml_accepts_api_names_numbers_and_timestamps():
    text = """
rules:
  - {container_pattern: a, destination_pattern: Example.COM., port_pattern: 443}
  - {container: b, destination: x.test, ports: "80,443", expires_at: 2001-01-01T00:00:00Z}
  - {container: a, destination: example.com, ports: 443}
"""
    entries, expired = parse_rules(text)
    assert expired == 1
    assert len(entries) == 1  # the duplicate collapses
    assert (entries[0].destination_pattern, entries[0].port_pattern, entries[0].action) == ("example.com", "443",
                                                                                            "allow")


@pytest.mark.parametrize("text, needle", [
    ("- {container: a}", "destination"),
    ("- {container: a, destination: b, action: maybe}", "action"),
    ("- {container: a, destination: b, ports: 99999}", "port"),
    ("- {container: a, destination: b, colour: red}", "colour"),
    ("- {container: a, destination: b, expires_at: soon}", "expires_at"),
    ("{a: 1}", "list"),
    ("- [1, 2]", "mapping"),
    ("- {container: a, destination: 'x[y'}", "rule 1"),
    ("key: [unclosed", "YAML"),
])
def test_rules_yaml_errors_name_the_problem(text, needle):
    with pytest.raises(RulesFileError) as exc:
        parse_rules(text)
    assert needle in str(exc.value)


# -- Docker --------------------------------------------------------------------------------------
LISTING = [
    {"Id": "0123456789abcdef", "Names": ["/my-app-1"],
     "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2", "GlobalIPv6Address": ""},
                                      "other": {"IPAddress": "10.9.0.3"}}}},
    {"Id": "fedcba9876543210", "Names": [], "NetworkSettings": {"Networks": {"n": {"IPAddress": "172.17.0.3"}}}},
    {"Id": "x", "Names": ["/no-net"], "NetworkSettings": None},
    "garbage",
]


def test_container_listing_parser():
    found = containers_by_ip(LISTING)
    assert found["172.17.0.2"] == ContainerInfo("my-app-1", "0123456789ab")
    assert found["10.9.0.3"].name == "my-app-1"
    assert found["172.17.0.3"] == ContainerInfo("fedcba987654", "fedcba987654")  # no name: the short id
    assert "" not in found
    with pytest.raises(EngineError):
        containers_by_ip({"message": "nope"})


def test_http_response_parsing_handles_chunked_and_errors():
    body = json.dumps(LISTING).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 50]), body[i:i + 50]) for i in range(0, len(body), 50))
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
    assert json.loads(parse_http_response(raw)) == LISTING
    with pytest.raises(EngineError, match="500"):
        parse_http_response(b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}")
    with pytest.raises(EngineError):
        parse_http_response(b"SSH-2.0-OpenSSH\r\n")


class _Engine:
    """A minimal Docker Engine on a unix socket: answers every request with LISTING."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.requests += 1
                body = json.dumps(LISTING).encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))


def test_resolver_caches_hits_and_misses_with_their_own_ttls(tmp_path):
    engine = _Engine(tmp_path / "docker.sock")
    now = [1000.0]
    results: list[str] = []
    resolver = DockerResolver(str(engine.path), cache_ttl=30, miss_ttl=5, clock=lambda: now[0],
                              on_result=results.append)
    assert resolver.lookup("::ffff:172.17.0.2") == ContainerInfo("my-app-1", "0123456789ab")
    assert engine.requests == 1
    assert resolver.lookup("172.17.0.2").name == "my-app-1"  # a hit from memory
    assert resolver.lookup("192.0.2.1") is None  # a miss within MISS_TTL of the listing: no new request
    assert engine.requests == 1
    now[0] += 5.1
    assert resolver.lookup("192.0.2.1") is None  # miss expired: one new listing
    assert engine.requests == 2
    assert resolver.lookup("192.0.2.2") is None and engine.requests == 2
    assert resolver.lookup("not an ip") is None
    assert results == ["hit", "hit", "miss", "miss", "miss"]
    engine.sock.close()
    os.unlink(engine.path)
    now[0] += 10
    assert resolver.lookup("172.17.0.2").name == "my-app-1"  # hits outlive an engine outage
    now[0] += 30
    assert resolver.lookup("172.17.0.2") is None  # ... until they expire
    assert results[-1] == "error"


# -- sd_notify -----------------------------------------------------------------------------------
def test_sd_notify_abstract_and_path_sockets(tmp_path):
    name = f"greyproxy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as path_sock:
        abstract.bind(b"\0" + name.encode())
        path_sock.bind(str(tmp_path / "n.sock"))
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": f"@{name}"})
        assert abstract.recv(100) == b"READY=1"
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        assert path_sock.recv(100) == b"STOPPING=1"
    assert not sdnotify.notify("READY=1", {})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:3"})


# -- unit file and metrics -----------------------------------------------------------------------
def test_shipped_user_unit_is_what_service_install_writes():
    assert (REPO / "systemd" / "greyproxy-user.service").read_text() == user_unit("%h/.local/bin/greyproxy serve")


def test_metrics_snapshot_matches_exposition():
    m = Metrics()
    m.bind(version="9.9", held=lambda: 2, pending=lambda: 1 / 0, tunnels=lambda: 3)
    for reason in ("allowed_by_rule", "allowed_by_rule", "silent_allow"):
        m.decided("allowed", reason)
    m.decided("blocked", "denied_by_rule")
    m.timing(0.0002, None)
    m.timing(0.0003, 1.5)
    m.relayed(10, 20)
    m.db_batch("request_logs", 0.002, 4)
    snap = m.snapshot()
    assert snap["connections"] == {"allowed": 3, "blocked": 1, "by_reason": {
        "allowed": {"allowed_by_rule": 2, "silent_allow": 1}, "blocked": {"denied_by_rule": 1}}}
    assert snap["held_connections"] == 2 and snap["open_tunnels"] == 3
    assert snap["pending_requests"] is None  # a failing source reads as unknown, not a crash
    assert snap["hold_seconds"]["count"] == 1 and snap["decision_seconds"]["count"] == 2
    assert snap["bytes_relayed"] == {"up": 10, "down": 20}
    assert snap["db_write_batches"]["request_logs"]["count"] == 1 and snap["db_rows_written"] == {"request_logs": 4}
    families = {f.name: f for f in text_string_to_metric_families(m.prometheus_text().decode())}
    allowed = sum(s.value for s in families["greyproxy_connections"].samples
                  if s.name.endswith("_total") and s.labels["result"] == "allowed")
    assert allowed == 3
