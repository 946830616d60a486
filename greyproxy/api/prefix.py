"""`api.path_prefix` (greyproxy's `pathPrefix`): the whole control plane, API, `/ws`, `/metrics`,
the dashboard and its assets, mounted under one path so a reverse proxy can forward it.

`PrefixMount` is the WSGI layer in front of the app: a path under the prefix goes to the app with
the prefix moved into SCRIPT_NAME (so routes, the request guard and `request.path` are the same as
without a prefix); `/` redirects to `<prefix>/dashboard`; anything else is a 404.

Pages and scripts name their URLs from the root (`/api/...`, `/static/...`, `/ws`); with a prefix
`rebase()` puts it in front of those in the HTML and JavaScript we serve, and every redirect
Location gets it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request

# The first path segments of our own URLs, as pages and scripts write them.
ROOTS = ("api", "ws", "static", "metrics", "docs", "dashboard", "pending", "rules", "logs", "activity",
         "traffic", "conversations", "sessions", "credentials", "audit", "settings")
_ROOTS = "|".join(ROOTS)
# href="/x", src="/x", action="/x" in HTML; a string literal starting "/x in JavaScript.
_HTML_ATTR = re.compile(r'\b(href|src|action)="/(?!/)')
_JS_LITERAL = re.compile(r"""(["'`])/(""" + _ROOTS + r""")(?=[/?#"'`$]|\b)""")
_JS_WS = re.compile(r"\$\{location\.host\}/ws")
REBASED_TYPES = ("text/html", "text/javascript", "application/javascript")


class PrefixMount:
    def __init__(self, app: Callable[..., Iterable[bytes]], prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path == self.prefix or path.startswith(self.prefix + "/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix):] or "/"
            return self.app(environ, start_response)
        if path == "/":
            start_response("302 Found", [("Location", f"{self.prefix}/dashboard"), ("Content-Length", "0")])
            return [b""]
        body = json.dumps({"error": f"not found: everything is under {self.prefix}/"}).encode()
        start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def rebase(text: str, prefix: str, mimetype: str) -> str:
    if mimetype == "text/html":
        text = _HTML_ATTR.sub(lambda m: f'{m[1]}="{prefix}/', text)
    text = _JS_LITERAL.sub(lambda m: f"{m[1]}{prefix}/{m[2]}", text)
    return _JS_WS.sub(lambda _m: "${location.host}" + prefix + "/ws", text)


def install(app: Flask, prefix: str) -> None:
    """Mount `app` under `prefix` ("" = at the root, nothing to do)."""
    if not prefix:
        return
    app.wsgi_app = PrefixMount(app.wsgi_app, prefix)  # type: ignore[method-assign]

    @app.after_request
    def _prefixed(response: Response) -> Response:
        location = response.headers.get("Location")
        if location and location.startswith("/") and not location.startswith(("//", prefix + "/")):
            response.headers["Location"] = prefix + location
        # A static file is a file wrapper (direct passthrough); a generated stream (SSE) is left alone.
        whole = response.direct_passthrough or not response.is_streamed
        page = response.mimetype == "text/html"  # also the 401 login page
        if response.mimetype in REBASED_TYPES and (response.status_code == 200 or page) and whole:
            response.direct_passthrough = False  # read the file to rewrite it
            response.set_data(rebase(response.get_data(as_text=True), prefix, response.mimetype))
            # The file's ETag would stand for the unrewritten bytes: revalidate by content instead.
            response.headers.pop("ETag", None)
            response.headers.pop("Last-Modified", None)
            response.headers["Cache-Control"] = "no-cache"
            response.add_etag()
        return response

    @app.context_processor
    def _base() -> dict[str, str]:
        return {"path_prefix": request.script_root}
