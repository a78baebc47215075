"""A running approvals service with its peers, and helpers to drive it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import git
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import AckRequest, RecvReply, RecvRequest
from hyperhive.common.wire.events import HiveEvent, SystemEvent
from hyperhive.common.wire.lifecycle import AgentInfo, SpawnRequest
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.rig import cleanup_agents

T = TypeVar("T", bound=msgspec.Struct)
E = TypeVar("E", bound=SystemEvent)
AUTHOR = git.Actor("hm1nd", "hm1nd@hive")
_names = itertools.count()


def agent_name(prefix: str = "ap") -> str:
    """A unique agent name for this session (NATS is shared across tests)."""
    return f"{prefix}{os.getpid() % 100}x{next(_names)}"[:9]


@dataclass
class Hive:
    settings: Settings
    manager: NATS
    operator: NATS
    service: NATS
    received: list[SystemEvent] = field(default_factory=list)

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
        """System events the manager has received so far: takes what is in
        hm1nd's inbox with ``recv`` and acks it, as the manager's harness does."""
        while True:
            reply = await rpc.request(
                self.manager, subjects.agent(subjects.MANAGER, "recv"), RecvRequest(), RecvReply
            )
            if reply.message is None:
                return list(self.received)
            if reply.message.event is not None:
                self.received.append(reply.message.event)
            await rpc.request(
                self.manager,
                subjects.agent(subjects.MANAGER, "ack"),
                AckRequest(id=reply.message.id),
                Ok,
            )

    async def events(self, kind: type[E], **fields: object) -> list[E]:
        """The ``kind`` events the manager has received so far (see :meth:`inbox`)
        whose ``fields`` have the given values, in the order they came."""
        return [
            e
            for e in await self.inbox()
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
        ]

    async def event(self, kind: type[E], *, timeout: float = 20, **fields: object) -> E:
        """The first of :meth:`events`, waited for up to ``timeout`` seconds."""

        async def first() -> E | None:
            found = await self.events(kind, **fields)
            return found[0] if found else None

        what = " ".join([kind.__name__, *map(str, fields.values())])
        return await rig.eventually(first, timeout=timeout, what=what)


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


def head_state(repo_path: Path) -> tuple[str, str]:
    """``(symbolic ref or "", commit or "")`` of HEAD."""
    with git.Repo(repo_path) as repo:
        try:
            sym = str(repo.git.execute(["git", "symbolic-ref", "--quiet", "HEAD"]))
        except git.GitCommandError:
            sym = ""
        try:
            sha = str(
                repo.git.execute(["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
            )
        except git.GitCommandError:
            sha = ""
    return sym.strip(), sha.strip()


def delete_tag(repo_path: Path, name: str) -> None:
    """Removes tag ``name`` if it exists."""
    git_out(repo_path, "update-ref", "-d", f"refs/tags/{name}")


# A harness that ignores SIGTERM: every restart (so every build of an agent
# that runs) waits out lifecycle's stop timeout. Gives a test a build that is
# reliably in progress for a few seconds.
SLOW_BUILDS = {
    "HIVE_LIFECYCLE_HARNESS_COMMAND": "sh -c \"trap '' TERM; exec sleep 3600\"",
    "HIVE_LIFECYCLE_STOP_TIMEOUT_S": "4",
}


@pytest.fixture
def lifecycle_overrides() -> dict[str, str]:
    """Extra settings for this module's tests (a module may override this fixture)."""
    return {}


@pytest.fixture
def ap_settings(
    nats_server: EmbeddedNats,
    database_url: str,
    hive_home: Path,
    lifecycle_overrides: dict[str, str],
) -> Iterator[Settings]:
    """Lifecycle with a harmless harness (``sleep``) and a manager; quick retries."""
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_MANAGER=subjects.MANAGER,
        HIVE_APPROVALS_NOTIFY_RETRY_S="0.5",
        **lifecycle_overrides,
    )
    yield settings
    reap_harnesses(settings.paths.agents_dir)
    cleanup_agents(nats_server, settings.paths.agents_dir)


def reap_harnesses(agents_dir: Path) -> None:
    """Stops the harnesses lifecycle started from this process and reaps them
    (an unreaped zombie would make ``cleanup_agents`` wait out its timeout)."""
    for pid_file in agents_dir.glob("*/run/harness.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@pytest.fixture
async def peers(
    ap_settings: Settings, nats_server: EmbeddedNats, operator_nc: NATS, service_nc: NATS
) -> AsyncIterator[Hive]:
    """Real lifecycle and broker in this process, hm1nd connected; approvals
    is not started (tests that restart it start it themselves)."""
    async with (
        rig.running_service("lifecycle", ap_settings),
        rig.running_service("broker", ap_settings),
        rig.agent_connection(nats_server, ap_settings, subjects.MANAGER) as manager,
    ):
        yield Hive(ap_settings, manager, operator_nc, service_nc)


@pytest.fixture
async def hive(peers: Hive) -> AsyncIterator[Hive]:
    """Everything running, approvals in this process."""
    async with rig.running_service("approvals", peers.settings):
        yield peers


async def hive_events(
    nc: NATS,
    kind_filter: str,
    match: Callable[[HiveEvent], bool],
    count: int,
    timeout: float = 20,
) -> list[HiveEvent]:
    """The first ``count`` HIVE_EVENTS records on ``hive.events.<kind_filter>``
    that ``match``, read from the stream's start (NATS is shared by all tests)."""
    sub = await nc.jetstream().subscribe(f"hive.events.{kind_filter}", ordered_consumer=True)
    found: list[HiveEvent] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while len(found) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"only {len(found)} of {count} {kind_filter} events: {found}")
            try:
                msg = await sub.next_msg(timeout=min(left, 1.0))
            except nats.errors.TimeoutError:
                continue
            event = msgspec.json.decode(msg.data, type=HiveEvent)
            if match(event):
                found.append(event)
    finally:
        await sub.unsubscribe()
    return found
