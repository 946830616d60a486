"""The code explains itself or points at docs/: no comment, docstring or string in greyproxy/
(nor the default config, the systemd units or the examples) cites
a section (§N) or decision number (DNN) of reference documents this repository does not ship."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {".py", ".js", ".html", ".css", ".yml"}
CITATION = re.compile(r"§\s?\d|\bD\d{1,2}\b(?![-\w])")
RFC_SECTION = re.compile(r"RFC ?\d+,? §\s?[\d.]+")  # an RFC's own sections are fine


def citations(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if CITATION.search(RFC_SECTION.sub("", line))]


def test_the_pattern_finds_what_it_must():
    assert citations("x = 1  # the hold (§4.2)") and citations('"""Sessions (D12): ..."""')
    assert citations("// D31: never back") and citations("(§11.2, D15)")
    assert not citations("MAX_RECORD = 16384  # RFC 8446 §5.1: a record carries at most 2^14 bytes")
    assert not citations("see docs/decisions.md#identity; 3D10 and D100 and D1-2 are not citations")


def test_no_spec_citations_in_greyproxy():
    """The package, and what ships beside it for users: the default config, the units, the examples."""
    found = []
    paths = [p for top in ("greyproxy", "config", "systemd", "examples") for p in sorted((ROOT / top).rglob("*"))]
    for path in paths:
        if (path.suffix in SUFFIXES or path.suffix == ".service") and "__pycache__" not in path.parts \
                and path.is_file():
            found += [f"{path.relative_to(ROOT)}:{n}: {line[:100]}" for n, line in citations(path.read_text())]
    assert not found, "\n".join(found)
