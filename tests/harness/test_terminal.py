"""The agent page's terminal: a login shell on a PTY over a WebSocket.

The operator's WebSocket goes to the dashboard (``/agents/<n>/api/terminal``),
guarded like the page (operator token) plus same origin and the page's CSRF
token, and is joined there to one on the harness's unix socket; closing it
ends the shell and what it started. In a real browser (xterm.js, vendored):
type ``echo hi``, read ``hi`` back.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hyperhive.common.webguard import CSRF_COOKIE
from tests import rig
from tests.browser import needs_chromium, open_page
from tests.harness.conftest import (
    OPERATOR_TOKEN,
    UI_TIMEOUT_MS,
    Stack,
    agent_name,
    open_agent_page,
    page_csrf,
    running_harness,
)


async def operator_ws(stack: Stack, name: str) -> tuple[str, str, dict[str, Any]]:
    """The terminal's dashboard URL, the page's CSRF token and the
    ``connect()`` arguments of a logged-in operator's browser."""
    async with stack.operator() as op:
        csrf = await page_csrf(op, name)
        nonce = op.cookies[CSRF_COOKIE]
    port = stack.settings.dashboard.port
    good: dict[str, Any] = {
        "origin": f"http://127.0.0.1:{port}",
        "additional_headers": {
            "Cookie": f"{CSRF_COOKIE}={nonce}",
            "Authorization": f"Bearer {OPERATOR_TOKEN}",
        },
    }
    return f"ws://127.0.0.1:{port}/agents/{name}/api/terminal", csrf, good


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
    dash_stack: Stack, tmp_path: Path
) -> None:
    name = agent_name("tt")
    await dash_stack.spawn(name)
    async with running_harness(dash_stack.harness_settings(name)) as h:
        ws_url, csrf, good = await operator_ws(dash_stack, name)
        nonce = good["additional_headers"]["Cookie"]

        # refused before any shell starts: no token, another origin, no or a wrong CSRF token
        refusals: list[tuple[str, dict[str, Any]]] = [
            (f"?csrf={csrf}", {**good, "additional_headers": {"Cookie": nonce}}),
            (f"?csrf={csrf}", {**good, "origin": "http://evil.example"}),
            (f"?csrf={csrf}", {**good, "origin": None}),
            ("", good),
            ("?csrf=0123abcd", good),
        ]
        for query, kwargs in refusals:
            with pytest.raises(InvalidStatus) as err:
                async with connect(ws_url + query, **kwargs):
                    pass
            assert err.value.response.status_code == 403, (query, kwargs)

        async with connect(f"{ws_url}?csrf={csrf}&cols=90&rows=20", **good) as ws:
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
        async with dash_stack.operator() as op:
            assert (await op.get(f"/agents/{name}/api/status")).status_code == 200


async def test_shell_exit_closes_the_websocket(dash_stack: Stack) -> None:
    name = agent_name("tx")
    await dash_stack.spawn(name)
    async with running_harness(dash_stack.harness_settings(name)):
        ws_url, csrf, good = await operator_ws(dash_stack, name)
        async with connect(f"{ws_url}?csrf={csrf}", **good) as ws:
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
async def test_browser_terminal_echo_hi(
    dash_stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    name = agent_name("tb")
    await dash_stack.spawn(name)
    async with running_harness(dash_stack.harness_settings(name)):
        # CSP violations (e.g. xterm.js styles refused) show up as console errors
        async with open_page(
            browser, width=1100, height=800, timeout_ms=UI_TIMEOUT_MS, console_errors=True
        ) as page:
            await open_agent_page(page, dash_stack, name)
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


async def test_terminal_can_be_switched_off(dash_stack: Stack) -> None:
    name = agent_name("to")
    await dash_stack.spawn(name)
    settings = dash_stack.harness_settings(name, HIVE_HARNESS_TERMINAL="false")
    async with running_harness(settings) as h:
        # the harness refuses it on its socket
        with pytest.raises(InvalidStatus) as err:
            async with unix_connect(h.socket, "ws://agent-page/api/terminal"):
                pass
        assert err.value.response.status_code == 403
        # the operator's WebSocket says why and closes; no shell
        ws_url, csrf, good = await operator_ws(dash_stack, name)
        async with connect(f"{ws_url}?csrf={csrf}", **good) as ws:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert msg["type"] == "error" and "terminal" in msg["text"], msg
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1011
