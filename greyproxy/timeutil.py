"""UTC time helpers: the DB stores naive UTC datetimes; the API speaks RFC 3339."""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC).replace(tzinfo=None)


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite may hand back text for rows written by other tools
        value = parse_iso(value)
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def parse_iso(text: str) -> dt.datetime:
    """RFC 3339 / ISO 8601 (also 'YYYY-MM-DDTHH:MM' and 'YYYY-MM-DD') to naive UTC; ValueError if bad."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.replace(tzinfo=UTC).timestamp()
