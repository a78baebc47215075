"""The approvals service dies mid-approval: it finishes the job at its next start.

Builds here are slow on purpose (a harness that ignores SIGTERM makes every
restart wait out lifecycle's stop timeout), so "while the build runs" is a
window of seconds, not a race.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import asyncpg
import pytest

from hyperhive.approvals import gitops
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import Conflict, HiveError
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    SpawnCommitRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.base import Ping, Pong
from hyperhive.common.wire.events import ApprovalResolved
from hyperhive.common.wire.lifecycle import DraftInfo
from tests import rig
from tests.approvals.conftest import (
    SLOW_BUILDS,
    Hive,
    agent_name,
    commit_files,
    delete_tag,
    git_out,
    head_state,
)

GOOD = 'model = "after-crash"\n'
END_STATES = ("deployed", "failed", "denied")


@pytest.fixture
def lifecycle_overrides() -> dict[str, str]:
    return SLOW_BUILDS


async def queue(hive: Hive, name: str, toml: str = GOOD) -> ApprovalQueued:
    sha = hive.commit(name, {"agent.toml": toml})
    return await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )


class Left(NamedTuple):
    """What an approvals run that has ended since left behind (see :func:`left_pending`)."""

    name: str
    applied: Path
    base: str  # the applied repo's main before the approval
    queued: ApprovalQueued


async def left_pending(hive: Hive, prefix: str) -> Left:
    """A new agent with one apply-commit approval pending, queued by an
    approvals service that has stopped since."""
    name = agent_name(prefix)
    await hive.spawn(name)
    applied = hive.paths(name).applied
    base = gitops.main_sha(applied)
    async with rig.running_service("approvals", hive.settings):
        q = await queue(hive, name)
    return Left(name, applied, base, q)


async def state_of(hive: Hive, approval_id: int) -> ApprovalInfo:
    reply = await hive.admin("list", ApprovalsRequest(), ApprovalsReply, timeout=10)
    (info,) = [a for a in reply.approvals if a.id == approval_id]
    return info


async def ended(hive: Hive, approval_id: int) -> ApprovalInfo:
    async def check() -> ApprovalInfo | None:
        try:
            info = await state_of(hive, approval_id)
        except HiveError:
            return None  # the service is still starting
        return info if info.state in END_STATES else None

    return await rig.eventually(check, timeout=90, interval=0.2, what=f"approval {approval_id} end")


@contextlib.asynccontextmanager
async def approvals_db(hive: Hive) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the approvals service's schema, past the service."""
    conn = await asyncpg.connect(
        hive.settings.database.url, server_settings={"search_path": "approvals"}
    )
    try:
        yield conn
    finally:
        await conn.close()


async def stage(hive: Hive, sql: str, *args: object) -> None:
    """Writes what a killed run would have left in the database."""
    async with approvals_db(hive) as conn:
        await conn.execute(sql, *args)


async def stage_approved(hive: Hive, approval_id: int, base: str, attempts: int = 1) -> None:
    """The row as a run killed during the build left it: approved, with its base
    and the number of builds begun."""
    await stage(
        hive,
        "UPDATE approvals SET state = 'approved', base_sha = $2, attempts = $3 WHERE id = $1",
        approval_id,
        base,
        attempts,
    )


async def peek_state(hive: Hive, approval_id: int) -> str:
    """The row's state read from the database (the service is down)."""
    async with approvals_db(hive) as conn:
        return str(await conn.fetchval("SELECT state FROM approvals WHERE id = $1", approval_id))


def assert_repo_agrees(hive: Hive, name: str, info: ApprovalInfo, base: str) -> None:
    """Tags, main, HEAD and the working tree say what the database says."""
    applied = hive.paths(name).applied
    tags = {s for s in END_STATES if gitops.tag_sha(applied, f"{s}/{info.id}")}
    assert tags == {info.state}
    assert gitops.tag_sha(applied, f"{info.state}/{info.id}") == info.fetched_sha
    expected_main = info.fetched_sha if info.state == "deployed" else base
    assert gitops.main_sha(applied) == expected_main
    assert head_state(applied) == ("refs/heads/main", expected_main)
    assert git_out(applied, "status", "--porcelain") == ""


@contextlib.asynccontextmanager
async def approvals_process(hive: Hive, log_dir: Path) -> AsyncIterator[rig.ServiceProcess]:
    proc = rig.start_service_process("approvals", hive.settings, log_dir)
    try:

        async def up() -> bool:
            try:
                await rpc.request(
                    hive.operator, subjects.admin("approvals", "ping"), Ping(), Pong, timeout=1
                )
                return True
            except HiveError:
                assert proc.proc.poll() is None, proc.output()
                return False

        await rig.eventually(up, timeout=30, interval=0.1, what="approvals answers ping")
        yield proc
    finally:
        proc.stop(signal.SIGTERM, timeout=30)


