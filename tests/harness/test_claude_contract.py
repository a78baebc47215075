"""What the harness relies on from the pinned claude CLI (tools/claude).

Each test runs the real CLI once or twice against the scripted API, without a
hive: the flags (``--print``, ``--output-format stream-json --verbose``,
``--mcp-config`` with ``alwaysLoad``, ``--allowedTools``, ``--continue``,
``--resume``), the stream-json events the harness reads (``system/init``,
``system/api_retry``, ``assistant``/``user`` blocks, ``result``) and the
environment it sets (``CLAUDE_CONFIG_DIR``, ``CLAUDE_CODE_MAX_RETRIES``). A CLI
upgrade that breaks one of them fails here first, with the version named.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hyperhive.harness.claude import ALWAYS_LOAD, RETRIES_ENV, result_is_login_needed
from tests.harness.conftest import CLAUDE
from tests.scripted_anthropic import Fault, ScriptedAnthropic, has_tool_result, tool_use

pytestmark = pytest.mark.claude

PING = str(Path(__file__).with_name("ping_mcp.py"))
VERSION = subprocess.run([CLAUDE, "--version"], capture_output=True, text=True).stdout.strip()


@dataclass
class Run:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str, subtype: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("type") == kind and (subtype is None or e.get("subtype") == subtype)
        ]

    @property
    def init(self) -> dict[str, Any]:
        return self.of("system", "init")[0]

    @property
    def result(self) -> dict[str, Any]:
        return self.of("result")[-1]

    def blocks(self, kind: str, block: str) -> list[dict[str, Any]]:
        return [
            b
            for e in self.of(kind)
            for b in e["message"]["content"]
            if isinstance(b, dict) and b.get("type") == block
        ]


def _server(name: str = "ping", **extra: Any) -> dict[str, Any]:
    return {"type": "stdio", "command": sys.executable, "args": [PING], **extra}


async def claude(
    api: ScriptedAnthropic,
    home: Path,
    prompt: str,
    *args: str,
    servers: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    verbose: bool = True,
) -> Run:
    """``claude --print [args] --output-format stream-json --verbose``, the prompt on
    stdin, cwd and ``CLAUDE_CONFIG_DIR`` = ``home`` (as the harness runs it)."""
    argv = [CLAUDE, "--print", *args, "--output-format", "stream-json"]
    if verbose:
        argv.append("--verbose")
    if servers is not None:
        config = home / "mcp.json"
        config.write_text(json.dumps({"mcpServers": servers}))
        argv += ["--mcp-config", str(config)]
    full_env = {**os.environ, **api.env(), "CLAUDE_CONFIG_DIR": str(home), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=home,
        env=full_env,
    )
    out, err = await asyncio.wait_for(proc.communicate(prompt.encode()), 120)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return Run(code=proc.returncode or 0, events=events, stderr=err.decode())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def api() -> Any:
    with ScriptedAnthropic() as server:
        yield server
    server.check()


async def test_stream_json_needs_verbose(api: ScriptedAnthropic, home: Path) -> None:
    run = await claude(api, home, "hi", verbose=False)
    assert run.code != 0 and "--verbose" in run.stderr, (VERSION, run.stderr)


async def test_init_lists_servers_and_tools_and_result_has_usage(
    api: ScriptedAnthropic, home: Path
) -> None:
    servers = {"ping": _server(), "broken": {"type": "stdio", "command": "/nonexistent/mcp"}}
    run = await claude(api, home, "hi", servers=servers)
    assert run.code == 0, run.stderr
    init = run.init
    assert {s["name"]: s["status"] for s in init["mcp_servers"]} == {
        "ping": "connected",
        "broken": "failed",
    }, VERSION
    assert "mcp__ping__ping" in init["tools"] and init["session_id"] and init["model"]
    result = run.result
    assert result["is_error"] is False and result["result"] == "ok"
    assert result["terminal_reason"] == "completed" and result["num_turns"] == 1
    assert {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    } <= set(result["usage"]), VERSION
    assert "total_cost_usd" in result and result["session_id"] == init["session_id"]


async def test_always_load_offers_a_servers_tools_with_schemas(
    api: ScriptedAnthropic, home: Path
) -> None:
    """The harness's way of keeping hyperhive's tools out of tool search."""
    servers = {"eager": _server(**{ALWAYS_LOAD: True}), "lazy": _server(**{ALWAYS_LOAD: False})}
    run = await claude(api, home, "hi", servers=servers)
    assert run.code == 0, run.stderr
    [req] = api.requests
    offered = req.offered
    assert "mcp__eager__ping" in offered, (
        f"claude {VERSION} no longer offers the tools of an MCP server with "
        f"{ALWAYS_LOAD}: true in the request (the harness's tools would be hidden "
        f"behind tool search); it offered: {sorted(offered)}"
    )
    assert offered["mcp__eager__ping"]["type"] == "object"
    assert "mcp__lazy__ping" not in offered, f"claude {VERSION} ignores {ALWAYS_LOAD}: false"


async def test_allowed_tools_comma_separated_prompt_on_stdin(
    api: ScriptedAnthropic, home: Path
) -> None:
    servers = {"ping": _server(**{ALWAYS_LOAD: True})}
    api.reply(tool_use("mcp__ping__ping", {}), when=lambda r: "ping it" in r.last_user_text())
    api.reply("pinged", when=has_tool_result("pong"))
    run = await claude(
        api, home, "ping it", "--allowedTools", "Read,mcp__ping__ping", servers=servers
    )
    [result] = run.blocks("user", "tool_result")
    assert not result.get("is_error") and "pong" in json.dumps(result["content"]), result
    assert run.result["result"] == "pinged"

    # not allowed: refused without asking (there is nobody to ask)
    api.reply(tool_use("mcp__ping__ping", {}), when=lambda r: "again" in r.last_user_text())
    api.reply("refused", when=lambda r: r.last_tool_result() is not None)
    run = await claude(api, home, "again", "--allowedTools", "Read", servers=servers)
    [result] = run.blocks("user", "tool_result")
    assert result.get("is_error"), result


async def test_continue_and_resume_the_last_session(api: ScriptedAnthropic, home: Path) -> None:
    first = await claude(api, home, "remember the word heron")
    second = await claude(api, home, "what was the word", "--continue")
    assert second.init["session_id"] == first.init["session_id"], VERSION
    assert "remember the word heron" in " ".join(api.requests[-1].user_texts())
    fresh = await claude(api, home, "a new conversation")
    assert "heron" not in api.requests[-1].dump()
    resumed = await claude(api, home, "back to the first", "--resume", first.init["session_id"])
    assert resumed.code == 0, resumed.stderr
    assert "remember the word heron" in " ".join(api.requests[-1].user_texts())
    assert fresh.init["session_id"] != first.init["session_id"]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.server_error(), 500),
        (Fault.overloaded(), 529),
        (Fault.rate_limited(retry_after=2), 429),
        (Fault.unauthorized(), 401),
        (Fault.dropped(), None),
    ],
)
async def test_api_faults_end_the_run_as_api_errors(
    api: ScriptedAnthropic, home: Path, fault: Fault, status: int | None
) -> None:
    """What the harness's fault handling reads: with ``CLAUDE_CODE_MAX_RETRIES=1``
    claude tries twice, says so in a ``system/api_retry`` event (its delay
    honours ``retry-after``) and ends with a ``result`` whose
    ``terminal_reason`` is ``api_error`` and ``api_error_status`` the status."""
    api.outage(fault)
    run = await claude(api, home, "hi", env={RETRIES_ENV: "1"})
    assert run.code != 0
    [retry] = run.of("system", "api_retry")
    assert retry["error_status"] == status and retry["max_retries"] == 1, VERSION
    if status == 429:
        assert retry["retry_delay_ms"] >= 2000
    result = run.result
    assert result["is_error"] and result["terminal_reason"] == "api_error", result
    assert result.get("api_error_status") == status, result
    assert 2 <= len(api.requests) <= 3  # a dropped stream is also tried once without streaming


async def test_no_credentials_is_an_api_error_without_a_request(
    api: ScriptedAnthropic, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the harness tells "login needed" from an outage when claude has no
    credentials at all (no status: the text says it)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
    env = {k: v for k, v in api.env().items() if k != "ANTHROPIC_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        CLAUDE,
        "--print",
        "--output-format",
        "stream-json",
        "--verbose",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=home,
        env={
            **{k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"},
            **env,
            "CLAUDE_CONFIG_DIR": str(home),
        },
    )
    out, _ = await asyncio.wait_for(proc.communicate(b"hi"), 120)
    [result] = [
        e for line in out.decode().splitlines() if (e := json.loads(line))["type"] == "result"
    ]
    assert result["is_error"] and result["terminal_reason"] == "api_error", result
    assert result_is_login_needed(result), f"claude {VERSION}: {result['result']!r}"
    assert not api.requests
