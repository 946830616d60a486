"""HAR 1.2 and curl renderings of stored transactions (docs/decisions.md#audit-observability-traffic-tools), on in-memory rows."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shlex

from haralyzer import HarParser

from greyproxy.capture.curl import INLINE_BODY_MAX, to_curl
from greyproxy.capture.har import to_har
from greyproxy.capture.redact import REDACTED
from greyproxy.store.models import HttpTransaction

T0 = dt.datetime(2030, 1, 2, 3, 4, 5, 678000)


def txn(i: int = 1, **fields) -> HttpTransaction:
    row = {
        "id": i,
        "timestamp": T0 + dt.timedelta(seconds=i),
        "container_name": "agent1",
        "destination_host": "api.example.com",
        "destination_port": 443,
        "method": "POST",
        "url": f"https://api.example.com/v1/items?q=a+b&token={REDACTED}",
        "request_headers": json.dumps({"Host": ["api.example.com"], "Authorization": [REDACTED],
                                       "Content-Type": ["application/json"], "Content-Length": ["11"],
                                       "Accept": ["a", "b"]}),
        "request_body": b'{"a": "it\'s"}',
        "request_body_size": 13,
        "request_content_type": "application/json",
        "status_code": 201,
        "response_headers": json.dumps({"Content-Type": ["application/json"], "Set-Cookie": [REDACTED],
                                        "Location": ["/v1/items/9"]}),
        "response_body": b'{"id": 9}',
        "response_body_size": 9,
        "response_content_type": "application/json",
        "duration_ms": 42,
        "rule_id": 3,
    }
    row.update(fields)
    return HttpTransaction(**row)


def test_har_document_loads_and_matches_rows() -> None:
    rows = [txn(1), txn(2, method="GET", request_body=None, request_body_size=0, status_code=200,
                     url="https://api.example.com/plain"), txn(3, status_code=999)]
    har = to_har(rows)
    json.dumps(har)  # serialisable as is
    parser = HarParser(har)
    assert har["log"]["version"] == "1.2" and parser.creator["name"] == "greyproxy"
    entries = parser.pages[0].entries
    assert [e.request.method for e in entries] == ["POST", "GET", "POST"]
    first = entries[0]
    assert first.request.url == rows[0].url
    assert first.startTime == dt.datetime(2030, 1, 2, 3, 4, 6, 678000, tzinfo=dt.UTC)
    assert first.time == 42 and first.status == 201
    assert {"name": "Authorization", "value": REDACTED} in first.request.headers
    assert [h["value"] for h in first.request.headers if h["name"] == "Accept"] == ["a", "b"]
    assert first.request.queryString == [{"name": "q", "value": "a b"}, {"name": "token", "value": REDACTED}]
    assert first.request.text == '{"a": "it\'s"}' and first.request.mimeType == "application/json"
    assert first.response.text == '{"id": 9}' and first.response.mimeType == "application/json"
    assert first.response.redirectURL == "/v1/items/9" and first.response.statusText == "Created"
    assert first.raw_entry["_greyproxy"]["container"] == "agent1"
    assert "postData" not in entries[1].request.raw_entry
    assert entries[2].response.statusText == ""  # unknown code: no phrase, no crash


def test_binary_body_is_base64() -> None:
    har = to_har([txn(response_body=b"\xff\xfe\x00")])
    content = har["log"]["entries"][0]["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == b"\xff\xfe\x00"


def test_websocket_frames_attach_to_their_upgrade() -> None:
    upgrade = txn(1, method="GET", url="https://api.example.com/ws", status_code=101, request_body=None,
                  response_body=None)
    frames = [
        txn(2, method="WS_REQ", url="wss://api.example.com/ws", status_code=101, request_body=b"hello"),
        txn(3, method="WS_RESP", url="wss://api.example.com/ws", status_code=101, request_body=b"\x00\xff"),
        txn(4, method="WS_REQ", url="wss://api.example.com/other", status_code=101, request_body=b"lost"),
    ]
    har = to_har([upgrade, *frames])
    entries = har["log"]["entries"]
    assert len(entries) == 1
    messages = entries[0]["_webSocketMessages"]
    assert [(m["type"], m["opcode"]) for m in messages] == [("send", 1), ("receive", 2)]
    assert messages[0]["data"] == "hello" and base64.b64decode(messages[1]["data"]) == b"\x00\xff"
    assert HarParser(har).pages[0].entries[0].status == 101


def test_curl_command_is_quoted_and_redacted() -> None:
    command = to_curl(txn())
    assert command.endswith("\n") and not command.startswith("#")
    args = shlex.split(command)
    assert args[:5] == ["curl", "--globoff", "-X", "POST", txn().url]
    headers = [args[i + 1] for i, a in enumerate(args) if a == "-H"]
    assert f"Authorization: {REDACTED}" in headers
    assert not any(h.lower().startswith("content-length") for h in headers)  # curl computes it
    assert args[args.index("--data-binary") + 1] == '{"a": "it\'s"}'


def test_curl_variants() -> None:
    head = shlex.split(to_curl(txn(method="HEAD", request_body=None, request_body_size=0)))
    assert "--head" in head and "-X" not in head and "--data-binary" not in head
    empty = shlex.split(to_curl(txn(request_headers=json.dumps({"X-Empty": [""], "Accept-Encoding": ["gzip"]}))))
    assert "X-Empty;" in empty and "--compressed" in empty
    cut = to_curl(txn(request_body_truncated=True))
    assert cut.startswith("# the request body was cut")
    lost = to_curl(txn(request_body=None, request_body_size=500, request_content_type="image/png"))
    assert "not captured" in lost and "--data-binary" not in lost


def test_curl_big_body_is_piped_through_printf() -> None:
    body = b"z" * (INLINE_BODY_MAX + 1)
    command = to_curl(txn(request_body=body))
    assert command.startswith("printf '%s' ") and "--data-binary @-" in command
