"""The audit chain stays one verifiable line while two nodes write entries at the same time
(issue 14): writers take a transaction-scoped advisory lock around "read the head, insert"."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

RULES_PER_NODE = 40


def test_concurrent_writers_on_two_nodes_keep_one_chain(two_nodes, fleet_db, tmp_path):
    a, b = two_nodes
    errors: list[str] = []

    def writer(node, tag: str) -> None:
        for i in range(RULES_PER_NODE):  # bounded
            resp = node.api("POST", "/api/rules", json={"container_pattern": f"agent-{tag}",
                                                        "destination_pattern": f"h{i}.{tag}.example"})
            if resp.status_code != 201:
                errors.append(resp.text)

    threads = [threading.Thread(target=writer, args=(n, t)) for n, t in ((a, "a"), (b, "b"), (a, "c"), (b, "d"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["GREYPROXY_DATABASE_URL"] = fleet_db
    out = subprocess.run([sys.executable, "-m", "greyproxy", "audit", "verify", "--data-dir", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert f"audit log intact: {4 * RULES_PER_NODE} entries" in out.stdout
