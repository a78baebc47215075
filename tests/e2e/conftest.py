"""End-to-end tests across parts: the harness tests' scripted API and browser."""

from tests.harness.conftest import api, browser  # noqa: F401
