#!/usr/bin/env python3
"""A greyproxy middleware that tags every request with the container that sent it: a header
for the origin (`X-Agent-Container`, or the name in $TAG_HEADER) and audit tags that the
dashboard shows as badges. Built on greyproxy_middleware.py (the helper beside it).

Run it with `greyproxy serve --middleware-cmd 'python3 examples/middlewares/header_tagger.py'`;
with the secret scanner in the same cascade, list the scanner first so it sees the request as
the agent sent it.
"""

import os

from greyproxy_middleware import Middleware

HEADER = os.environ.get("TAG_HEADER", "X-Agent-Container")
mw = Middleware("header-tagger")


@mw.request()
def tag(req):
    return req.rewrite(headers={HEADER: req.container}, tags={"container": req.container})


if __name__ == "__main__":
    mw.run()
