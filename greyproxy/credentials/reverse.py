"""Reverse substitution: the real secrets a request carried upstream never come back to the
agent (docs/design.md, "Secrets never flow back"). An origin that echoes what it received (a
debug endpoint, an API that repeats a header) would otherwise hand the agent every secret whose
placeholder it holds.

`ResponseScrubber` replaces each real value substituted into this exchange's request by its
placeholder, in response header values and in the body as it streams. A value split across two
reads is still found: the scrubber holds back only the longest tail of what it has seen that is
the start of some secret, so a stream (SSE) is not delayed by more than that.

Each secret is looked for in every spelling the storage scrubber knows (capture/scrub.py,
ECHO_SPELLINGS): as sent, JSON-escaped, percent-encoded, HTML-escaped."""

from __future__ import annotations

import re

from greyproxy.capture.scrub import ECHO_SPELLINGS


def _spellings(value: str, placeholder: str) -> list[tuple[bytes, bytes]]:
    """Each spelling of the secret an echo might use, with the same spelling of its placeholder."""
    out: dict[bytes, bytes] = {}
    for spell in ECHO_SPELLINGS:
        real = spell(value)
        if real:
            out.setdefault(real.encode("utf-8"), spell(placeholder).encode("utf-8"))
    return list(out.items())


class ResponseScrubber:
    """Built per exchange from {real value: placeholder}; pure, no I/O."""

    def __init__(self, reverse: dict[str, str]) -> None:
        pairs: dict[bytes, bytes] = {}
        for value, placeholder in reverse.items():
            for real, shown in _spellings(value, placeholder):
                pairs.setdefault(real, shown)
        self._map = pairs
        # Longest first, so a value that contains another is replaced whole.
        self._regex = re.compile(b"|".join(re.escape(v) for v in sorted(pairs, key=len, reverse=True)))
        self._carry = b""
        self.replaced = 0

    def _sub(self, data: bytes) -> bytes:
        def swap(match: re.Match[bytes]) -> bytes:
            self.replaced += 1
            return self._map[match.group(0)]

        return self._regex.sub(swap, data)

    def text(self, value: str) -> str:
        """A whole header value, scrubbed (header values are latin-1 text of the wire bytes)."""
        raw = value.encode("latin-1", "replace")
        out = self._sub(raw)
        return value if out == raw else out.decode("latin-1")

    def _held_back(self, data: bytes) -> int:
        """How many trailing bytes could be the start of a secret (kept for the next read)."""
        best = 0
        for value in self._map:
            for k in range(min(len(value) - 1, len(data)), best, -1):
                if data.endswith(value[:k]):
                    best = k
                    break
        return best

    def feed(self, chunk: bytes) -> bytes:
        """Scrubbed bytes that are safe to send now."""
        data = self._carry + chunk
        out = self._sub(data)
        keep = self._held_back(out)
        if keep:
            self._carry, out = out[-keep:], out[:-keep]
        else:
            self._carry = b""
        return out

    def flush(self) -> bytes:
        out, self._carry = self._carry, b""
        return out
