"""The one JSON reader (api/parse.py) and the path-prefix rebasing (api/prefix.py), as pure
functions: the C-speed depth count agrees with the real nesting of any document, strings never
count, lone surrogates are refused and escaped pairs are not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greyproxy.api.errors import ApiError
from greyproxy.api.parse import MAX_JSON_DEPTH, _depth, decode_json, path_id, path_key
from greyproxy.api.prefix import rebase

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=40,
)


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((nesting(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((nesting(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(documents)
def test_depth_is_the_real_nesting(value):
    for raw in (json.dumps(value), json.dumps(value, ensure_ascii=False), json.dumps(value, indent=1)):
        assert _depth(raw.encode()) == nesting(value)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_what_is_shallow_enough_reads_back(value):
    raw = json.dumps(value)
    if nesting(value) <= MAX_JSON_DEPTH:
        assert decode_json(raw) == value
    else:
        with pytest.raises(ApiError):
            decode_json(raw)


@pytest.mark.parametrize("raw", [
    "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000, "[" * 33 + "]" * 33,
    '["\\ud800"]', '["x\\uDBFF"]', '{"\\udc00": 1}', '["\\ude00\\ud83d"]', '{"n": NaN}', "[Infinity]",
    "[-Infinity]", "1" * 5000, '"\\u0000', "[1,]",
])
def test_refused(raw):
    with pytest.raises(ApiError) as exc:
        decode_json(raw)
    assert exc.value.status == 400


@pytest.mark.parametrize(("raw", "value"), [
    ('["\\ud83d\\ude00"]', ["\U0001F600"]), ('["\\\\ud800"]', ["\\ud800"]), ('["' + "[" * 40 + '"]', ["[" * 40]),
    ('"a\\"[[["', 'a"[[['), ("[" * 32 + "]" * 32, json.loads("[" * 32 + "]" * 32)),
])
def test_accepted(raw, value):
    assert decode_json(raw) == value
    assert decode_json(raw.encode()) == value


def test_ids():
    assert path_id("42") == 42
    for bad in ("0", "-1", "9" * 20, "9" * 5000, "١٢", "1.0", ""):
        with pytest.raises(ApiError):
            path_id(bad)
    assert path_key("gw_1.a-b") == "gw_1.a-b"
    for bad in ("a/b", ".x", "-x", "a b", "x" * 129, "é", ""):
        with pytest.raises(ApiError):
            path_key(bad)


def test_rebase():
    html = '<a href="/rules">r</a><link href="/static/app.css"><a href="https://x/y">x</a><a href="//cdn/x">c</a>'
    assert rebase(html, "/p", "text/html") == (
        '<a href="/p/rules">r</a><link href="/p/static/app.css"><a href="https://x/y">x</a><a href="//cdn/x">c</a>')
    js = 'get("/api/rules"); h("a", {href: `/pending?highlight=${id}`}); new WebSocket(`ws://${location.host}/ws`);' \
         ' const re = "/regexp/"; x = "/apis";'
    assert rebase(js, "/p", "text/javascript") == (
        'get("/p/api/rules"); h("a", {href: `/p/pending?highlight=${id}`}); '
        'new WebSocket(`ws://${location.host}/p/ws`); const re = "/regexp/"; x = "/apis";')


PAD = ' ' * (300 * 1024)  # over OFF_HUB_BYTES: the body is read the other way (in a worker)


@pytest.mark.parametrize("raw", [
    '[' * (MAX_JSON_DEPTH + 1) + ']' * (MAX_JSON_DEPTH + 1) + PAD,
    '[' * 100_000 + ']' * 100_000 + PAD,
    '["]]]]", ' + '[' * MAX_JSON_DEPTH + ']' * MAX_JSON_DEPTH + ']' + PAD,  # brackets in a string hide nothing
    '{"a": "\\ud800"}' + PAD,
    '[NaN]' + PAD,
    '[1, 2' + PAD,
])
def test_big_bodies_are_refused_like_small_ones(raw):
    with pytest.raises(ApiError) as caught:
        decode_json(raw.encode())
    assert caught.value.status == 400


def test_big_bodies_read_back():
    value = [{"k": i, "s": "x" * 10, "nested": [[{"deep": [1]}]]} for i in range(20_000)]
    raw = json.dumps(value).encode()
    assert len(raw) > 300 * 1024
    assert decode_json(raw) == value
    assert decode_json(b'{"pair": "\\ud83d\\ude00"}' + PAD.encode()) == {"pair": "\U0001F600"}
