"""One decision per approval: double and concurrent approve/deny."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from hyperhive.approvals import gitops
from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import Conflict, HiveError, NotFound
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    DenyRequest,
)
from tests import rig
from tests.approvals.conftest import Hive, agent_name

TOML = 'model = "m-{n}"\n'


async def queue(hive: Hive, name: str, n: int) -> ApprovalQueued:
    sha = hive.commit(name, {"agent.toml": TOML.format(n=n)}, f"change {n}")
    return await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )


async def approvals(hive: Hive) -> dict[int, ApprovalInfo]:
    reply = await hive.admin("list", ApprovalsRequest(), ApprovalsReply)
    return {a.id: a for a in reply.approvals}


async def test_second_approve_and_deny_get_conflict(hive: Hive) -> None:
    name = agent_name()
    await hive.spawn(name)
    q = await queue(hive, name, 1)
    first = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)
    assert first.state == "deployed"
    with pytest.raises(Conflict, match=f"approval {q.id} is already deployed"):
        await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)
    with pytest.raises(Conflict, match="already deployed"):
        await hive.admin("deny", DenyRequest(id=q.id, note="too late"), ApprovalInfo)
    with pytest.raises(NotFound):
        await hive.admin("approve", ApprovalIdRequest(id=q.id + 1000), ApprovalInfo)
    applied = hive.paths(name).applied
    assert not gitops.tag_sha(applied, f"denied/{q.id}")


async def test_concurrent_approve_and_deny_exactly_one_wins(
    hive: Hive, nats_server: EmbeddedNats
) -> None:
    """The dashboard and the CLI: two operator connections racing."""
    name = agent_name()
    await hive.spawn(name)
    applied = hive.paths(name).applied
    second = await rig.connect_as(nats_server, nats_server.operator_seed, "_INBOX.operator")
    try:
        for n in range(4):
            await race_once(hive, second, name, applied, n)
    finally:
        await second.close()


async def race_once(hive: Hive, second: NATS, name: str, applied: Path, n: int) -> None:
    q = await queue(hive, name, n)

    def on_second(verb: str, req: ApprovalIdRequest | DenyRequest) -> Awaitable[ApprovalInfo]:
        subject = subjects.admin("approvals", verb)
        return rpc.request(second, subject, req, ApprovalInfo, timeout=60)

    verbs = [
        hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo),
        on_second("deny", DenyRequest(id=q.id, note=f"no {n}")),
        on_second("approve", ApprovalIdRequest(id=q.id)),
    ]
    if n % 2:
        verbs.reverse()
    results = await asyncio.gather(*verbs, return_exceptions=True)
    wins = [r for r in results if isinstance(r, ApprovalInfo)]
    losses = [r for r in results if isinstance(r, HiveError)]
    assert len(wins) == 1, results
    assert len(losses) == 2 and all(isinstance(e, Conflict) for e in losses), results
    assert all(f"approval {q.id}" in str(e) for e in losses), losses
    state = (await approvals(hive))[q.id].state
    assert state == wins[0].state
    tags = {s for s in ("deployed", "failed", "denied") if gitops.tag_sha(applied, f"{s}/{q.id}")}
    assert tags == {state}
