"""A running stack for the dashboard: broker, lifecycle, approvals, dashboard.

All four run in-process on one NATS server and one database and data dir per
test module. The NATS server is per module, not the session's: the dashboard
replays HIVE_EVENTS from JetStream, and another module's events (whose
message ids come from another database) would show up in its flow. The
harness command is ``sleep 3600`` (the real harness needs claude): lifecycle
only needs a process it can start, watch and stop.

The dashboard always requires the operator token: every client here logs in
(:func:`logged_in`, the URL ``hive up`` prints, or ``Authorization: Bearer``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    AskRequest,
    QuestionInfo,
    QuestionsReply,
    QuestionsRequest,
)
from hyperhive.common.wire.lifecycle import AgentInfo, AgentsReply, AgentsRequest, SpawnRequest
from tests import rig

SLEEP = "sleep 3600"
TIMEOUT = 30.0
ALL_PARTS = ("broker", "lifecycle", "approvals", "dashboard")


TOKEN_FILE = "operator-token"


def stack_settings(nats: EmbeddedNats, database_url: str, home: Path, **overrides: str) -> Settings:
    """Service settings with a harmless harness, a free dashboard port and an
    operator token of its own (``home/operator-token``, as ``hive up`` makes)."""
    token_file = home / TOKEN_FILE
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(32) + "\n")
        token_file.chmod(0o600)
    env = {
        "HIVE_DASHBOARD_TOKEN_FILE": str(token_file),
        "HIVE_DASHBOARD_PORT": str(free_port()),
        "HIVE_LIFECYCLE_HARNESS_COMMAND": SLEEP,
        "HIVE_LIFECYCLE_MANAGER_PORT": str(free_port()),
        "HIVE_LIFECYCLE_PORT_BASE": "23100",
        "HIVE_LIFECYCLE_START_GRACE_S": "0.3",
        "HIVE_LIFECYCLE_STOP_TIMEOUT_S": "5",
        "HIVE_LIFECYCLE_MONITOR_INTERVAL_S": "0.3",
        "HIVE_LIFECYCLE_AUTO_UPDATE_INTERVAL_S": "3600",
        "HIVE_LIFECYCLE_REV": "test-rev-1",
    }
    env.update(overrides)
    return rig.make_settings(nats, database_url, home, **env)


@dataclass
class Stack:
    settings: Settings
    url: str  # the dashboard, e.g. http://127.0.0.1:PORT
    nats: EmbeddedNats
    operator: NATS  # operator credentials (hive.admin.*)
    manager: NATS | None  # hm1nd's own credentials, when lifecycle runs

    @property
    def token(self) -> str:
        """The dashboard's operator token."""
        return operator_token(self.settings)

    @property
    def login_url(self) -> str:
        """The URL ``hive up`` prints: logs a browser in, then redirects to ``/``."""
        return f"{self.url}/login?token={self.token}"


def operator_token(settings: Settings) -> str:
    if settings.dashboard.token:
        return settings.dashboard.token
    return Path(settings.dashboard.token_file).read_text().strip()


async def log_in(client: httpx.AsyncClient, token: str) -> None:
    """Logs ``client`` in as a browser does with the printed URL (session cookie)."""
    r = await client.get("/login", params={"token": token})
    assert r.status_code == 303, (r.status_code, r.text[:300])
    assert r.headers["location"] == "/"
    assert client.cookies.get("hive_session")


@asynccontextmanager
async def logged_in(stack: Stack, timeout: float = TIMEOUT) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the dashboard with the operator's session cookie."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=timeout) as client:
        await log_in(client, stack.token)
        yield client


@asynccontextmanager
async def running_stack(
    nats: EmbeddedNats,
    settings: Settings,
    parts: tuple[str, ...] = ALL_PARTS,
) -> AsyncIterator[Stack]:
    """Runs ``parts`` in-process; yields connections as the operator and hm1nd."""
    async with AsyncExitStack() as stack:
        # registered first so it runs last: after lifecycle stopped
        stack.callback(rig.cleanup_agents, nats, settings.paths.agents_dir)
        for part in parts:
            await stack.enter_async_context(rig.running_service(part, settings))
        operator = await rig.connect_as(nats, nats.operator_seed, "_INBOX.operator")
        stack.push_async_callback(operator.close)
        manager = None
        seed = AgentPaths.of(settings, subjects.MANAGER).nats_seed
        if "lifecycle" in parts and seed.exists():
            manager = await stack.enter_async_context(
                rig.agent_connection(nats, settings, subjects.MANAGER)
            )
        url = f"http://{settings.dashboard.host}:{settings.dashboard.port}"
        yield Stack(settings=settings, url=url, nats=nats, operator=operator, manager=manager)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[EmbeddedNats]:
    with rig.nats_server() as server:
        yield server


