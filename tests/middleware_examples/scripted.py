"""A stdio test middleware. argv[1]: JSON merged into its hello; argv[2]: default plan per message
type. Header `X-Plan-<name>` (`-Resp` for the response) overrides the plan: a decision plus
delay_ms, echo (tags get the message and pid), junk, stderr, silent, exit. Logs starts to $MW_SPAWN_LOG.
"""

import json
import os
import sys
import threading
import time

hello = {"name": "scripted", "hooks": [{"type": "http-request"}, {"type": "http-response"}]}
hello.update(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
defaults = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
lock = threading.Lock()
if os.environ.get("MW_SPAWN_LOG"):
    with open(os.environ["MW_SPAWN_LOG"], "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('GREYPROXY_TRANSPORT')}\n")


def emit(line: str) -> None:
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def plan_for(msg: dict) -> dict:
    key = f"x-plan-{hello['name']}".lower() + ("-resp" if msg["type"] == "http-response" else "")
    for name, values in (msg.get("headers") or msg.get("request_headers") or {}).items():
        if name.lower() == key:
            return json.loads(values[0])
    return dict(defaults.get(msg["type"], {}))


def answer(msg: dict, plan: dict) -> None:
    time.sleep(plan.pop("delay_ms", 0) / 1000)
    if plan.pop("echo", False):
        plan["tags"] = {**plan.get("tags", {}), "seen": msg, "pid": os.getpid()}
    default = "allow" if msg["type"] == "http-request" else "passthrough"
    emit(json.dumps({"type": "decision", "id": msg["id"], "action": default, **plan}))


for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "hello":
        emit(json.dumps({"type": "hello", **hello}))
        continue
    plan = plan_for(msg)
    if plan.get("stderr"):
        print(plan.pop("stderr"), file=sys.stderr, flush=True)
    if plan.pop("junk", False):
        emit("this is not json {")
        emit(json.dumps([1, 2, 3]))
        emit(json.dumps({"id": "nobody-waits-for-this", "action": "deny"}))
    if plan.pop("exit", False):
        os._exit(3)
    if not plan.pop("silent", False):
        threading.Thread(target=answer, args=(msg, plan), daemon=True).start()
