"""A stdio test middleware with a child process of its own: stop() must kill both.

Allows every request and tags it with its own pid and its child's pid.
"""

import json
import os
import subprocess
import sys

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "hello":
        reply = {"type": "hello", "name": "spawner", "hooks": [{"type": "http-request"}]}
    else:
        reply = {"id": msg["id"], "action": "allow", "tags": {"pid": os.getpid(), "child": child.pid}}
    print(json.dumps(reply), flush=True)
