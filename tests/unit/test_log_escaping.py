"""Log lines cannot be forged: every value is escaped so one event is exactly one line and no
value can pass for another field (text format) or another object (JSON format)."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from greyproxy.logsetup import JsonFormatter, TextFormatter, escape, text_value

HOSTILE = [
    "a.test\ndecision=allow x",
    "a.test\r\n2026-01-01 00:00:00,000 INFO greyproxy.decision: decision decision=allow",
    'x" decision="allow',
    "back\\slash",
    "tab\there",
    "esc\x1b[2Jcleared",
    "nul\x00byte",
    "del\x7f",
    "nel\x85line",
    "ls\u2028ps\u2029",
    "bidi\u202eevil",
    "vt\x0bff\x0c",
    "fs\x1cgs\x1drs\x1e",
    "nbsp\xa0x",
    "",
    "a=b",
    "plain",
    "bücher.example",
]

_PAIR = re.compile(r'\s*([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _unescape(quoted: str) -> str:
    out, i, body = [], 0, quoted[1:-1]
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        kind = body[i + 1]
        if kind in _UNESCAPES:
            out.append(_UNESCAPES[kind])
            i += 2
        else:
            width = {"x": 2, "u": 4, "U": 8}[kind]
            out.append(chr(int(body[i + 2:i + 2 + width], 16)))
            i += 2 + width
    return "".join(out)


def parse_fields(tail: str) -> dict[str, str]:
    """A strict reader of the text format's `key=value` tail: it must consume every character."""
    fields, pos = {}, 0
    while pos < len(tail):
        m = _PAIR.match(tail, pos)
        assert m is not None, f"unparseable at {pos}: {tail[pos:]!r}"
        key, raw = m.groups()
        assert key not in fields, f"field {key} appears twice in {tail!r}"
        fields[key] = _unescape(raw) if raw.startswith('"') else raw
        pos = m.end()
    return fields


def _record(msg: str, args: tuple = (), fields: dict | None = None, exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("greyproxy.decision", logging.INFO, __file__, 1, msg, args, exc_info)
    if fields is not None:
        record.fields = fields
    return record


def _one_line(line: str) -> None:
    assert line.splitlines() == [line], repr(line)  # splitlines breaks on every Unicode line break too
    assert "\x1b" not in line and "\x00" not in line


@pytest.mark.parametrize("value", HOSTILE)
def test_text_field_values_round_trip_and_never_forge_a_field(value):
    fields = {"container": "c", "destination": value, "port": 80, "decision": "block", "rule_id": None}
    line = TextFormatter().format(_record("decision", fields=fields))
    _one_line(line)
    head, _, tail = line.partition(": decision ")
    assert head.endswith("INFO greyproxy.decision")
    parsed = parse_fields(tail)
    assert parsed == {"container": "c", "destination": value, "port": "80", "decision": "block", "rule_id": ""}


@pytest.mark.parametrize("value", HOSTILE)
def test_text_message_arguments_are_escaped(value):
    line = TextFormatter().format(_record("socks5 dial %s:%d failed: %r", (value, 443, ValueError(value))))
    _one_line(line)
    message = line.split(": ", 1)[1]
    # An argument holding '=' is quoted, so no bare key=value can appear from it.
    assert not re.search(r'(^|\s)decision=allow(\s|$)', message)


@pytest.mark.parametrize("value", HOSTILE)
def test_json_lines_are_one_object_that_reads_back(value):
    line = JsonFormatter().format(_record("dial %s", (value,), fields={"destination": value}))
    _one_line(line)
    data = json.loads(line)
    assert data["destination"] == value and data["msg"] == f"dial {value}"


def test_bare_values_stay_readable():
    assert text_value("agent1") == "agent1"
    assert text_value("bücher.example") == "bücher.example"
    assert text_value(443) == "443"
    assert text_value(None) == '""'
    assert text_value("a b") == '"a b"'
    assert text_value("k=v") == '"k=v"'
    assert text_value('say "hi"') == '"say \\"hi\\""'
    assert text_value("a\nb") == '"a\\nb"'
    assert text_value("\x1b") == '"\\x1b"'
    assert text_value("\u2028") == '"\\u2028"'
    assert escape("c:\\dir") == "c:\\\\dir"


def test_message_without_hostile_arguments_is_unchanged():
    line = TextFormatter().format(_record("reload: applied %s (%d keys, %.1f s)", ("log.level, dns", 2, 0.5)))
    assert line.endswith("greyproxy.decision: reload: applied log.level, dns (2 keys, 0.5 s)")


def test_a_message_built_without_arguments_still_stays_on_one_line():
    line = TextFormatter().format(_record("built with an f-string: a.test\ndecision=allow"))
    _one_line(line)
    assert line.endswith("a.test\\ndecision=allow")


def test_a_traceback_is_one_escaped_field():
    try:
        raise ValueError("a.test\ndecision=allow x")
    except ValueError:
        exc_info = sys.exc_info()
    line = TextFormatter().format(_record("failed", exc_info=exc_info))
    _one_line(line)
    tail = line.split(": failed ", 1)[1]
    parsed = parse_fields(tail)
    assert parsed["exception"].startswith("Traceback (most recent call last):\n")
    assert parsed["exception"].endswith("ValueError: a.test\ndecision=allow x")


def test_bad_format_strings_do_not_raise():
    line = TextFormatter().format(_record("%d items %s", ("many",)))
    _one_line(line)
    assert "many" in line
    data = json.loads(JsonFormatter().format(_record("%d items %s", ("many",))))
    assert "many" in data["msg"]


def test_a_greenlets_uncaught_exception_is_one_warning_line(capfd):
    import gevent

    from greyproxy.logsetup import route_gevent_errors

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(TextFormatter().format(record))

    logger = logging.getLogger("greyproxy")
    handler, level = Collect(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    hub = gevent.get_hub()
    try:
        route_gevent_errors()

        def boom() -> None:
            raise ValueError("a.test\ndecision=allow x")

        gevent.spawn(boom).join()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        del hub.print_exception  # back to gevent's own for the other tests
    assert "Traceback" not in capfd.readouterr().err
    assert len(lines) == 1 and " WARNING greyproxy: " in lines[0], lines
    _one_line(lines[0])
    assert lines[0].endswith('unexpected ValueError: "a.test\\ndecision=allow x"')
