"""Run a test module with one data-path process and with two (`serve --workers N`,
docs/workers.md): `from tests.workers import workers` makes every test there that starts its
servers with gp_factory run twice. With two, every connection lands in a worker process and
every decision (rules, holds, approvals, sessions, credentials) crosses from the control plane."""

from __future__ import annotations

import pytest


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)
