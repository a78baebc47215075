"""Running the claude CLI for one turn and reading its stream-json output.

``claude --print [--continue] --output-format stream-json --verbose
--mcp-config <file> [--model M] [--allowedTools a,b] [--append-system-prompt …]``
with the prompt on stdin (several ``--allowedTools`` values swallow a prompt
given as an argument), cwd = the agent's workdir, ``CLAUDE_CONFIG_DIR`` = its
credentials dir (where claude keeps the sessions that ``--continue``
resumes). claude runs in its own process group so that a cancel also ends
what it started (MCP servers, Bash tool children).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperhive.common import subjects
from hyperhive.common.config import settings_env
from hyperhive.harness import creds
from hyperhive.harness.config import PASS_THROUGH_ENV, HarnessConfig
from hyperhive.harness.tools import SERVER_NAME, TRACEPARENT_ENV, tool_names

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 1.0  # SIGTERM → SIGKILL; a cancel ends the process within 2 s
STDERR_TAIL = 8 * 1024
LINE_LIMIT = 64 * 1024 * 1024  # a stream-json line can carry a whole file
SEND_TOOL = f"mcp__{SERVER_NAME}__send"
RECV_TOOL = f"mcp__{SERVER_NAME}__recv"
# An MCP server's key in --mcp-config: true offers its tools in every request
# (the CLI otherwise defers MCP tools behind its tool search); false defers them
ALWAYS_LOAD = "alwaysLoad"
# How often claude retries one failed API request before it gives up the run
RETRIES_ENV = "CLAUDE_CODE_MAX_RETRIES"
# Settings the MCP server child needs; nothing else of the harness's HIVE_*.
_MCP_ENV_KEYS = (
    "HIVE_HOME",
    "HIVE_HARNESS_AGENT",
    "HIVE_NATS_URL",
    "HIVE_NATS_SEED_FILE",
    "HIVE_NATS_INBOX_PREFIX",
    "HIVE_NATS_REQUEST_TIMEOUT_S",
    "HIVE_NATS_CONNECT_BACKOFF_S",
    "HIVE_LOG_LEVEL",
    "HIVE_TELEMETRY_EXPORTER",
    "HIVE_TELEMETRY_OTLP_ENDPOINT",
    "HIVE_TELEMETRY_SERVICE_NAMESPACE",
)

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]

# What kind of API fault ended a run (docs/turn-loop.md, "API faults")
TRANSIENT, AUTH = "transient", "auth"
_AUTH_STATUSES = (401, 403)
_TRANSIENT_STATUSES = (408, 409, 429)
# claude's result text when it has no credentials at all (it makes no request)
_NOT_LOGGED_IN = ("not logged in", "please run /login", "invalid api key")


def result_is_login_needed(result: dict[str, Any]) -> bool:
    """The ``result`` event of a run that claude's credentials ended (refused or none)."""
    if result.get("terminal_reason") != "api_error":
        return False
    if result.get("api_error_status") in _AUTH_STATUSES:
        return True
    text = str(result.get("result") or "").lower()
    return any(marker in text for marker in _NOT_LOGGED_IN)


def mcp_config(cfg: HarnessConfig, traceparent: str = "") -> dict[str, Any]:
    """The ``--mcp-config`` document: ``hyperhive`` plus agent.toml's servers.

    Every server is ``alwaysLoad`` (its tools are in every request, with their
    schemas) except one whose agent.toml entry says ``defer_tools = true``
    (its tools wait behind claude's tool search). ``traceparent`` (the turn's
    trace context) reaches the hyperhive server as ``TRACEPARENT``, so its
    NATS requests are children of the turn.
    """
    env = settings_env(cfg.settings)
    hive_env = {k: env[k] for k in _MCP_ENV_KEYS if k in env}
    if traceparent:
        hive_env[TRACEPARENT_ENV] = traceparent
    command = cfg.mcp_command()
    servers: dict[str, Any] = {
        SERVER_NAME: {
            "type": "stdio",
            "command": command[0],
            "args": command[1:],
            "env": hive_env,
            ALWAYS_LOAD: True,
        }
    }
    for name, spec in cfg.toml.mcp_servers.items():
        servers[name] = {
            "type": "stdio",
            "command": spec.command,
            "args": spec.args,
            "env": spec.env,
            ALWAYS_LOAD: not spec.defer_tools,
        }
    return {"mcpServers": servers}


