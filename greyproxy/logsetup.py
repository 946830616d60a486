"""Log output: one line per record, as text (`key=value` fields) or as one JSON object.

A record may carry structured fields (`log.info("decision", extra={"fields": {...}})`): the JSON
format puts them at the top level of the object, the text format appends them as `key=value`.
Level and format can be changed while running (SIGHUP reload), so the handler is ours and kept.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_RESERVED = ("time", "level", "logger", "msg")


def _iso(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: Any) -> str:
    text = "" if value is None else str(value)
    # Quote only when a reader splitting on spaces and '=' would otherwise get it wrong.
    if text == "" or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            head, sep, tail = line.partition("\n")  # keep a traceback below the fields
            pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            line = f"{head} {pairs}{sep}{tail}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd values (they become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out[key if key not in _RESERVED else f"field_{key}"] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


_handler: logging.Handler | None = None


def setup_logging(level: str, fmt: str) -> None:
    """Install (or re-configure) the one stderr handler on the root logger."""
    global _handler  # one process, one stderr: the handler is process-wide by nature
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
    _handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
