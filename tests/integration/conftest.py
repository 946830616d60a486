"""Fixtures shared by the integration tests that need a local TLS origin."""

from __future__ import annotations

import pytest

from tests.integration.tlsutil import TLSOrigin


@pytest.fixture
def tls_origin(tmp_path):
    """An HTTPS origin on 127.0.0.1 with its own CA (`tls_origin.ca_path`)."""
    origin = TLSOrigin(tmp_path)
    yield origin
    origin.close()


@pytest.fixture
def intercepting_gp(gp_factory, tls_origin):
    """A greyproxy that trusts the TLS origin's CA and has generated its own (`gp.ca_path`)."""

    def make(**kwargs):
        gp = gp_factory(config_yaml=f"mitm: {{extra_ca_bundle: '{tls_origin.ca_path}'}}\n", **kwargs)
        resp = gp.api("POST", "/api/cert/generate")
        assert resp.status_code == 200, resp.text
        gp.ca_path = gp.data_dir / "ca-cert.pem"
        return gp

    return make
