"""Storage scrubbing (docs/decisions.md#audit-observability-traffic-tools): no stored row holds a real credential value or a value that
was redacted from the request it belongs to, wherever it comes back (an origin that echoes its
request in a body, in a header whose name is not redacted, in a URL).

What is scrubbed, with the marker `[REDACTED]` (the one the header redaction already writes, so
curl, replay, the dashboard and the retro-active jobs treat both alike; a label in the marker
would say which secret an origin echoed, but labels are free text and a fixed marker can never
itself match a value, which keeps the jobs idempotent):

- every real value the vault holds (global credentials and session mappings), in every stored
  transaction, frame, log row, middleware event and audit entry, when it is at least
  MIN_GLOBAL characters long;
- the values substituted into this exchange's request and the values the Redactor removed from
  it (Authorization, Cookie, `token=` …, and their parts: a cookie's value, the token after an
  auth scheme, from redact.PART_MIN characters), in that exchange's rows, when at least
  MIN_EXCHANGE characters long.

Shorter values are not scrubbed: a 3-character value would shred unrelated text everywhere (and
an agent could pick a short cookie to blank words out of what is stored of its own exchange);
real credentials are far longer. Each value is also looked for in the forms an echo commonly
gives it: JSON-escaped, percent-encoded (`quote`, `quote_plus`) and HTML-escaped, as text and
as UTF-8 bytes. Matches may overlap (two values sharing characters): the union of every match
is replaced, so no part of either is left. A body cut at the capture limit may end in the
middle of a value, and a WebSocket message split into fragments may split one: such an edge (at
least MIN_EXCHANGE characters of the value) goes too.

The search is Aho-Corasick (ahocorasick-rs, the Rust `aho-corasick` crate): one linear pass
over the text whatever the number of values, where a regex alternation costs a probe per value
at each position. The vault-wide automaton is rebuilt only when the vault changes
(`Vault.version`); per-exchange ones are cached by their values. With an empty vault and
nothing redacted, nothing is done at all.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import ahocorasick_rs

from greyproxy.capture.redact import REDACTED
from greyproxy.credentials.vault import Vault

MARKER = REDACTED
MARKER_BYTES = MARKER.encode()
MIN_GLOBAL = 6
MIN_EXCHANGE = 4

T = TypeVar("T", str, bytes)


# The spellings an echo commonly gives a value: as is, JSON-escaped (ASCII or not, `\/` too),
# percent-encoded (`quote`, `quote_plus`, path-safe) and HTML-escaped. The response scrubber
# (credentials/reverse.py) maps each spelling of a secret to the same spelling of its placeholder.
ECHO_SPELLINGS: tuple[Callable[[str], str], ...] = (
    lambda v: v,
    lambda v: json.dumps(v)[1:-1],
    lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    lambda v: json.dumps(v)[1:-1].replace("/", "\\/"),
    lambda v: quote(v, safe=""),
    lambda v: quote_plus(v, safe=""),
    quote,
    html.escape,
)


def forms(value: str) -> list[str]:
    """The value and the spellings an echo commonly gives it (deduplicated, value first)."""
    return list(dict.fromkeys(spell(value) for spell in ECHO_SPELLINGS))


class Matcher:
    """One automaton over a fixed set of values (all their forms), for text and for bytes."""

    __slots__ = ("_bytes", "_bytes_ac", "_text", "_text_ac")

    def __init__(self, values: Iterable[str], minimum: int) -> None:
        found: dict[str, None] = {}
        for value in values:
            if not isinstance(value, str) or len(value) < minimum or value in MARKER:
                continue
            for form in forms(value):
                found[form] = None
        self._text = list(found)
        self._bytes = list(dict.fromkeys(f.encode("utf-8", "surrogatepass") for f in self._text))
        self._text_ac: Any = None
        self._bytes_ac: Any = None

    def __bool__(self) -> bool:
        return bool(self._text)

    def spans(self, haystack: str | bytes, tail: bool = False, head: bool = False) -> list[tuple[int, int]]:
        if isinstance(haystack, str):
            if self._text_ac is None:
                self._text_ac = ahocorasick_rs.AhoCorasick(self._text)
            ac, values = self._text_ac, self._text
        else:
            if self._bytes_ac is None:
                self._bytes_ac = ahocorasick_rs.BytesAhoCorasick(self._bytes)
            ac, values = self._bytes_ac, self._bytes
        found = [(start, end) for _, start, end in ac.find_matches_as_indexes(haystack, overlapping=True)]
        if tail or head:
            found.extend(_edge_spans(haystack, values, tail, head))
        return found


def _edge_spans(haystack: Any, values: list[Any], tail: bool, head: bool) -> list[tuple[int, int]]:
    """A value cut at an edge: at the end, its longest start the haystack ends with (a body cut
    at the capture limit, a message fragment); at the start, its longest end the haystack
    begins with (the next fragment). At least MIN_EXCHANGE characters of the value."""
    size = len(haystack)
    out = []
    for value in values:
        n = len(value)
        if n <= MIN_EXCHANGE:
            continue
        if tail:
            probe = value[:MIN_EXCHANGE]
            i = haystack.find(probe, max(0, size - n + 1))
            while i >= 0:
                if value.startswith(haystack[i:]):
                    out.append((i, size))
                    break
                i = haystack.find(probe, i + 1)
        if head:
            probe = value[-MIN_EXCHANGE:]
            j = haystack.find(probe, 0, n - 1)
            last = -1
            while j >= 0:  # the longest piece: the last place the value's end is found
                if value.endswith(haystack[: j + MIN_EXCHANGE]):
                    last = j + MIN_EXCHANGE
                j = haystack.find(probe, j + 1, n - 1)
            if last > 0:
                out.append((0, last))
    return out


def _replace(haystack: T, spans: list[tuple[int, int]]) -> T:
    if not spans:
        return haystack
    spans.sort()
    marker: Any = MARKER if isinstance(haystack, str) else MARKER_BYTES
    parts: list[Any] = []
    pos = 0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start <= cur_end:  # overlapping or touching: one marker for the union
            cur_end = max(cur_end, end)
            continue
        parts += [haystack[pos:cur_start], marker]
        pos = cur_end
        cur_start, cur_end = start, end
    parts += [haystack[pos:cur_start], marker, haystack[cur_end:]]
    return haystack[:0].join(parts)


class Scrub:
    """The matchers that apply to one row (vault-wide, and this exchange's own values)."""

    __slots__ = ("matchers",)

    def __init__(self, matchers: list[Matcher]) -> None:
        self.matchers = matchers

    def __call__(self, value: T, tail: bool = False, head: bool = False) -> T:
        if not value:
            return value
        spans: list[tuple[int, int]] = []
        for m in self.matchers:
            spans += m.spans(value, tail, head)
        return _replace(value, spans)

    def text(self, value: str | None) -> str | None:
        return None if value is None else self(value)

    def data(self, value: Any, truncated: bool = False, continued: bool = False) -> Any:
        """A stored body: bytes (or memoryview/bytearray from the database) or text. `truncated`:
        it may end inside a value; `continued`: it may start inside one (a later fragment)."""
        if value is None:
            return None
        if isinstance(value, memoryview | bytearray):
            value = bytes(value)
        return self(value, truncated, continued)

    def headers(self, stored: dict[str, list[str]]) -> dict[str, list[str]]:
        """A redacted `{Name: [values]}` map, names and values scrubbed."""
        out: dict[str, list[str]] = {}
        for name, values in stored.items():
            out.setdefault(self(name), []).extend(self(v) for v in values)
        return out

    def row(self, row: dict[str, Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
        """Every text value of a row to be inserted (all keys, or only `keys`)."""
        for key in (row if keys is None else keys):
            value = row.get(key)
            if isinstance(value, str) and value:
                row[key] = self(value)
        return row


@lru_cache(maxsize=64)
def _exchange_matcher(values: tuple[str, ...]) -> Matcher:
    return Matcher(values, MIN_EXCHANGE)


class Scrubber:
    """Built once per runtime over the vault; `for_exchange` / `everywhere` give the Scrub to
    apply, or None when there is nothing to look for (the common case costs a comparison)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._version = -1
        self._global = Matcher((), MIN_GLOBAL)

    def _vault_matcher(self) -> Matcher:
        if self._version != self.vault.version:
            version = self.vault.version
            self._global = Matcher(self.vault.values(), MIN_GLOBAL)
            self._version = version
        return self._global

    def everywhere(self) -> Scrub | None:
        m = self._vault_matcher()
        return Scrub([m]) if m else None

    def for_exchange(self, *extra: Iterable[str]) -> Scrub | None:
        matchers = []
        m = self._vault_matcher()
        if m:
            matchers.append(m)
        values = tuple(sorted({v for group in extra for v in group if isinstance(v, str)}))
        if values:
            own = _exchange_matcher(values)
            if own:
                matchers.append(own)
        return Scrub(matchers) if matchers else None

    def text(self, value: str) -> str:
        """A text scrubbed of every vault value (audit entries)."""
        scrub = self.everywhere()
        return value if scrub is None or not value else scrub(value)

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row about to be inserted (log rows, middleware events), its text values scrubbed."""
        scrub = self.everywhere()
        return row if scrub is None else scrub.row(row)
