"""Configuration: precedence, validation messages that name the key, GOST-era files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from greyproxy.config import DEFAULTS, ConfigError, ListenAddress, load_config

REPO = Path(__file__).resolve().parents[2]


def test_documented_default_file_matches_embedded_defaults():
    documented = yaml.safe_load((REPO / "config" / "greyproxy.yml").read_text())
    assert documented == DEFAULTS


def test_defaults_bind_loopback_on_the_greyproxy_ports(tmp_path):
    cfg = load_config(None, env={"GREYPROXY_DATA_HOME": str(tmp_path)})
    assert cfg.listen == {
        "http": ListenAddress("127.0.0.1", 43051),
        "socks5": ListenAddress("127.0.0.1", 43052),
        "dns": ListenAddress("127.0.0.1", 43053),
        "api": ListenAddress("127.0.0.1", 43080),
    }
    assert cfg.data_dir == tmp_path
    assert cfg.hold_seconds == 30 and cfg.api_auth == "token"
    assert cfg.identity_anonymous == "challenge"  # the 407 challenge by default


def test_precedence_flag_over_file_over_default(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("host: 10.0.0.1\nhold_seconds: 12\nlisten: {http: ':0', api: '127.0.0.1:9000'}\n")
    cfg = load_config(path, env={}, flags={"hold_seconds": 3, "listen_socks5": "[::1]:0"})
    assert cfg.hold_seconds == 3
    assert cfg.listen["http"] == ListenAddress("10.0.0.1", 0)
    assert cfg.listen["api"] == ListenAddress("127.0.0.1", 9000)
    assert cfg.listen["socks5"] == ListenAddress("::1", 0)
    assert cfg.listen["dns"] == ListenAddress("10.0.0.1", 43053)


def test_env_data_home_and_no_auth_flag(tmp_path):
    cfg = load_config(None, env={"GREYPROXY_DATA_HOME": str(tmp_path / "d")}, flags={"no_auth": True})
    assert cfg.data_dir == tmp_path / "d" and cfg.api_auth == "none"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus: 1\n", "unknown configuration key 'bogus'"),
        ("listen: {htp: ':1'}\n", "unknown configuration key 'listen.htp'"),
        ("listen: {http: 'nonsense'}\n", "'listen.http'"),
        ("listen: {http: ':70000'}\n", "out of range"),
        ("hold_seconds: soon\n", "'hold_seconds'"),
        ("api: {auth: maybe}\n", "'api.auth'"),
        ("container_modes: [{container: x, mode: loose}]\n", "container_modes[0].mode"),
        ("retention: {pending_ttl: forever}\n", "'retention.pending_ttl'"),
        ("log: {level: loud}\n", "'log.level'"),
        ("identity: {anonymous: deny}\n", "'identity.anonymous' must be 'challenge' or 'fallback'"),
        ("identity: {anonymus: fallback}\n", "unknown configuration key 'identity.anonymus'"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, env={})
    assert message in str(info.value)


def test_gost_style_file_is_accepted_for_migration(tmp_path):
    path = tmp_path / "gost.yml"
    path.write_text(
        """
services:
  - name: http-proxy
    addr: ":5051"
  - name: socks5-proxy
    addr: ":5052"
  - name: dns-proxy-udp
    addr: ":5053"
    forwarder: {nodes: [{name: q, addr: "9.9.9.9:53"}]}
  - name: something-else
    addr: ":1"
greyproxy:
  addr: ":5080"
  pathPrefix: /
  notifications: {enabled: false}
log: {level: info}
"""
    )
    cfg = load_config(path, env={})
    assert cfg.listen["http"].port == 5051 and cfg.listen["api"].port == 5080
    assert cfg.listen["http"].host == "127.0.0.1"
    assert cfg.raw["dns"]["upstream"] == ["9.9.9.9:53"]
    assert "services[something-else]" in cfg.ignored and "log" in cfg.ignored
    assert "greyproxy.pathPrefix" not in cfg.ignored and cfg.path_prefix == ""  # '/' = no prefix


@pytest.mark.parametrize(("given", "stored"), [("/", ""), ("/proxy", "/proxy"), ("/a/b/", "/a/b"), (None, "")])
def test_path_prefix(tmp_path, given, stored):
    path = tmp_path / "c.yml"
    path.write_text(f"api: {{path_prefix: {json.dumps(given)}}}\n")
    assert load_config(path, env={}).path_prefix == stored
    gost = tmp_path / "g.yml"
    gost.write_text(f"services: []\ngreyproxy: {{pathPrefix: {json.dumps(given)}}}\n")
    assert load_config(gost, env={}).path_prefix == stored


@pytest.mark.parametrize("bad", ["proxy", "/a//b", "/a/../b", "/a b", "/" + "x" * 200, "/a?b", "/%2e%2e"])
def test_bad_path_prefix(tmp_path, bad):
    path = tmp_path / "c.yml"
    path.write_text(f"api: {{path_prefix: {json.dumps(bad)}}}\n")
    with pytest.raises(ConfigError, match="path_prefix"):
        load_config(path, env={})


def test_identity_anonymous_fallback(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("identity: {anonymous: fallback}\n")
    assert load_config(path, env={}).identity_anonymous == "fallback"
