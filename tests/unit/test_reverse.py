"""Reverse substitution (credentials/reverse.py): however a response is split into reads, no
real value gets through, and everything else passes unchanged."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from greyproxy.credentials.reverse import ResponseScrubber

SECRET = "sk-Real/Secret value+42"
PH = "greyproxy:credential:v1:s:" + "c" * 32


def run(data: bytes, cuts: list[int]) -> bytes:
    scrub = ResponseScrubber({SECRET: PH})
    out, prev = b"", 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        out += scrub.feed(data[prev:cut])
        prev = cut
    return out + scrub.flush()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"x", b"\n\n", SECRET.encode(), SECRET[:5].encode(), quote(SECRET, safe="").encode(),
                                 json.dumps(SECRET)[1:-1].encode(), b"sk-"]), max_size=12),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_no_split_lets_a_secret_through(parts, cuts):
    data = b"".join(parts)
    out = run(data, cuts)
    assert SECRET.encode() not in out and quote(SECRET, safe="").encode() not in out
    assert out == run(data, [])  # the split does not change the result


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_other_bytes_pass_unchanged(data):
    if b"sk-" in data:
        return
    assert run(data, [7, 50, 120]) == data


def test_stream_is_held_back_only_for_a_possible_secret_start():
    scrub = ResponseScrubber({SECRET: PH})
    assert scrub.feed(b"data: hello\n\n") == b"data: hello\n\n"
    assert scrub.feed(b"data: sk-Re") == b"data: "
    assert scrub.feed(b"al/Secret value+42\n\n") == PH.encode() + b"\n\n"


def test_header_values():
    scrub = ResponseScrubber({SECRET: PH})
    assert scrub.text(f"Bearer {SECRET}") == f"Bearer {PH}"
    assert scrub.text("nothing here") == "nothing here"
