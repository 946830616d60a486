"""The browser tests' fixtures live in tests/browser.py (registered in tests/conftest.py, so the
fleet dashboard test shares the one session-wide browser); the names tests import from here."""

from tests.browser import CHROMIUM, DESKTOP, PHONE, SCREENSHOTS, WAIT_MS, Dashboard  # noqa: F401