# With a short op wait, lifecycle answers the restarted service's retry with
# Conflict while the interrupted build still runs: recovery waits and retries.
@pytest.mark.parametrize(
    "lifecycle_overrides",
    [SLOW_BUILDS, {**SLOW_BUILDS, "HIVE_LIFECYCLE_OP_WAIT_S": "0.3"}],
    ids=["lifecycle-waits", "lifecycle-busy"],
)
async def test_sigkill_during_build_then_restart_finishes_once(peers: Hive, tmp_path: Path) -> None:
    hive = peers
    name = agent_name("rc")
    await hive.spawn(name)
    applied = hive.paths(name).applied
    base = gitops.main_sha(applied)
    builds = asyncio.Queue[str]()

    async def on_apply(msg: object) -> None:
        builds.put_nowait("apply")

    # a plain (non-queue) subscriber sees each apply request lifecycle gets
    watch = await hive.service.subscribe(subjects.system("lifecycle", "apply"), cb=on_apply)
    try:
        async with approvals_process(hive, tmp_path) as first:
            q = await queue(hive, name)
            approve = asyncio.create_task(
                hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo, timeout=60)
            )
            await asyncio.wait_for(builds.get(), timeout=30)
            first.proc.kill()  # SIGKILL while lifecycle is building
            first.proc.wait(10)
            approve.cancel()  # nobody is left to reply
            with contextlib.suppress(asyncio.CancelledError, HiveError):
                await approve
            assert (await peek_state(hive, q.id)) == "approved"
        # stopped mid-approval: the row says approved, the tree is the proposal
        async with approvals_process(hive, tmp_path):
            info = await ended(hive, q.id)
            assert info.state == "deployed", info
            assert_repo_agrees(hive, name, info, base)
            assert (applied / "agent.toml").read_text() == GOOD

            events = await rig.eventually(
                lambda: hive.events(ApprovalResolved, approval_id=q.id),
                timeout=20,
                what="ApprovalResolved",
            )
            assert {e.state for e in events} == {"deployed"}
            with pytest.raises(Conflict, match="already deployed"):
                await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)
    finally:
        await watch.unsubscribe()


async def test_two_approvals_of_one_agent_do_not_interleave(hive: Hive) -> None:
    name = agent_name("rc")
    await hive.spawn(name)
    a = await queue(hive, name, 'model = "a"\n')
    b = await queue(hive, name, 'model = "b"\n')
    first = asyncio.create_task(
        hive.admin("approve", ApprovalIdRequest(id=a.id), ApprovalInfo, timeout=60)
    )

    async def building() -> bool:
        return (await state_of(hive, a.id)).state == "approved"

    await rig.eventually(building, timeout=20, what="a is building")
    with pytest.raises(Conflict, match="being deployed"):
        await hive.admin("approve", ApprovalIdRequest(id=b.id), ApprovalInfo)
    assert (await first).state == "deployed"
    assert (await state_of(hive, b.id)).state == "pending"
    later = await hive.admin("approve", ApprovalIdRequest(id=b.id), ApprovalInfo, timeout=60)
    assert later.state == "deployed"
    assert gitops.main_sha(hive.paths(name).applied) == b.fetched_sha


# --- each crash point, staged directly in the database and the repo ----------


@pytest.mark.parametrize(
    ("crash_point", "end"),
    [
        ("after the deployed tag", "deployed"),
        ("after the failed tag", "failed"),
        ("during a retried build", "failed"),
    ],
)
async def test_recovery_of_each_crash_point(peers: Hive, crash_point: str, end: str) -> None:
    hive = peers
    name, applied, base, q = await left_pending(hive, "rp")
    # what a killed run leaves: row approved, tree at the proposal, maybe an end tag
    await stage_approved(hive, q.id, base, 2 if crash_point == "during a retried build" else 1)
    gitops.checkout_detached(applied, q.fetched_sha)
    if crash_point == "after the deployed tag":
        gitops.create_tag(applied, f"deployed/{q.id}", q.fetched_sha)
    elif crash_point == "after the failed tag":
        gitops.create_tag(applied, f"failed/{q.id}", q.fetched_sha, f"x\n\nbuild broke {q.id}")

    async with rig.running_service("approvals", hive.settings):
        info = await ended(hive, q.id)
    assert info.state == end, (crash_point, info)
    assert_repo_agrees(hive, name, info, base)
    if crash_point == "after the failed tag":
        assert info.error == f"build broke {q.id}"
    if crash_point == "during a retried build":
        assert info.error.startswith("interrupted")