def allowed_tools(cfg: HarnessConfig) -> list[str]:
    """agent.toml's ``allowed_tools`` plus every hyperhive tool this agent is offered."""
    tools = list(cfg.toml.allowed_tools)
    for t in tool_names(cfg.agent):
        full = f"mcp__{SERVER_NAME}__{t}"
        if full not in tools:
            tools.append(full)
    return tools


def write_mcp_config(cfg: HarnessConfig, traceparent: str = "") -> str:
    """Writes the MCP config (mode 0600: its env may name secrets) and returns its path."""
    path = cfg.private_dir / "mcp.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".mcp.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(mcp_config(cfg, traceparent), f)
    tmp.replace(path)
    return str(path)


def claude_env(cfg: HarnessConfig) -> dict[str, str]:
    """claude's environment: ours minus HIVE_*, its config dir, the API credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env["CLAUDE_CONFIG_DIR"] = str(cfg.creds_dir)
    # a daemon: no auto-update, no telemetry; the operator may override
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    # claude's own retries are bounded: a longer outage is the harness's to
    # wait out, without losing the turn's message (docs/turn-loop.md)
    env[RETRIES_ENV] = str(cfg.settings.harness.api_retries)
    stored = creds.claude_env(cfg.creds_dir)
    if stored or creds.kind(cfg.creds_dir):
        # the operator logged this agent in: its own credentials win
        for key in PASS_THROUGH_ENV:
            if key != "ANTHROPIC_BASE_URL":
                env.pop(key, None)
    env.update(stored)
    return env


@dataclass
class RunResult:
    """What one claude invocation did."""

    exit_code: int
    cancelled: bool = False
    result: dict[str, Any] | None = None  # the stream's final ``result`` event
    init: dict[str, Any] | None = None  # the ``system/init`` event
    stderr: str = ""
    tool_calls: Counter[str] = field(default_factory=Counter)
    sent_to: Counter[str] = field(default_factory=Counter)  # by recipient kind
    recv_calls: int = 0
    events: int = 0
    duration_ms: float = 0.0
    retry_delay_s: float = 0.0  # the longest delay claude's own API retries chose

    @property
    def messages_sent(self) -> int:
        return sum(self.sent_to.values())

    @property
    def ok(self) -> bool:
        return (
            not self.cancelled
            and self.exit_code == 0
            and self.result is not None
            and not self.result.get("is_error")
        )

    @property
    def prompt_too_long(self) -> bool:
        """claude gave up because the conversation no longer fits the context."""
        r = self.result or {}
        if r.get("terminal_reason") == "prompt_too_long":
            return True
        text = str(r.get("result") or "") + self.stderr
        return bool(r.get("is_error") or self.exit_code) and "prompt is too long" in text.lower()

    @property
    def api_fault(self) -> str:
        """``AUTH`` (credentials refused or missing), ``TRANSIENT`` (429, 5xx, a
        timeout or a broken connection, after claude's own retries) or "" (no
        API fault: it succeeded, or failed for another reason)."""
        r = self.result or {}
        if self.cancelled or not r.get("is_error") or r.get("terminal_reason") != "api_error":
            return ""
        if result_is_login_needed(r):
            return AUTH
        status = r.get("api_error_status")
        if status is None or status in _TRANSIENT_STATUSES or int(status) >= 500:
            return TRANSIENT
        return ""

    @property
    def error(self) -> str:
        """A one-paragraph reason when the run did not succeed."""
        if self.cancelled:
            return "cancelled by the operator"
        if self.result is not None and self.result.get("is_error"):
            return str(self.result.get("result") or self.result.get("subtype") or "error")[:2000]
        if self.exit_code != 0:
            tail = self.stderr.strip().splitlines()[-5:]
            return f"claude exited with {self.exit_code}: " + " | ".join(tail)[:2000]
        if self.result is None:
            return "claude ended without a result"
        return ""

    @property
    def model(self) -> str:
        return str((self.init or {}).get("model") or "")


class ClaudeRun:
    """One ``claude --print`` process. :meth:`run` once; :meth:`cancel` from elsewhere."""

    def __init__(
        self,
        cfg: HarnessConfig,
        prompt: str,
        *,
        resume: bool,
        model: str = "",
        system_prompt: str = "",
        tools: bool = True,
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
        traceparent: str = "",
    ) -> None:
        """``tools=False``: a side session without the MCP servers and their
        allowed tools (e.g. notes compaction); ``extra_args`` go last; ``cwd``
        defaults to the agent's workdir; ``traceparent``: the turn's trace
        context, handed to the hyperhive MCP server."""
        self.cfg = cfg
        self.prompt = prompt
        self.cwd = cwd or cfg.workdir
        self.argv = [cfg.claude_bin, "--print"]
        if resume:
            self.argv.append("--continue")
        self.argv += ["--output-format", "stream-json", "--verbose"]
        if tools:
            self.argv += ["--mcp-config", write_mcp_config(cfg, traceparent)]
        if model:
            self.argv += ["--model", model]
        if tools:
            self.argv += ["--allowedTools", ",".join(allowed_tools(cfg))]
        if system_prompt:
            self.argv += ["--append-system-prompt", system_prompt]
        self.argv += list(extra_args)
        self._proc: asyncio.subprocess.Process | None = None
        self._cancelled = False
        self._started = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def run(self, on_event: OnEvent) -> RunResult:
        """Runs claude to its end, handing each stream-json event to ``on_event``."""
        t0 = time.monotonic()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=claude_env(self.cfg),
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            return RunResult(exit_code=127, stderr=f"cannot run {self.argv[0]}: {exc}")
        finally:
            self._started.set()
        proc = self._proc
        res = RunResult(exit_code=0)
        if self._cancelled:  # cancelled while starting
            await self._terminate()
        stderr_task = asyncio.create_task(_read_tail(proc.stderr))
        try:
            assert proc.stdin is not None
            proc.stdin.write(self.prompt.encode())
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died at once; the exit code says why
        pending: dict[str, tuple[str, str]] = {}  # tool_use id → (tool, recipient kind)
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over LINE_LIMIT: skip it
                continue
            if not line:
                break
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                event = json.loads(text)
                if not isinstance(event, dict):
                    raise ValueError
            except ValueError:
                event = {"type": "raw", "text": text[:4000]}
            _account(event, res, pending)
            res.events += 1
            try:
                await on_event(event)
            except Exception:
                log.exception("turn event handler failed")
        res.exit_code = await proc.wait()
        res.stderr = await stderr_task
        res.cancelled = self._cancelled
        res.duration_ms = (time.monotonic() - t0) * 1000
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
        return res

    async def cancel(self) -> None:
        """Ends the process (and its group): SIGTERM, then SIGKILL after a grace."""
        self._cancelled = True
        if self._proc is None:
            return
        await self._terminate()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), CANCEL_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _account(event: dict[str, Any], res: RunResult, pending: dict[str, tuple[str, str]]) -> None:
    """Counts tool calls, sends (by recipient kind) and recvs; keeps init and result."""
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        res.init = event
    elif kind == "system" and event.get("subtype") == "api_retry":
        # its delay honours the API's retry-after: the harness's back-off does too
        with contextlib.suppress(TypeError, ValueError):
            res.retry_delay_s = max(res.retry_delay_s, float(event.get("retry_delay_ms")) / 1000)
    elif kind == "result":
        res.result = event
    elif kind == "assistant":
        for block in _content(event):
            if block.get("type") == "tool_use":
                name = str(block.get("name") or "?")
                res.tool_calls[name] += 1
                args = block.get("input")
                to = args.get("to") if isinstance(args, dict) else None
                pending[str(block.get("id"))] = (name, recipient_kind(to))
    elif kind == "user":
        for block in _content(event):
            if block.get("type") != "tool_result":
                continue
            name, kind = pending.pop(str(block.get("tool_use_id")), ("", ""))
            if block.get("is_error"):
                continue
            if name == SEND_TOOL:
                res.sent_to[kind] += 1
            elif name == RECV_TOOL and '"empty"' not in json.dumps(block.get("content")):
                res.recv_calls += 1


def recipient_kind(to: object) -> str:
    """``operator``, ``manager`` or ``peer``: how the telemetry splits sends."""
    if to == subjects.OPERATOR:
        return "operator"
    if to == subjects.MANAGER:
        return "manager"
    return "peer"


def _content(event: dict[str, Any]) -> list[dict[str, Any]]:
    message = event.get("message")
    if not isinstance(message, dict):
        return []
    content = message.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


async def _read_tail(stream: asyncio.StreamReader | None) -> str:
    if stream is None:
        return ""
    buf = b""
    while chunk := await stream.read(65536):
        buf = (buf + chunk)[-STDERR_TAIL:]
    return buf.decode(errors="replace")
