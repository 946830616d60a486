"""Dashboard pages: server-rendered shells whose lists static/js fills over REST and `/ws`.

The request guard (auth.py) has checked the token cookie before any view here runs. A browser
without it gets `login_page()` instead: a page that says how to log in and carries no data.
Static assets are the only thing served without the token; they hold no data either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response, make_response, redirect, render_template, request, send_from_directory

from greyproxy.api.context import runtime, settings_store

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"

bp = Blueprint("pages", __name__, template_folder=str(WEB_DIR / "templates"))

# The browser may only run our own files and talk to our own origin: a hostile hostname shown in
# a list can then never turn into script, and no other site may frame the Allow buttons
# (clickjacking). `connect-src 'self'` also covers the same-origin ws:// of /ws.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Page:
    name: str  # URL path, template and script name
    title: str


PAGES = (
    Page("dashboard", "Dashboard"),
    Page("pending", "Pending"),
    Page("rules", "Rules"),
    Page("logs", "Logs"),
    Page("activity", "Activity"),
    Page("conversations", "Conversations"),
    Page("sessions", "Sessions"),
    Page("credentials", "Credentials"),
    Page("audit", "Audit"),
    Page("settings", "Settings"),
)


def _secured(response: Response, no_store: bool = True) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if no_store:
        # Pages and the login page are per-user views; never keep them in a shared cache.
        response.headers["Cache-Control"] = "no-store"
    return response


def _render(page: Page) -> Response:
    rt = runtime()
    html = render_template(
        f"{page.name}.html",
        page=page,
        pages=PAGES,
        theme=settings_store().values()["theme"],
        hold_seconds=rt.config.hold_seconds,
        version=rt.version,
        # The empty Pending page says how to point an agent here: the ports actually bound.
        proxy_ports={name: rt.ports.get(name) for name in ("http", "socks5")},
        proxy_host=_proxy_host(rt.config.listen),
    )
    return _secured(make_response(html))


def _proxy_host(listen: dict) -> str:
    """The address an agent on this machine dials: loopback when the proxy listens on all."""
    host = getattr(listen.get("http"), "host", "") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _view(page: Page) -> Callable[[], Response]:
    def view() -> Response:
        return _render(page)

    view.__name__ = page.name
    return view


for _page in PAGES:
    bp.add_url_rule(f"/{_page.name}", _page.name, _view(_page), methods=["GET"])


@bp.get("/")
def index() -> Response:
    return redirect("/dashboard", code=302)


@bp.get("/traffic")
def traffic() -> Response:
    # greyproxy's old name for the page; kept so bookmarks still work.
    return redirect("/activity", code=302)


@bp.get("/static/<path:filename>")
def static(filename: str) -> Response:
    # No max-age: the browser revalidates with the ETag (a 304 on loopback is nearly free), so a
    # newer greyproxy never runs against scripts cached from an older one.
    return _secured(send_from_directory(STATIC_DIR, filename), no_store=False)


def login_page(reason: str) -> Response:
    """The 401 page a browser sees without a valid token: how to log in, and nothing else."""
    rt = runtime()
    # The guard has already checked Host against our own names, so it is safe to echo back.
    origin = request.host_url.rstrip("/") + request.script_root  # with api.path_prefix, if any
    html = render_template("login.html", reason=reason, data_dir=str(rt.config.data_dir), origin=origin, pages=())
    return _secured(make_response(html, 401))