async def test_second_instance_does_not_take_over_a_running_build(peers: Hive) -> None:
    """Two approvals instances share the queue: recovery in one must not
    rebuild what the other is building (the Postgres session lock says so)."""
    hive = peers
    name = agent_name("rc")
    await hive.spawn(name)
    applies = asyncio.Queue[str]()

    async def on_apply(msg: object) -> None:
        applies.put_nowait("apply")

    watch = await hive.service.subscribe(subjects.system("lifecycle", "apply"), cb=on_apply)
    try:
        async with (
            rig.running_service("approvals", hive.settings),
            rig.running_service("approvals", hive.settings),
        ):
            q = await queue(hive, name)
            info = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo, timeout=60)
            assert info.state == "deployed"
        assert applies.qsize() == 1  # several recovery sweeps ran meanwhile (every 0.5 s)
        async with approvals_db(hive) as conn:
            assert await conn.fetchval("SELECT attempts FROM approvals WHERE id = $1", q.id) == 1
    finally:
        await watch.unsubscribe()


async def test_crash_between_deny_commit_and_denied_tag(peers: Hive) -> None:
    hive = peers
    _name, applied, base, q = await left_pending(hive, "rd")
    # the deny committed (state, note, tag name), the service died before tagging
    note = "not now\nthe budget is spent"
    await stage(
        hive,
        "UPDATE approvals SET state = 'denied', note = $2, tag = $3, resolved_at = now(),"
        " tagged = false WHERE id = $1",
        q.id,
        note,
        f"denied/{q.id}",
    )
    assert not gitops.tag_sha(applied, f"denied/{q.id}")

    async with rig.running_service("approvals", hive.settings):
        await rig.eventually(
            lambda: gitops.tag_sha(applied, f"denied/{q.id}"), timeout=20, what="denied tag"
        )
        event = await hive.event(ApprovalResolved, approval_id=q.id)
    assert gitops.tag_sha(applied, f"denied/{q.id}") == q.fetched_sha
    assert gitops.message_body(gitops.tag_message(applied, f"denied/{q.id}")) == note
    assert git_out(applied, "cat-file", "-t", f"refs/tags/denied/{q.id}") == "tag"
    assert (event.state, event.note, event.tag) == ("denied", note, f"denied/{q.id}")
    assert gitops.main_sha(applied) == base


async def test_crash_between_the_row_and_the_proposal_tag(peers: Hive) -> None:
    """The row is committed before proposal/<id> is written: a crash in between
    leaves a row without its tag, which the next start writes."""
    hive = peers
    name = agent_name("rt")
    await hive.spawn(name)
    applied = hive.paths(name).applied
    async with rig.running_service("approvals", hive.settings):
        q = await queue(hive, name)
        # a draft's spawn commit that loses the race for its name writes no tag
        draft = agent_name("rt")
        await hive.tool("request_spawn_draft", SpawnToolRequest(name=draft), DraftInfo)
        sha = commit_files(hive.paths(draft).proposed, {"agent.toml": GOOD}, "first")
        first = await hive.tool(
            "request_spawn_commit", SpawnCommitRequest(name=draft, commit_ref=sha), ApprovalQueued
        )
        with pytest.raises(Conflict, match="already waiting"):
            await hive.tool(
                "request_spawn_commit",
                SpawnCommitRequest(name=draft, commit_ref=sha),
                ApprovalQueued,
            )
        assert git_out(hive.paths(draft).applied, "tag", "-l").split() == [f"proposal/{first.id}"]
    delete_tag(applied, f"proposal/{q.id}")
    await stage(hive, "UPDATE approvals SET pinned = false WHERE id = $1", q.id)

    async with rig.running_service("approvals", hive.settings):
        await rig.eventually(
            lambda: gitops.tag_sha(applied, f"proposal/{q.id}"), timeout=20, what="proposal tag"
        )
        assert gitops.tag_sha(applied, f"proposal/{q.id}") == q.fetched_sha
        info = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo, timeout=60)
        assert info.state == "deployed"


async def test_recovery_fails_an_approval_whose_repo_is_gone(peers: Hive) -> None:
    """An approved row whose applied repo vanished ends failed, once, instead
    of being retried at every sweep."""
    hive = peers
    _name, applied, base, q = await left_pending(hive, "rg")
    await stage_approved(hive, q.id, base)
    shutil.rmtree(applied)

    async with rig.running_service("approvals", hive.settings):
        info = await ended(hive, q.id)
        event = await hive.event(ApprovalResolved, approval_id=q.id)
    assert info.state == "failed", info
    assert "no applied repo" in info.error
    assert info.tag == ""
    assert (event.state, event.error) == ("failed", info.error)
