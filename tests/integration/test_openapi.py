"""GET /api/openapi.json describes every route the app registers, and only those; the
document holds together (every $ref resolves, path parameters are declared); /docs renders it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from greyproxy.api.app import create_app
from greyproxy.api.openapi import spec
from greyproxy.config import load_config
from greyproxy.runtime import Runtime

DOCUMENTED_PREFIXES = ("/api/",)
DOCUMENTED_EXACT = ("/ws", "/metrics")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("openapi")
    runtime = Runtime(load_config(None, env={"HOME": str(data)}, flags={"data_dir": str(data)}))
    yield create_app(runtime)
    runtime.db.close()


def registered(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith(DOCUMENTED_PREFIXES) or rule.rule in DOCUMENTED_EXACT):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((method.lower(), path))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item
            if method in ("get", "put", "post", "delete", "patch")}


def test_every_route_is_described(app):
    missing = registered(app) - documented(spec())
    assert not missing, "routes missing from the OpenAPI document (greyproxy/api/openapi.py): " + ", ".join(
        f"{m.upper()} {p}" for m, p in sorted(missing, key=lambda x: x[1]))


def test_every_described_route_exists(app):
    stale = documented(spec()) - registered(app)
    assert not stale, "described but not registered: " + ", ".join(f"{m.upper()} {p}" for m, p in sorted(stale))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_is_consistent():
    doc = spec()
    assert doc["openapi"].startswith("3.") and doc["info"]["version"]
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert part in node, f"unresolved $ref {ref}"
            node = node[part]
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: path parameters {declared} != {names}"
            assert operation["summary"] and operation["responses"], f"{method.upper()} {path}"
            for status in operation["responses"]:
                assert re.fullmatch(r"[1-5]\d\d", status), f"{method.upper()} {path}: status {status}"
    public = [(m, p) for p, item in doc["paths"].items() for m, op in item.items() if op.get("security") == []]
    assert public == [("get", "/api/health")]  # the one route without the token


def test_served_document_and_reference_page(gp):
    assert gp.api("GET", "/api/openapi.json", token=False).status_code == 401
    doc = gp.api("GET", "/api/openapi.json").json()
    assert doc == spec()
    page = gp.api("GET", "/docs")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.text
    for path in doc["paths"]:
        assert f"<code>{path}</code>" in html, path
    assert "<script" not in html
    login = gp.api("GET", "/docs", token=False)
    assert login.status_code == 401 and "log in" in login.text.lower()
