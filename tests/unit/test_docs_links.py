"""Every repository path the README and docs/ name in backticks or links exists, and none points
outside the repository (users never have the files next to it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `greyproxy/proxy/exchange.py`, `docs/design.md`, [text](docs/x.md), `bench/run_bench.sh` …
PATH_RE = re.compile(r"`((?:greyproxy|docs|bench|tests|config|systemd|migrations|examples)/[\w./-]+)`"
                     r"|\]\((?!https?:)([^)#\s]+)")


def test_named_paths_exist():
    missing = []
    for doc in DOCS:
        for match in PATH_RE.finditer(doc.read_text()):
            path = (match.group(1) or match.group(2)).rstrip(".,:")
            if "*" in path or "<" in path:
                continue
            if not (ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_nothing_points_outside_the_repository():
    for doc in DOCS:
        assert "../shared" not in doc.read_text(), doc.name
