"""Spawn approvals: one-step (default config) and two-step (draft, then commit)."""

from __future__ import annotations

import pytest

from hyperhive.approvals import gitops
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import BadRequest, Conflict, NotFound
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalQueued,
    DenyRequest,
    DiffReply,
    SpawnCommitRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.events import SpawnResolved
from hyperhive.common.wire.lifecycle import AgentInfo, AgentRequest, DraftInfo, DraftsReply
from tests.approvals.conftest import Hive, agent_name, git_out, head_state

TOML = 'model = "claude-haiku"\nprompt = "You keep the docs tidy."\n'


async def lifecycle_get(hive: Hive, name: str) -> AgentInfo:
    return await rpc.request(
        hive.service, subjects.system("lifecycle", "get"), AgentRequest(name=name), AgentInfo
    )


async def drafts(hive: Hive) -> set[str]:
    reply = await rpc.request(
        hive.service, subjects.system("lifecycle", "drafts"), Empty(), DraftsReply
    )
    return {d.name for d in reply.drafts}


async def test_one_step_spawn_approved_and_denied(hive: Hive) -> None:
    name, other = agent_name("sp"), agent_name("sp")
    q = await hive.tool("request_spawn", SpawnToolRequest(name=name), ApprovalQueued)
    with pytest.raises(Conflict, match="already waiting"):
        await hive.tool("request_spawn", SpawnToolRequest(name=name), ApprovalQueued)
    diff = await hive.admin("diff", ApprovalIdRequest(id=q.id), DiffReply)
    assert "default config" in diff.diff

    info = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)

    assert (info.kind, info.state, info.tag) == ("Spawn", "deployed", f"deployed/{q.id}")
    assert (await lifecycle_get(hive, name)).state == "running"
    applied = hive.paths(name).applied
    assert gitops.tag_sha(applied, f"deployed/{q.id}") == gitops.main_sha(applied)
    assert (await hive.event(SpawnResolved, approval_id=q.id)).state == "deployed"
    with pytest.raises(Conflict, match="already exists"):
        await hive.tool("request_spawn", SpawnToolRequest(name=name), ApprovalQueued)

    q2 = await hive.tool("request_spawn", SpawnToolRequest(name=other), ApprovalQueued)
    denied = await hive.admin("deny", DenyRequest(id=q2.id, note="not now"), ApprovalInfo)
    assert denied.state == "denied"
    ev = await hive.event(SpawnResolved, approval_id=q2.id)
    assert (ev.state, ev.note) == ("denied", "not now")
    with pytest.raises(NotFound):
        await lifecycle_get(hive, other)


async def test_two_step_spawn_from_a_staged_commit(hive: Hive) -> None:
    name = agent_name("sp")
    draft = await hive.tool("request_spawn_draft", SpawnToolRequest(name=name), DraftInfo)
    assert draft.name == name and name in await drafts(hive)
    with pytest.raises(Conflict, match="is a draft"):
        await hive.tool("request_spawn", SpawnToolRequest(name=name), ApprovalQueued)
    with pytest.raises(BadRequest, match="is a draft"):
        await hive.tool(
            "request_apply_commit", ApplyCommitRequest(name=name, commit_ref="main"), ApprovalQueued
        )
    paths = hive.paths(name)
    (paths.state / "notes.md").write_text("# first notes\n")
    sha = hive.commit(name, {"agent.toml": TOML, "prompts/extra.md": "be brief\n"}, "stage")

    q = await hive.tool(
        "request_spawn_commit", SpawnCommitRequest(name=name, commit_ref="main"), ApprovalQueued
    )
    assert q.fetched_sha == sha
    with pytest.raises(Conflict, match="already waiting"):
        await hive.tool(
            "request_spawn_commit", SpawnCommitRequest(name=name, commit_ref=sha), ApprovalQueued
        )
    diff = await hive.admin("diff", ApprovalIdRequest(id=q.id), DiffReply)
    assert sorted(diff.files) == ["agent.nix", "agent.toml", "prompts/extra.md"]  # vs nothing
    assert "+be brief" in diff.diff
    assert not gitops.main_sha(paths.applied)  # nothing deployed before the approval

    info = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)

    assert (info.state, info.tag) == ("deployed", f"deployed/{q.id}")
    assert gitops.main_sha(paths.applied) == sha
    assert head_state(paths.applied) == ("refs/heads/main", sha)
    assert (paths.applied / "prompts" / "extra.md").read_text() == "be brief\n"
    assert (paths.state / "notes.md").read_text() == "# first notes\n"
    assert (await lifecycle_get(hive, name)).state == "running"
    assert name not in await drafts(hive)
    ev = await hive.event(SpawnResolved, approval_id=q.id)
    assert (ev.state, ev.sha, ev.tag) == ("deployed", sha, f"deployed/{q.id}")


async def test_two_step_spawn_that_fails_to_build_stays_a_draft(hive: Hive) -> None:
    name = agent_name("sp")
    await hive.tool("request_spawn_draft", SpawnToolRequest(name=name), DraftInfo)
    paths = hive.paths(name)
    bad = hive.commit(name, {"agent.toml": "model = 5\n"}, "broken")
    q = await hive.tool(
        "request_spawn_commit", SpawnCommitRequest(name=name, commit_ref=bad), ApprovalQueued
    )

    info = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)

    assert info.state == "failed" and "model" in info.error
    assert gitops.tag_sha(paths.applied, f"failed/{q.id}") == bad
    assert not gitops.main_sha(paths.applied)
    assert git_out(paths.applied, "ls-files") == ""
    assert not (paths.applied / "agent.toml").exists()
    assert name in await drafts(hive)
    ev = await hive.event(SpawnResolved, approval_id=q.id)
    assert ev.state == "failed" and "model" in ev.error

    good = hive.commit(name, {"agent.toml": TOML}, "fixed")
    q2 = await hive.tool(
        "request_spawn_commit", SpawnCommitRequest(name=name, commit_ref=good), ApprovalQueued
    )
    info = await hive.admin("approve", ApprovalIdRequest(id=q2.id), ApprovalInfo)
    assert info.state == "deployed"
    assert gitops.main_sha(paths.applied) == good


async def test_spawn_request_names_the_host(hive: Hive) -> None:
    """The manager's request_spawn may name a node: kept in the approval,
    passed to lifecycle's placement (a node that never joined fails the
    build, with why), refused at once when it is no node name."""
    here, nowhere = agent_name("sp"), agent_name("sp")
    with pytest.raises(BadRequest, match="invalid node name"):
        await hive.tool("request_spawn", SpawnToolRequest(name=here, host="No!"), ApprovalQueued)
    q = await hive.tool("request_spawn", SpawnToolRequest(name=here, host="hub"), ApprovalQueued)
    info = await hive.admin("approve", ApprovalIdRequest(id=q.id), ApprovalInfo)
    assert (info.state, info.host) == ("deployed", "hub")
    assert (await lifecycle_get(hive, here)).node == "hub"

    q2 = await hive.tool(
        "request_spawn", SpawnToolRequest(name=nowhere, host="nowhere"), ApprovalQueued
    )
    failed = await hive.admin("approve", ApprovalIdRequest(id=q2.id), ApprovalInfo)
    assert failed.state == "failed" and "node nowhere has never joined" in failed.error
    with pytest.raises(NotFound):
        await lifecycle_get(hive, nowhere)
