"""What the README and docs/ name exists in the repository: every relative link (and the heading
its #anchor names), every repository path in backticks, every file path in backticks; and
nothing points outside the repository or at section numbers of documents it does not ship."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TOP = ("greyproxy", "docs", "bench", "tests", "config", "systemd", "migrations", "examples", ".ci")
# `greyproxy/proxy/exchange.py`, `docs/design.md`, `bench/run_bench.sh` ...: repository paths
REPO_PATH_RE = re.compile(r"`((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./-]*)`")
# `policy/addresses.py`, `setup.cfg`, `mitm/intercept.py` ...: any backticked file name with a known suffix
FILE_RE = re.compile(r"`([\w./-]+\.(?:py|md|yml|yaml|sh|cfg|toml|service|js|css|html))`")
# [text](target) outside code: relative targets only
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
FENCE_RE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CITATION_RE = re.compile(r"§\s?\d|\bD\d{1,2}\b(?![-\w])")


def _prose(doc: Path) -> str:
    """The text without fenced code blocks (a shell example may name files it creates)."""
    return FENCE_RE.sub("", doc.read_text())


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", _prose(doc), re.M)}


def _exists_in_repo(path: str) -> bool:
    # a path in prose is from the repository root, or (for module paths like `policy/canonical.py`
    # and `mitm/intercept.py`) from inside the package
    return any((base / path).exists() for base in (ROOT, ROOT / "greyproxy", ROOT / "greyproxy" / "proxy"))


def test_repository_paths_exist():
    missing = []
    for doc in DOCS:
        for match in REPO_PATH_RE.finditer(_prose(doc)):
            path = match.group(1).rstrip(".,:")
            if "*" in path or "<" in path:
                continue
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing


def test_named_files_exist():
    missing = []
    for doc in DOCS:
        for match in FILE_RE.finditer(_prose(doc)):
            path = match.group(1)
            if path.startswith(("/", "~", ".venv")) or "<" in path or "*" in path or "NNNN" in path:
                continue  # a file on the user's machine, or a pattern
            if "/" not in path and not (ROOT / path).exists() and path not in {"launch.py", "my_agent.py"}:
                # a bare file name: it must be somewhere in the repository
                if not any(ROOT.glob(f"**/{path}")):
                    missing.append(f"{doc.relative_to(ROOT)}: {path}")
                continue
            if "/" in path and not _exists_in_repo(path):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing


def test_relative_links_and_anchors_resolve():
    broken = []
    for doc in DOCS:
        for match in LINK_RE.finditer(_prose(doc)):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_nothing_points_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text, doc.name
        for match in LINK_RE.finditer(text):
            target = match.group(1)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                assert ROOT in (doc.parent / target.partition("#")[0]).resolve().parents or \
                    (doc.parent / target.partition("#")[0]).resolve() == ROOT, f"{doc.name}: {target}"


def test_no_section_numbers_of_unshipped_documents():
    """§N and DNN named sections of reference documents this repository does not ship."""
    found = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if CITATION_RE.search(re.sub(r"RFC ?\d+ §\s?[\d.]+", "", line)):  # an RFC's own sections are fine
                found.append(f"{doc.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, found
