#!/usr/bin/env python3
"""The smallest greyproxy middleware: sees every request and response and lets them through.

Run it with `greyproxy serve --middleware-cmd 'python3 examples/middlewares/passthrough.py'`.

Protocol (stdio transport): greyproxy writes one JSON object per line to stdin and reads one
JSON object per line from stdout; stderr goes to greyproxy's log. The first line is
`{"type": "hello", "version": 1}`, answered with a hello that lists the hooks wanted (and
optional filters). After that each `http-request` / `http-response` message carries an `id`;
answer it with `{"id": <same id>, "action": ...}`: `allow` / `passthrough` here. Answers may
come in any order. Bodies travel base64-encoded (null when larger than `max_body_bytes`).
"""

import json
import sys

HELLO = {
    "type": "hello",
    "name": "passthrough",
    "hooks": [{"type": "http-request"}, {"type": "http-response"}],
}


def main() -> None:
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        kind = message.get("type")
        if kind == "hello":
            reply = HELLO
        else:
            action = "allow" if kind == "http-request" else "passthrough"
            reply = {"type": "decision", "id": message.get("id"), "action": action}
            # stderr lines show up in greyproxy's log as "[middleware passthrough] ..."
            print(f"{kind} {message.get('method')} {message.get('host')}{message.get('uri')}", file=sys.stderr)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
