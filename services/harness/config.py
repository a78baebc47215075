"""What one harness runs with: its settings resolved, and the agent's ``agent.toml``.

``agent.toml`` lives at the root of the agent's deployed config (the applied
working tree, ``HIVE_HARNESS_CONFIG_DIR``) and holds what every backend
honours: ``model``, ``allowed_tools``, ``prompt`` and extra ``[mcp_servers.*]``.
Lifecycle validates it before a deploy; the harness still reads it
defensively and stops with one clear line when it is broken.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest, ConfigError
from hyperhive.common.names import check_agent_name
from hyperhive.common.notes import HARNESS_STATE_DIR, NOTES_FILE

AGENT_TOML = "agent.toml"
# Passed through to claude from the harness's environment (contract).
PASS_THROUGH_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CLAUDE_CODE_OAUTH_TOKEN")


class McpServer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One extra MCP server of ``agent.toml`` (``[mcp_servers.<name>]``)."""

    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    # the server's tools wait behind claude's tool search instead of being
    # offered in every request (docs/turn-loop.md, "Tools offered")
    defer_tools: bool = False


class AgentToml(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str = ""
    allowed_tools: list[str] = msgspec.field(default_factory=list)
    prompt: str = ""
    mcp_servers: dict[str, McpServer] = msgspec.field(default_factory=dict)


def load_agent_toml(config_dir: Path | None) -> AgentToml:
    """Reads ``<config_dir>/agent.toml``; a missing dir or file means defaults.

    Raises:
        ConfigError: the file is not valid TOML or has wrong keys/types.
    """
    if config_dir is None:
        return AgentToml()
    path = config_dir / AGENT_TOML
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AgentToml()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        conf = msgspec.convert(data, AgentToml)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if "hyperhive" in conf.mcp_servers:
        raise ConfigError(f"{path}: the MCP server name 'hyperhive' is reserved")
    return conf


def find_claude(configured: str) -> str:
    """The claude CLI: the configured path, else ``claude`` on PATH, else the
    repo's pinned one (``tools/claude``).

    Raises:
        ConfigError: none found.
    """
    if configured:
        return configured
    found = shutil.which("claude")
    if found:
        return found
    here = Path(__file__).resolve()
    for parent in here.parents:
        pinned = parent / "tools" / "claude" / "node_modules" / ".bin" / "claude"
        if pinned.exists():
            return str(pinned)
    raise ConfigError("no claude CLI: set HIVE_HARNESS_CLAUDE_BIN or put claude on PATH")


@dataclass(frozen=True)
class HarnessConfig:
    """Everything one harness needs, resolved once at start."""

    agent: str
    workdir: Path
    state_dir: Path
    creds_dir: Path
    config_dir: Path | None
    agents_dir: Path | None  # manager only: the agents dir
    claude_bin: str
    settings: Settings
    toml: AgentToml = field(default_factory=AgentToml)
    # manager only: where agents/<n>/{config,state} and applied/<n> are; None: /
    view_dir: Path | None = None

    @property
    def manager(self) -> bool:
        return self.agent == subjects.MANAGER

    @property
    def notes_path(self) -> Path:
        return self.state_dir / NOTES_FILE

    @property
    def harness_dir(self) -> Path:
        """The harness's files beside the notes (model override, turn counter)."""
        return self.state_dir / HARNESS_STATE_DIR

    @property
    def private_dir(self) -> Path:
        """The harness's files no other agent may touch (messages, MCP config)."""
        return self.creds_dir / HARNESS_STATE_DIR

    @property
    def default_model(self) -> str:
        """agent.toml's model, else the harness setting; "" = the CLI's default."""
        return self.toml.model or self.settings.harness.model

    def mcp_command(self) -> list[str]:
        """How claude starts the hyperhive MCP server (``hive harness mcp``)."""
        return [sys.executable, "-m", "hyperhive.cli.main", "harness", "mcp"]


def _dir(value: str, what: str, default: Path | None = None) -> Path:
    if value:
        return Path(value)
    if default is not None:
        return default
    raise ConfigError(f"HIVE_HARNESS_{what.upper()} is not set")


def resolve(settings: Settings) -> HarnessConfig:
    """Checks the harness settings and reads agent.toml.

    Without explicit dirs the agent's dirs under the data dir are used
    (``agents/<n>/{work,state,creds,applied}``), as the process backend lays
    them out.

    Raises:
        ConfigError: a missing agent name, a bad name, no claude, a bad agent.toml.
    """
    h = settings.harness
    if not h.agent:
        raise ConfigError("HIVE_HARNESS_AGENT is not set")
    try:
        check_agent_name(h.agent, allow_manager=True)
    except BadRequest as exc:
        raise ConfigError(f"HIVE_HARNESS_AGENT: {exc}") from None
    root = settings.paths.agents_dir / h.agent
    config_dir = Path(h.config_dir) if h.config_dir else root / "applied"
    cfg = HarnessConfig(
        agent=h.agent,
        workdir=_dir(h.workdir, "workdir", root / "work"),
        state_dir=_dir(h.state_dir, "state_dir", root / "state"),
        creds_dir=_dir(h.creds_dir, "creds_dir", root / "creds"),
        config_dir=config_dir,
        agents_dir=Path(h.agents_dir) if h.agents_dir else None,
        claude_bin=find_claude(h.claude_bin),
        settings=settings,
        toml=load_agent_toml(config_dir),
        view_dir=Path(h.view_dir) if h.view_dir else None,
    )
    # private_dir is made on first use: lifecycle treats an empty credentials
    # dir as "no credentials of its own" (see the harness report)
    for d in (cfg.workdir, cfg.state_dir, cfg.creds_dir, cfg.harness_dir):
        d.mkdir(parents=True, exist_ok=True)
    return cfg
