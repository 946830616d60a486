"""Log output: one line per record, as text (`key=value` fields) or as one JSON object.

A record may carry structured fields (`log.info("decision", extra={"fields": {...}})`): the JSON
format puts them at the top level of the object, the text format appends them as `key=value`.
Level and format can be changed while running (SIGHUP reload), so the handler is ours and kept.

Values come from hostile clients (a SOCKS5 domain, a Host header, an exception's text), so
one event is always exactly one line and no value can pass for another field or another line:

- text: a field value is written bare only when it is printable and holds no space, `=`, `"`
  or backslash; otherwise it is quoted, with `\\`, `"`, `\\n`, `\\r`, `\\t` and every other
  non-printable character (controls, Unicode line separators, bidi and other format
  characters) escaped (`\\xHH`, `\\uHHHH`). Message arguments (`log.info("x %s", value)`) are
  escaped the same way (quoted when they hold `=`, `"`, a backslash or something
  unprintable), and what is left of the message has its unprintable characters escaped. A
  traceback goes on the same line, as an escaped `exception="..."` field.
- json: the standard escaping, plus the line separators JSON may leave raw (U+0085, U+2028,
  U+2029), so a reader splitting on any line break still sees one object per line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_RESERVED = ("time", "level", "logger", "msg")
_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_QUOTES = frozenset(' ="\\')
_ARG_NEEDS_QUOTES = frozenset('="\\')


def _iso(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _escape_char(c: str) -> str:
    simple = _SIMPLE_ESCAPES.get(c)
    if simple is not None:
        return simple
    if c == " " or c.isprintable():
        return c
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """Backslashes, quotes and every unprintable character escaped (the inside of a quoted value)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_escape_char(c) for c in text)


def escape_unprintable(text: str) -> str:
    """Only the unprintable characters escaped: what cannot break a line or fake a terminal stays."""
    if text.isprintable():
        return text
    return "".join(c if c == " " or c.isprintable() else _escape_char(c) for c in text)


def text_value(value: Any, specials: frozenset[str] = _NEEDS_QUOTES) -> str:
    """One field value for the text format: bare if safe, else quoted and escaped."""
    text = "" if value is None else str(value)
    if text and text.isprintable() and not any(c in specials for c in text):
        return text
    return f'"{escape(text)}"'


class _SafeArg:
    """A message argument as the text format writes it (%s quoted when needed, %r escaped)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        text = str(self.value)
        if text.isprintable() and not any(c in _ARG_NEEDS_QUOTES for c in text):
            return text
        return f'"{escape(text)}"'

    def __repr__(self) -> str:
        return escape_unprintable(repr(self.value))


def _safe(arg: Any) -> Any:
    # Numbers stay themselves so %d, %x and %.2f keep working; everything else is wrapped.
    if arg is None or isinstance(arg, (int, float)):
        return arg
    return _SafeArg(arg)


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with every argument escaped, on one line."""
    msg = str(record.msg)
    args = record.args
    if args:
        try:
            if isinstance(args, Mapping):
                msg = msg % {k: _safe(v) for k, v in args.items()}
            else:
                msg = msg % tuple(_safe(a) for a in args)
        except Exception:  # a bad format string: what logging itself would have produced
            try:
                msg = record.getMessage()
            except Exception:
                msg = f"{record.msg!r} {record.args!r}"
    return escape_unprintable(msg)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {safe_message(record)}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{text_value(k)}={text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += f" exception={text_value(record.exc_text)}"
        if record.stack_info:
            line += f" stack={text_value(self.formatStack(record.stack_info))}"
        return line


# Characters JSON leaves unescaped but line-splitting readers (str.splitlines) break on.
_JSON_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd values (they become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            msg = record.getMessage()
        except Exception:
            msg = f"{record.msg!r} {record.args!r}"
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out[key if key not in _RESERVED else f"field_{key}"] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # Inside JSON those characters only occur in strings, where the escape means the same.
        return json.dumps(out, default=str, ensure_ascii=False).translate(_JSON_LINE_BREAKS)


_handler: logging.Handler | None = None


def _greenlet_error(context: Any, t: Any, v: Any, tb: Any) -> None:
    """gevent's hub prints a greenlet's uncaught exception, traceback and all, straight to
    stderr; here it becomes one warning line (the traceback at debug) like every other error."""
    try:
        name = getattr(t, "__name__", "exception")
        where = type(context).__name__ if context is not None else "the event loop"
        log = logging.getLogger("greyproxy")
        log.warning("%s ended after an unexpected %s: %s", where, name, v)
        log.debug("%s ended after an unexpected %s", where, name, exc_info=(t, v, tb))
    except Exception:  # the hub requires that this never raises
        pass


def route_gevent_errors() -> None:
    """Send the (main thread's) gevent hub's error reports through logging."""
    import gevent

    gevent.get_hub().print_exception = _greenlet_error


def setup_logging(level: str, fmt: str) -> None:
    """Install (or re-configure) the one stderr handler on the root logger."""
    global _handler  # one process, one stderr: the handler is process-wide by nature
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
        route_gevent_errors()
    _handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
