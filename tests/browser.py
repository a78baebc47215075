"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by
Playwright (its own browser download does not work on these machines)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXPECT_DEFAULT_MS = 5_000  # Playwright's own default for expect()

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}"
)


@asynccontextmanager
async def chromium(expect_timeout_ms: int | None = None) -> AsyncIterator[Browser]:
    """A launched browser. ``expect_timeout_ms`` raises expect()'s timeout
    while it runs (a loaded machine runs claude and renders slowly)."""
    if expect_timeout_ms is not None:
        expect.set_options(timeout=expect_timeout_ms)
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        if expect_timeout_ms is not None:
            expect.set_options(timeout=EXPECT_DEFAULT_MS)


@asynccontextmanager
async def open_page(
    browser: Browser,
    *,
    width: int,
    height: int,
    timeout_ms: int,
    console_errors: bool = False,
) -> AsyncIterator[Page]:
    """A page in a context of its own (closed at the end), with ``timeout_ms``
    as its default timeout. JavaScript errors on the page (and, with
    ``console_errors``, console errors such as CSP violations) fail the test
    once the block has ended without an exception of its own."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.set_default_timeout(timeout_ms)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        if console_errors:
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        yield page
    finally:
        await context.close()
    assert not errors, f"JS errors on the page: {errors}"


async def log_in(page: Page, login_url: str) -> None:
    """Opens the login URL a hive prints (``…/login?token=…``), as the operator
    does: the session cookie is set and the page redirected, so the token is no
    longer in the address bar."""
    response = await page.goto(login_url)
    assert response is not None and response.ok, response and response.status
    assert "token=" not in page.url and not page.url.endswith("/login"), page.url
