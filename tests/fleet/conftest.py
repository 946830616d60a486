"""Fleet fixtures: several real `greyproxy serve` nodes on one throwaway PostgreSQL database
(tests/pgcluster.py), each with its own data dir, node id and the one shared credential key."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def fleet_db(pg_cluster: Any) -> str:
    return pg_cluster.fresh_url()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.key"
    path.write_bytes(secrets.token_bytes(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def node_factory(gp_factory: Any, fleet_db: str, key_file: Path) -> Any:
    def make(name: str, hold_seconds: float = 10.0, extra_yaml: str = "", **kw: Any) -> Any:
        config = f"fleet: {{node_id: {name}, credential_key_file: '{key_file}'}}\n{extra_yaml}"
        return gp_factory(extra_args=["--database-url", fleet_db], config_yaml=config, hold_seconds=hold_seconds,
                          name=name, **kw)

    return make


@pytest.fixture
def two_nodes(node_factory: Any) -> tuple[Any, Any]:
    a = node_factory("node-a")
    b = node_factory("node-b")
    for node in (a, b):  # each is listening for the other's changes
        assert node.wait_for(lambda n=node: n.api("GET", "/api/health").json().get("fleet", {}).get("connected"),
                             timeout=10), node.logs()
    return a, b
