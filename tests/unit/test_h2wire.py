"""The edges where HTTP/2 meets the HTTP/1 pipeline: header blocks to strict heads and back,
and the decoder of what the pipeline writes."""

from __future__ import annotations

import pytest

from greyproxy.proxy.httpwire import Head, WireError
from greyproxy.proxy.mitm.h2wire import (
    Http1Reader,
    canonical_name,
    request_head,
    response_fields,
    response_head,
    upstream_fields,
)


def block(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


BASE = ((":method", "GET"), (":scheme", "https"), (":authority", "api.example:8443"), (":path", "/v1?q=1"))


def test_request_head_is_an_http1_head_with_host_and_canonical_names():
    head = request_head(block(*BASE, ("accept", "*/*"), ("x-api-key", "k")), ended=True)
    assert head.start == ["GET", "/v1?q=1", "HTTP/1.1"]
    assert head.headers == [("Host", "api.example:8443"), ("Accept", "*/*"), ("X-Api-Key", "k")]


def test_request_body_framing():
    post = ((":method", "POST"),) + BASE[1:]
    assert request_head(block(*post), ended=False).get("transfer-encoding") == "chunked"
    assert request_head(block(*post), ended=True).get("content-length") == "0"
    declared = request_head(block(*post, ("content-length", "5")), ended=False)
    assert declared.get("content-length") == "5" and declared.get("transfer-encoding") is None


def test_connection_specific_fields_are_not_passed_on():
    head = request_head(block(*BASE, ("te", "trailers"), ("proxy-authorization", "Basic x"),
                              ("host", "api.example:8443")), ended=True)
    assert [k for k, _ in head.headers] == ["Host"]


@pytest.mark.parametrize("pairs", [
    ((":method", "G ET"), (":scheme", "https"), (":authority", "a"), (":path", "/")),  # not a token
    ((":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", "/a b")),  # space in target
    ((":method", "POST"), (":scheme", "https"), (":authority", "a"), (":path", "/"),
     ("content-length", "1"), ("content-length", "2")),  # two lengths
])
def test_what_the_http1_engine_refuses_is_refused(pairs):
    with pytest.raises(WireError):
        request_head(block(*pairs), ended=True)


def test_other_scheme_and_connect_become_targets_the_authority_check_refuses():
    http = request_head(block((":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/x")), True)
    assert http.start[1] == "http://a/x"
    connect = request_head(block((":method", "CONNECT"), (":authority", "b:443")), True)
    assert connect.start[1] == "b:443"


def test_response_fields_drop_hop_by_hop_and_lower_case():
    head = Head(["HTTP/1.1", "200", "OK"], [("Content-Type", "text/plain"), ("Connection", "close, X-Hop"),
                                           ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Keep-Alive", "5")])
    assert response_fields(head) == [(":status", "200"), ("content-type", "text/plain")]


def test_upstream_fields_from_an_absolute_target():
    head = Head(["GET", "https://a.example/p?x=1", "HTTP/1.1"], [("Host", "a.example"), ("Te", "trailers")])
    assert upstream_fields(head) == [(":method", "GET"), (":scheme", "https"), (":authority", "a.example"),
                                     (":path", "/p?x=1"), ("te", "trailers")]


def test_response_head_framing():
    raw, chunked = response_head(block((":status", "200"), ("content-type", "a/b")), "GET")
    assert chunked and raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in raw
    raw, chunked = response_head(block((":status", "200"), ("content-length", "3")), "GET")
    assert not chunked and b"Content-Length: 3" in raw
    assert response_head(block((":status", "204")), "GET")[1] is False
    assert response_head(block((":status", "200")), "HEAD")[1] is False
    with pytest.raises(WireError):
        response_head(block((":status", "20x")), "GET")


def test_reader_decodes_interim_length_chunked_and_until_close():
    r = Http1Reader(is_request=False, method="GET")
    events = r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    assert [k for k, _ in events] == ["interim", "head", "data"]
    events = r.feed(b"c\r\n0\r\n\r\n")
    assert events == [("data", b"c"), ("end", None)] and r.complete
    r = Http1Reader(is_request=False, method="GET")
    assert [k for k, _ in r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")] == ["head", "data", "end"]
    r = Http1Reader(is_request=False, method="HEAD")
    assert [k for k, _ in r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")] == ["head", "end"]
    r = Http1Reader(is_request=False, method="GET")
    r.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil")
    assert r.until_close and r.feed(b" close") == [("data", b" close")]
    r = Http1Reader(is_request=True)
    assert [k for k, _ in r.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")] == ["head", "end"]
    with pytest.raises(WireError):
        r.feed(b"GET / HTTP/1.1\r\n")  # nothing may follow one message on a stream


def test_canonical_name():
    assert canonical_name("content-type") == "Content-Type"
    assert canonical_name("x-api-key") == "X-Api-Key"
    assert canonical_name("etag") == "Etag"
