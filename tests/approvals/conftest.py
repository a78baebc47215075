"""A running approvals service with its peers, and helpers to drive it."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import git
import msgspec
import pytest
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.events import SystemEvent
from hyperhive.common.wire.lifecycle import AgentInfo, SpawnRequest
from tests import rig
from tests.approvals.standins import StandIns, standins

T = TypeVar("T", bound=msgspec.Struct)
AUTHOR = git.Actor("hm1nd", "hm1nd@hive")
_names = itertools.count()


def agent_name(prefix: str = "ap") -> str:
    """A unique agent name for this session (NATS is shared across tests)."""
    return f"{prefix}{os.getpid() % 100}x{next(_names)}"[:9]


@pytest.fixture(scope="session")
async def manager_seed(nats_server: EmbeddedNats) -> Path:
    return rig.add_agent_user(nats_server, subjects.MANAGER)


@pytest.fixture
async def manager_nc(nats_server: EmbeddedNats, manager_seed: Path) -> AsyncIterator[NATS]:
    """Connected as hm1nd, with hm1nd's permissions."""
    nc = await rig.connect_as(nats_server, manager_seed, subjects.inbox_prefix(subjects.MANAGER))
    yield nc
    await nc.close()


@dataclass
class Hive:
    settings: Settings
    manager: NATS
    operator: NATS
    service: NATS
    peers: StandIns

    async def tool(self, tool: str, req: msgspec.Struct, reply: type[T], timeout: float = 30) -> T:
        """Calls a manager tool as hm1nd."""
        return await rpc.request(
            self.manager, subjects.manager_tool(tool), req, reply, timeout=timeout
        )

    async def admin(self, verb: str, req: msgspec.Struct, reply: type[T], timeout: float = 60) -> T:
        """Calls an operator verb of approvals."""
        return await rpc.request(
            self.operator, subjects.admin("approvals", verb), req, reply, timeout=timeout
        )

    def paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self.settings, name)

    async def spawn(self, name: str) -> AgentInfo:
        """The operator creates an agent directly (default config)."""
        return await rpc.request(
            self.operator,
            subjects.admin("lifecycle", "spawn"),
            SpawnRequest(name=name),
            AgentInfo,
            timeout=60,
        )

    def commit(self, name: str, files: dict[str, str | None], message: str = "change") -> str:
        """Commits ``files`` (None: delete) in the agent's proposed repo. Returns the sha."""
        return commit_files(self.paths(name).proposed, files, message)

    async def inbox(self) -> list[SystemEvent]:
        """System events delivered to the manager so far."""
        return [d.event for d in self.peers.delivered]


def commit_files(
    repo_path: Path, files: dict[str, str | None], message: str, amend: bool = False
) -> str:
    with git.Repo(repo_path) as repo:
        for rel, text in files.items():
            path = repo_path / rel
            if text is None:
                repo.index.remove([rel], working_tree=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            repo.index.add([rel])
        if amend:
            repo.git.commit("--amend", "-m", message, env=_env())
            return repo.head.commit.hexsha
        return repo.index.commit(message, author=AUTHOR, committer=AUTHOR).hexsha


def _env() -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": "hm1nd",
        "GIT_AUTHOR_EMAIL": "hm1nd@hive",
        "GIT_COMMITTER_NAME": "hm1nd",
        "GIT_COMMITTER_EMAIL": "hm1nd@hive",
    }


def git_out(repo_path: Path, *args: str) -> str:
    """Output of a git command in ``repo_path`` (as an auditor would run it)."""
    with git.Repo(repo_path) as repo:
        return str(repo.git.execute(["git", *args]))


@pytest.fixture
async def hive(
    settings: Settings, manager_nc: NATS, operator_nc: NATS, service_nc: NATS
) -> AsyncIterator[Hive]:
    async with standins(service_nc, settings) as peers:
        async with rig.running_service("approvals", settings):
            yield Hive(settings, manager_nc, operator_nc, service_nc, peers)
