"""A stdio middleware for the proxy tests: NDJSON on stdin/stdout, stdlib only.

What it does depends on the request path, so one process covers every decision; everything it
is sent is appended to the file named by argv[1] (one JSON line per message) for the test to read.
"""

import base64
import json
import sys

SEEN = sys.argv[1]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def on_request(msg: dict) -> dict:
    path = msg["uri"].split("?", 1)[0].rsplit("/", 1)[-1]
    if path == "deny":
        return {"action": "deny", "status_code": 451, "body": b64("denied by the test middleware\n")}
    if path == "rewrite-request":
        return {"action": "rewrite", "headers": {"X-Added": "yes", "Authorization": "Bearer from-middleware"},
                "body": b64("rewritten body")}
    if path == "tag":
        return {"action": "allow", "tags": {"reviewed": True}}
    return {"action": "allow"}


def on_response(msg: dict) -> dict:
    path = msg["uri"].split("?", 1)[0].rsplit("/", 1)[-1]
    if path == "block-response":
        return {"action": "block", "status_code": 502, "body": b64("blocked by the test middleware\n")}
    if path == "rewrite-response":
        return {"action": "rewrite", "status_code": 299, "headers": {"X-Rewritten": "1"}, "body": b64("replaced")}
    return {"action": "passthrough"}


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        with open(SEEN, "a") as seen:
            seen.write(json.dumps(msg) + "\n")
        if msg["type"] == "hello":
            reply = {"type": "hello", "name": "test-mw", "hooks": [
                {"type": "http-request", "filters": {"path": "^/mw/"}},
                {"type": "http-response", "filters": {"path": "^/mw/"}},
            ]}
        elif msg["type"] == "http-request":
            reply = {"id": msg["id"], **on_request(msg)}
        else:
            reply = {"id": msg["id"], **on_response(msg)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
