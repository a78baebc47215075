"""The agent page's terminal: a login shell on a PTY over a WebSocket.

Guarded like the page (operator token) plus same origin and the page's CSRF
token; closing the WebSocket ends the shell and what it started. In a real
browser (xterm.js, vendored): type ``echo hi``, read ``hi`` back.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from hyperhive.harness.security import CSRF_COOKIE
from tests import rig
from tests.browser import needs_chromium, open_page
from tests.harness.conftest import UI_TIMEOUT_MS, Page, Stack, agent_name, running_harness

TOKEN = "terminal-test-token"


async def read_until(ws: ClientConnection, pattern: str, timeout: float = 30) -> re.Match[str]:
    """Reads the shell's output until ``pattern`` matches it."""
    out = ""
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                out += frame.decode(errors="replace")
                m = re.search(pattern, out)
                if m:
                    return m


async def send_line(ws: ClientConnection, line: str) -> None:
    await ws.send(json.dumps({"type": "input", "data": line + "\r"}))


async def test_terminal_websocket_guard_resize_and_close_ends_the_shell(
    stack: Stack, tmp_path: Path
) -> None:
    name = agent_name("tt")
    await stack.spawn(name)
    settings = stack.harness_settings(name, HIVE_HARNESS_TOKEN=TOKEN)
    async with running_harness(settings) as h:
        page = Page(h.url, token=TOKEN)
        await page.open()
        nonce = page.client.cookies[CSRF_COOKIE]
        await page.close()
        ws_url = f"ws://127.0.0.1:{h.port}/terminal/ws"
        origin = f"http://127.0.0.1:{h.port}"
        good: dict[str, Any] = {
            "origin": origin,
            "additional_headers": {
                "Cookie": f"{CSRF_COOKIE}={nonce}",
                "Authorization": f"Bearer {TOKEN}",
            },
        }

        # refused before any shell starts: no token, another origin, no or a wrong CSRF token
        refusals: list[tuple[str, dict[str, Any]]] = [
            (f"?csrf={page.csrf}", {**good, "additional_headers": {"Cookie": f"x={nonce}"}}),
            (f"?csrf={page.csrf}", {**good, "origin": "http://evil.example"}),
            (f"?csrf={page.csrf}", {**good, "origin": None}),
            ("", good),
            ("?csrf=0123abcd", good),
        ]
        for query, kwargs in refusals:
            with pytest.raises(InvalidStatus) as err:
                async with connect(ws_url + query, **kwargs):
                    pass
            assert err.value.response.status_code == 403, (query, kwargs)

        async with connect(f"{ws_url}?csrf={page.csrf}&cols=90&rows=20", **good) as ws:
            started = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert started["type"] == "started", started
            shell_pid = started["pid"]
            assert rig.pid_alive(shell_pid)
            assert started["cwd"] == str(h.harness.cfg.workdir)
            await send_line(ws, "echo cwd=$(pwd) size=$(stty size)")
            m = await read_until(ws, r"cwd=(\S+) size=(\d+ \d+)")
            assert m.group(1) == str(h.harness.cfg.workdir) and m.group(2) == "20 90"
            await ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 33}))
            await send_line(ws, "echo now=$(stty size)")
            assert (await read_until(ws, r"now=(\d+ \d+)")).group(1) == "33 120"
            # a background job in the shell's session ends with it
            await send_line(ws, "sleep 300 & echo bg=$!")
            job_pid = int((await read_until(ws, r"bg=(\d+)")).group(1))
            assert rig.pid_alive(job_pid)

        await rig.eventually(
            lambda: not rig.pid_alive(shell_pid) and not rig.pid_alive(job_pid),
            timeout=30,
            what="the shell and its job end with the WebSocket",
        )
        # the page itself is unaffected
        async with httpx.AsyncClient(base_url=h.url, headers={"X-Hive-Token": TOKEN}) as c:
            assert (await c.get("/status")).status_code == 200


async def test_shell_exit_closes_the_websocket(stack: Stack) -> None:
    name = agent_name("tx")
    await stack.spawn(name)
    async with running_harness(stack.harness_settings(name)) as h:
        page = Page(h.url)
        await page.open()
        nonce = page.client.cookies[CSRF_COOKIE]
        await page.close()
        async with connect(
            f"ws://127.0.0.1:{h.port}/terminal/ws?csrf={page.csrf}",
            origin=f"http://127.0.0.1:{h.port}",
            additional_headers={"Cookie": f"{CSRF_COOKIE}={nonce}"},
        ) as ws:
            started = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await send_line(ws, "exit 0")
            async with asyncio.timeout(30):
                async for _frame in ws:
                    pass
            assert ws.close_code == 1000
        assert not rig.pid_alive(started["pid"])


ROWS_JS = (
    "(() => { const t = window.hiveTerminal; if (!t) return [];"
    " const b = t.buffer.active; const out = [];"
    " for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
    " return out; })()"
)


@pytest.mark.browser
@needs_chromium
async def test_browser_terminal_echo_hi(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    name = agent_name("tb")
    await stack.spawn(name)
    async with running_harness(stack.harness_settings(name)) as h:
        # CSP violations (e.g. xterm.js styles refused) show up as console errors
        async with open_page(
            browser, width=1100, height=800, timeout_ms=UI_TIMEOUT_MS, console_errors=True
        ) as page:
            await page.goto(h.url + "/")
            await page.click("#term-toggle")
            await expect(page.locator("#term .xterm")).to_be_visible()
            await expect(page.locator("#term-info")).to_contain_text("pid")
            shell_pid = int(re.search(r"pid (\d+)", await page.inner_text("#term-info")).group(1))  # type: ignore[union-attr]
            assert rig.pid_alive(shell_pid)
            await page.locator("#term .xterm").click()
            await page.keyboard.type("echo hi")
            await page.keyboard.press("Enter")

            async def output_line_hi() -> bool:
                rows = [r.strip() for r in await page.evaluate(ROWS_JS)]
                return "hi" in rows  # the output line, not the typed command

            await rig.eventually(output_line_hi, timeout=60, what="'hi' read back")
            # what the operator sees: the DOM rows show it too
            await expect(page.locator("#term .xterm-rows")).to_contain_text("echo hi")
            await page.screenshot(path=str(tmp_path / "terminal.png"))
            assert (tmp_path / "terminal.png").stat().st_size > 0

            # closing the page ends the shell
            await page.close()
            await rig.eventually(
                lambda: not rig.pid_alive(shell_pid),
                timeout=30,
                what="the shell ends with the page",
            )


async def test_terminal_can_be_switched_off(stack: Stack) -> None:
    name = agent_name("to")
    await stack.spawn(name)
    settings = stack.harness_settings(name, HIVE_HARNESS_TERMINAL="false")
    async with running_harness(settings) as h:
        page = Page(h.url)
        await page.open()
        nonce = page.client.cookies[CSRF_COOKIE]
        await page.close()
        with pytest.raises(InvalidStatus) as err:
            async with connect(
                f"ws://127.0.0.1:{h.port}/terminal/ws?csrf={page.csrf}",
                origin=f"http://127.0.0.1:{h.port}",
                additional_headers={"Cookie": f"{CSRF_COOKIE}={nonce}"},
            ):
                pass
        assert err.value.response.status_code == 403
