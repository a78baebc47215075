"""Every operator decision is attributed: who and when, in the row, the end
tag's message, the manager's inbox event and the HIVE_EVENTS record."""

from __future__ import annotations

import time
import uuid

import pytest

from hyperhive.approvals import gitops
from hyperhive.common.errors import BadRequest
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApplyCommitRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    ApproveRequest,
    AskRequest,
    DenyRequest,
    QuestionInfo,
    SpawnToolRequest,
)
from hyperhive.common.wire.events import ApprovalResolved, OperatorAnswered, SpawnResolved
from tests.approvals.conftest import Hive, agent_name, hive_events

GOOD = 'model = "claude-sonnet-4-5"\n'
BAD = "model = 5\n"
DASHBOARD = 'operator via dashboard (token "operator")'
CLI = "operator via cli (tester@box)"


async def propose(hive: Hive, name: str, toml: str) -> ApprovalQueued:
    sha = hive.commit(name, {"agent.toml": toml})
    return await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )


async def row(hive: Hive, approval_id: int) -> ApprovalInfo:
    reply = await hive.admin("list", ApprovalsRequest(limit=1000), ApprovalsReply)
    return next(a for a in reply.approvals if a.id == approval_id)


def trailers(message: str) -> dict[str, str]:
    """The ``Key: value`` lines of a tag message's last paragraph."""
    last = message.rsplit("\n\n", 1)[-1]
    return dict(line.split(": ", 1) for line in last.splitlines())


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def test_approve_deny_and_failure_record_who_and_when(hive: Hive) -> None:
    name = agent_name("at")
    await hive.spawn(name)
    applied = hive.paths(name).applied
    deployed = await propose(hive, name, GOOD)
    before = time.time()
    info = await hive.admin(
        "approve", ApproveRequest(id=deployed.id, decided_by=DASHBOARD), ApprovalInfo
    )
    assert info.state == "deployed"
    assert info.decided_by == DASHBOARD
    assert info.decided_at is not None and before - 1 <= info.decided_at <= time.time() + 1
    assert info.resolved_at is not None and info.decided_at <= info.resolved_at
    assert (await row(hive, deployed.id)).decided_by == DASHBOARD
    message = gitops.tag_message(applied, f"deployed/{deployed.id}")
    assert message.startswith(f"approval {deployed.id} for {name} deployed")
    assert trailers(message) == {"Decided-by": DASHBOARD, "Decided-at": utc(info.decided_at)}
    ev = await hive.event(ApprovalResolved, approval_id=deployed.id)
    assert (ev.decided_by, ev.decided_at) == (DASHBOARD, info.decided_at)

    failed = await propose(hive, name, BAD)
    info = await hive.admin("approve", ApproveRequest(id=failed.id, decided_by=CLI), ApprovalInfo)
    assert (info.state, info.decided_by) == ("failed", CLI)
    message = gitops.tag_message(applied, f"failed/{failed.id}")
    assert trailers(message)["Decided-by"] == CLI
    body = gitops.message_body(message)
    assert "Decided-by" not in body and "model" in body  # the build error, as before
    assert (await hive.event(ApprovalResolved, approval_id=failed.id)).decided_by == CLI

    denied = await propose(hive, name, GOOD + "# again\n")
    info = await hive.admin(
        "deny", DenyRequest(id=denied.id, note="not today", decided_by=CLI), ApprovalInfo
    )
    assert (info.state, info.decided_by) == ("denied", CLI)
    assert info.decided_at is not None
    message = gitops.tag_message(applied, f"denied/{denied.id}")
    assert gitops.message_body(message) == "not today"
    assert trailers(message) == {"Decided-by": CLI, "Decided-at": utc(info.decided_at)}
    ev = await hive.event(ApprovalResolved, approval_id=denied.id)
    assert (ev.state, ev.decided_by, ev.note) == ("denied", CLI, "not today")

    records = await hive_events(
        hive.service,
        "approval.resolved",
        lambda e: e.agent == name and e.data.get("id") in (deployed.id, failed.id, denied.id),
        3,
    )
    assert {e.data["id"]: e.data["decided_by"] for e in records} == {
        deployed.id: DASHBOARD,
        failed.id: CLI,
        denied.id: CLI,
    }
    assert all(e.data["decided_at"] for e in records)


async def test_spawn_decisions_are_attributed(hive: Hive) -> None:
    name, other = agent_name("as"), agent_name("as")
    q = await hive.tool("request_spawn", SpawnToolRequest(name=name), ApprovalQueued)
    info = await hive.admin("approve", ApproveRequest(id=q.id, decided_by=CLI), ApprovalInfo)
    assert (info.state, info.decided_by) == ("deployed", CLI)
    ev = await hive.event(SpawnResolved, approval_id=q.id)
    assert (ev.decided_by, ev.decided_at) == (CLI, info.decided_at)
    message = gitops.tag_message(hive.paths(name).applied, f"deployed/{q.id}")
    assert trailers(message)["Decided-by"] == CLI

    q2 = await hive.tool("request_spawn", SpawnToolRequest(name=other), ApprovalQueued)
    await hive.admin("deny", DenyRequest(id=q2.id, note="no", decided_by=DASHBOARD), ApprovalInfo)
    assert (await hive.event(SpawnResolved, approval_id=q2.id)).decided_by == DASHBOARD


async def test_an_answer_is_attributed(hive: Hive) -> None:
    tag = uuid.uuid4().hex[:8]
    q = await hive.tool(
        "ask_operator", AskRequest(question=f"ok? {tag}", options=["yes", "no"]), ApprovalQueued
    )
    info = await hive.admin(
        "answer", AnswerRequest(id=q.id, answer=["yes"], decided_by=DASHBOARD), QuestionInfo
    )
    assert info.answered_by == DASHBOARD and info.answered_at
    ev = await hive.event(OperatorAnswered, question_id=q.id)
    assert (ev.answer, ev.answered_by) == (["yes"], DASHBOARD)
    (record,) = await hive_events(
        hive.service, "question.answered", lambda e: tag in str(e.data.get("question")), 1
    )
    assert record.data["answered_by"] == DASHBOARD


async def test_unattributed_and_bad_attribution(hive: Hive) -> None:
    name = agent_name("au")
    await hive.spawn(name)
    q = await propose(hive, name, GOOD)
    for bad in ("operator\nvia forged line", "x" * 201, "tab\there"):
        with pytest.raises(BadRequest, match="decided_by"):
            await hive.admin("approve", ApproveRequest(id=q.id, decided_by=bad), ApprovalInfo)
        with pytest.raises(BadRequest, match="decided_by"):
            await hive.admin("deny", DenyRequest(id=q.id, note="n", decided_by=bad), ApprovalInfo)
    assert (await row(hive, q.id)).state == "pending"  # nothing changed
    # an older client that does not say who: recorded as such
    info = await hive.admin("approve", ApproveRequest(id=q.id), ApprovalInfo)
    assert (info.state, info.decided_by) == ("deployed", "operator (unattributed)")
