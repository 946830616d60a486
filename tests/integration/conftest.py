"""Fixtures shared by the integration tests that need a local TLS origin."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.integration.tlsutil import TLSOrigin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_ca: the test's greyproxy starts without a CA (mitm.generate_ca: false), as before first-start "
        "generation: it asserts the answers of a proxy that cannot intercept, or makes its CA itself")


def without_ca(config_yaml: str | None) -> str:
    """The test's config with `mitm.generate_ca: false` added."""
    doc = yaml.safe_load(config_yaml or "") or {}
    if "services" in doc:  # a GOST-style file has no such key to set
        raise ValueError("no_ca: a GOST-style config cannot turn CA generation off")
    doc.setdefault("mitm", {})["generate_ca"] = False
    return yaml.safe_dump(doc)


@pytest.fixture
def gp_factory(gp_factory: Any, request: pytest.FixtureRequest) -> Any:
    """The shared factory; under the `no_ca` marker its servers start without a CA."""
    if request.node.get_closest_marker("no_ca") is None:
        return gp_factory

    def make(extra_args: list[str] | None = None, config_yaml: str | None = None, **kwargs: Any) -> Any:
        return gp_factory(extra_args, without_ca(config_yaml), **kwargs)

    return make


@pytest.fixture
def tls_origin(tmp_path):
    """An HTTPS origin on 127.0.0.1 with its own CA (`tls_origin.ca_path`)."""
    origin = TLSOrigin(tmp_path)
    yield origin
    origin.close()


@pytest.fixture
def intercepting_gp(gp_factory, tls_origin):
    """A greyproxy that trusts the TLS origin's CA and has generated its own through the API
    (`gp.ca_path`; it starts without one, so the API's generate answers 200)."""

    def make(**kwargs):
        config = f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}', generate_ca: false}}\n"
        gp = gp_factory(config_yaml=config, **kwargs)
        resp = gp.api("POST", "/api/cert/generate")
        assert resp.status_code == 200, resp.text
        gp.ca_path = gp.data_dir / "ca-cert.pem"
        return gp

    return make
