"""Duration parsing for rule expiry (docs/user-guide.md#rules-pending-requests-and-holds) and silent mode."""

from __future__ import annotations

import math
import re

NAMED_DURATIONS: dict[str, int] = {
    "once": 30,
    "1h": 3600,
    "12h": 43200,
    "24h": 86400,
    "7d": 604800,
    "30d": 2592000,
}
PERMANENT = "permanent"
# A rule that lasts until greyproxy next starts: no expiry, removed at start (docs/user-guide.md#until-restart).
UNTIL_RESTART = "restart"
SILENT_MODE_MAX_SECONDS = 8 * 3600

_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC greek mu, as Go also accepts
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,  # not Go, but '2d' is what people type
}
# Longest units first so 'ms' is not read as 'm' followed by garbage.
_UNITS_RE = "|".join(sorted((re.escape(u) for u in _UNIT_SECONDS), key=len, reverse=True))
_COMPONENT_RE = re.compile(rf"(\d+\.?\d*|\.\d+)({_UNITS_RE})")


class DurationError(ValueError):
    """A duration string is not acceptable; the message says why."""


def parse_go_duration(text: str) -> float:
    """Seconds in a Go `time.ParseDuration` string ('1h30m', '250ms', '2.5h', plus 'd')."""
    s = (text or "").strip()
    if not s:
        raise DurationError("duration is required")
    if s.startswith("-"):
        raise DurationError(f"duration {text!r} must not be negative")
    if s.startswith("+"):
        s = s[1:]
    if s == "0":
        return 0.0  # Go accepts a bare zero without a unit
    total, pos = 0.0, 0
    while pos < len(s):
        m = _COMPONENT_RE.match(s, pos)
        if m is None:
            raise DurationError(
                f"invalid duration {text!r}: expected a number followed by a unit (ns, us, ms, s, m, h, d)"
            )
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total


def rule_duration(text: str | None) -> int | None:
    """Seconds until a rule expires, or None for permanent (an unknown duration is an error, never permanent)."""
    if text is None:
        return None
    s = text.strip()
    if s.lower() in ("", PERMANENT, UNTIL_RESTART):
        return None  # 'restart' has no expiry: see rule_type_for
    named = NAMED_DURATIONS.get(s.lower())
    if named is not None:
        return named
    try:
        seconds = parse_go_duration(s)
    except DurationError:
        raise DurationError(
            f"invalid duration {text!r}: use permanent, {', '.join(NAMED_DURATIONS)}, {UNTIL_RESTART} "
            "or a Go duration such as 30m or 1h30m"
        ) from None
    if seconds < 1:
        raise DurationError(f"duration {text!r} must be at least 1s")
    return int(seconds)


def rule_type_for(text: str | None, seconds: int | None) -> str:
    """The stored rule_type of a rule made with duration `text` (`seconds` = rule_duration(text))."""
    if text is not None and text.strip().lower() == UNTIL_RESTART:
        return "until_restart"
    return "temporary" if seconds else "permanent"


def silent_mode_duration(text: str) -> int | None:
    """Seconds silent mode stays on, or None for 'until restart' (positive, at most 8h)."""
    s = (text or "").strip()
    if s == "restart":
        return None
    seconds = parse_go_duration(s)
    if seconds <= 0:
        raise DurationError("duration must be positive")
    if seconds > SILENT_MODE_MAX_SECONDS:
        raise DurationError("duration must be at most 8h")
    return math.ceil(seconds)  # a sub-second duration still means "on for a moment", not off
