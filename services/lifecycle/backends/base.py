"""The container backend interface (docs/architecture.md)."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from pathlib import Path

from hyperhive.common.config import Settings
from hyperhive.common.errors import BackendFailed
from hyperhive.common.names import is_agent_name
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.lifecycle import LogsReply
from hyperhive.common.wire.states import RUNNING, STOPPED  # noqa: F401 (container states too)

MISSING = "missing"  # no container (never created, or destroyed)

# The manager's view of the other agents, the same in every backend (the
# container layout of nix/harness-base.nix): proposed repo → /agents/<n>/config
# and state → /agents/<n>/state read-write, applied repo → /applied/<n>
# read-only. Never another agent's creds/ or run/.
VIEW_AGENTS = "agents"
VIEW_APPLIED = "applied"


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What a backend needs to know about one agent."""

    name: str
    port: int
    manager: bool
    paths: AgentPaths
    rev: str = ""


@dataclass(frozen=True, slots=True)
class Exit:
    """How a harness ended, when the backend can tell."""

    code: int | None = None
    detail: str = ""


class Backend(abc.ABC):
    """Drives agents' containers. Every method is idempotent where it can be."""

    name: str = ""
    # how often lifecycle checks that running containers still run
    poll_interval_s: float = 0.5

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def create(self, spec: AgentSpec) -> None:
        """Builds the container from the applied working tree (not started)."""

    @abc.abstractmethod
    async def start(self, spec: AgentSpec) -> None:
        """Starts it; a running one is left alone."""

    @abc.abstractmethod
    async def stop(self, spec: AgentSpec, *, kill: bool = False) -> None:
        """Stops it (``kill``: at once, without a grace period)."""

    async def restart(self, spec: AgentSpec) -> None:
        await self.stop(spec)
        await self.start(spec)

    @abc.abstractmethod
    async def destroy(self, spec: AgentSpec) -> None:
        """Removes the container (stopping it first); files are lifecycle's."""

    @abc.abstractmethod
    async def update(self, spec: AgentSpec, *, running: bool) -> None:
        """Rebuilds from the applied working tree; restarts it if ``running``.

        A config that fails to build raises before the running container is
        touched, so it keeps its previous config.
        """

    async def expose_to_manager(self, name: str) -> None:
        """Makes agent ``name``'s config, state and applied repo visible to the
        running manager (``/agents/<n>/{config,state}``, ``/applied/<n>``).

        Called after the agent's dirs exist, while the manager may run.
        """
        return None

    @abc.abstractmethod
    async def state(self, spec: AgentSpec) -> str:
        """``running``, ``stopped`` or ``missing``.

        Raises:
            BackendFailed: the backend cannot tell (a failing or hanging
                command); never reported as ``stopped`` or ``missing``.
        """

    def last_exit(self, spec: AgentSpec) -> Exit:
        """How the harness ended last, if known (after :meth:`state` saw it stop)."""
        return Exit()

    @abc.abstractmethod
    async def logs(
        self, spec: AgentSpec, lines: int, after: int | None, after_cursor: str
    ) -> LogsReply:
        """The last ``lines`` lines, or what came after a previous reply's cursor."""


def manager_view_agents(settings: Settings, manager: str) -> list[str]:
    """Agents (and drafts) the manager sees: dirs with a proposed repo, itself aside."""
    root = settings.paths.agents_dir
    if not root.is_dir():
        return []
    return sorted(
        d.name
        for d in root.iterdir()
        if d.name != manager and is_agent_name(d.name) and (d / "proposed").is_dir()
    )


def manager_binds(paths: AgentPaths, root: str = "") -> list[tuple[Path, str, bool]]:
    """``(source, path in the manager's view, read-only)`` for one agent."""
    n = paths.name
    return [
        (paths.proposed, f"{root}/{VIEW_AGENTS}/{n}/config", False),
        (paths.state, f"{root}/{VIEW_AGENTS}/{n}/state", False),
        (paths.applied, f"{root}/{VIEW_APPLIED}/{n}", True),
    ]


async def run_output(argv: list[str], *, timeout: float = 600.0, what: str = "") -> tuple[int, str]:
    """Runs a command; returns its exit code and output (stdout and stderr).

    Raises:
        BackendFailed: it could not run or timed out.
    """
    label = what or argv[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise BackendFailed(f"{label}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BackendFailed(f"{label}: timed out after {timeout:g}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def command_failed(label: str, code: int, output: str) -> BackendFailed:
    """The error of a command that exited non-zero, with the tail of its output."""
    tail = output.strip()[-4000:] or "(no output)"
    return BackendFailed(f"{label} failed (exit {code}):\n{tail}")


async def run_command(argv: list[str], *, timeout: float = 600.0, what: str = "") -> str:
    """Runs a command; returns its output.

    Raises:
        BackendFailed: it could not run, timed out, or exited non-zero; the
            message carries its output (the build error).
    """
    code, text = await run_output(argv, timeout=timeout, what=what)
    if code != 0:
        raise command_failed(what or argv[0], code, text)
    return text