@pytest.fixture(scope="module")
async def stack(
    nats_server: EmbeddedNats,
    postgres_server: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """The whole stack, shared by one test module (tests use unique agent names)."""
    database_url = await rig.create_database(postgres_server.url)
    home = tmp_path_factory.mktemp("dash-home")
    settings = stack_settings(nats_server, database_url, home)
    async with running_stack(nats_server, settings) as running:
        yield running


def unique_name(prefix: str) -> str:
    """A valid agent name (≤ 9 chars) unique across the session."""
    return f"{prefix}{uuid.uuid4().hex[: 9 - len(prefix)]}"


CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


async def csrf_session(client: httpx.AsyncClient) -> str:
    """Loads the page (which sets the CSRF cookie) and returns its token."""
    page = await client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:500]
    match = CSRF_META.search(page.text)
    assert match, "page has no CSRF token"
    return match.group(1)


def _commit(repo: Path, edit: Callable[[str], str], message: str) -> str:
    toml = repo / "agent.toml"
    toml.write_text(edit(toml.read_text()))
    git = ["git", "-C", str(repo), "-c", "user.name=hm1nd", "-c", "user.email=hm1nd@hive"]
    subprocess.run([*git, "commit", "-qam", message], check=True)
    out = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


async def commit_config(
    settings: Settings, name: str, edit: Callable[[str], str], message: str
) -> str:
    """Edits and commits the agent's proposed agent.toml as hm1nd would; returns the sha."""
    repo = AgentPaths.of(settings, name).proposed
    return await asyncio.to_thread(_commit, repo, edit, message)


def set_prompt(prompt: str) -> Callable[[str], str]:
    """An agent.toml edit that sets its ``prompt``."""
    return lambda text: text.replace('prompt = ""', f'prompt = "{prompt}"')


async def spawn_agent(stack: Stack, prefix: str) -> str:
    """Spawns a uniquely named agent as the operator; returns its name."""
    name = unique_name(prefix)
    info = await rpc.request(
        stack.operator,
        subjects.admin("lifecycle", "spawn"),
        SpawnRequest(name=name),
        AgentInfo,
        timeout=TIMEOUT,
    )
    assert info.state == "running"
    return name


async def request_apply_commit(stack: Stack, name: str, sha: str) -> int:
    """hm1nd asks to apply ``sha`` to ``name``; returns the approval id."""
    assert stack.manager is not None
    queued = await rpc.request(
        stack.manager,
        subjects.manager_tool("request_apply_commit"),
        ApplyCommitRequest(name=name, commit_ref=sha),
        ApprovalQueued,
        timeout=TIMEOUT,
    )
    return queued.id


async def ask_operator(
    stack: Stack, question: str, options: list[str] | None = None, multi: bool = False
) -> int:
    """hm1nd asks the operator; returns the question id."""
    assert stack.manager is not None
    queued = await rpc.request(
        stack.manager,
        subjects.manager_tool("ask_operator"),
        AskRequest(question=question, options=options, multi=multi),
        ApprovalQueued,
        timeout=TIMEOUT,
    )
    return queued.id


async def approval(stack: Stack, approval_id: int) -> ApprovalInfo:
    """One approval as the approvals service has it."""
    reply = await rpc.request(
        stack.operator,
        subjects.admin("approvals", "list"),
        ApprovalsRequest(limit=500),
        ApprovalsReply,
    )
    return next(a for a in reply.approvals if a.id == approval_id)


async def question(stack: Stack, question_id: int) -> QuestionInfo:
    """One operator question as the approvals service has it."""
    reply = await rpc.request(
        stack.operator, subjects.admin("approvals", "questions"), QuestionsRequest(), QuestionsReply
    )
    return next(q for q in reply.questions if q.id == question_id)


async def agents(stack: Stack) -> dict[str, AgentInfo]:
    """The registry's agents by name."""
    reply = await rpc.request(
        stack.operator, subjects.admin("lifecycle", "list"), AgentsRequest(), AgentsReply
    )
    return {a.name: a for a in reply.agents}
