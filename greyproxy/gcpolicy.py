"""The garbage collector's settings for `serve` (docs/design.md, "The data path never waits").

Thousands of held connections and open tunnels mean hundreds of thousands of tracked objects;
with Python's defaults a full collection walks all of them and stops every greenlet while it
does (bench/hold_bench.py measured 80-290 ms with 10,000 held: the release p99).
"""

from __future__ import annotations

import gc

# Young collections this much rarer than Python's default (700): connections allocate in
# bursts, and each young collection walks every young object.
THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze_startup_objects() -> None:
    """Everything built at start (modules, the rule index, sessions, the CA) lives as long as
    the process: moved out of the collector's sight, no collection walks it again."""
    gc.collect()
    gc.freeze()
