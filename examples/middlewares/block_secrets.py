#!/usr/bin/env python3
"""A greyproxy middleware that denies requests carrying well-known secrets out of the sandbox.

Run it with `greyproxy serve --middleware-cmd 'python3 examples/middlewares/block_secrets.py'`,
or in the YAML config: `middlewares: [{command: [python3, examples/middlewares/block_secrets.py]}]`.

Protocol (stdio transport): one JSON object per line on stdin/stdout (see passthrough.py). It
takes the `http-request` hook, looks for AWS access keys, private keys, GitHub / Slack /
OpenAI-style tokens in the URL, the headers and the body (bodies over 1 MiB arrive as null and
are not scanned), and answers `deny` (HTTP 403) naming the kind of secret (never the secret
itself) in the body and in the audit `tags`; anything else gets `allow`. The headers that
legitimately carry the agent's own credentials (Authorization, Cookie, X-Api-Key...) are not
scanned.
"""

import base64
import json
import re
import sys

PATTERNS = {
    "aws-access-key": re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private-key": re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "github-token": re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "slack-token": re.compile(rb"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    "openai-key": re.compile(rb"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}\b"),
}
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
HELLO = {"type": "hello", "name": "block-secrets", "max_body_bytes": 1 << 20, "hooks": [{"type": "http-request"}]}


def find_secret(message: dict) -> str | None:
    parts = [message.get("uri", "").encode()]
    for name, values in (message.get("headers") or {}).items():
        if name.lower() not in CREDENTIAL_HEADERS:
            parts += [v.encode() for v in values]
    if message.get("body"):
        parts.append(base64.b64decode(message["body"]))
    for kind, pattern in PATTERNS.items():
        if any(pattern.search(part) for part in parts):
            return kind
    return None


def decide(message: dict) -> dict:
    kind = find_secret(message)
    if kind is None:
        return {"id": message["id"], "action": "allow"}
    print(f"denied {message.get('method')} {message.get('host')}: {kind}", file=sys.stderr, flush=True)
    body = f"Blocked by block-secrets: the request contains a {kind}.\n".encode()
    return {"id": message["id"], "action": "deny", "status_code": 403,
            "body": base64.b64encode(body).decode(), "tags": {"secret": kind}}


def main() -> None:
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        reply = HELLO if message.get("type") == "hello" else decide(message)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
