"""Manager tools called by another agent: a clear Forbidden, nothing written."""

from __future__ import annotations

import msgspec
import pytest

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import endpoints, nats_auth, rpc, subjects
from hyperhive.common.errors import Forbidden, HiveError
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    AskRequest,
    QuestionsReply,
    QuestionsRequest,
    SpawnCommitRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.lifecycle import DraftInfo
from tests import rig
from tests.approvals.conftest import Hive, agent_name


async def test_a_plain_agent_calling_a_manager_tool_is_forbidden(
    hive: Hive, nats_server: EmbeddedNats
) -> None:
    name = agent_name("pm")
    await hive.spawn(name)  # a real agent, with the NATS credentials lifecycle issued
    newbie = agent_name("nb")
    # what those credentials allow: its own subjects, its own inbox
    assert nats_auth.agent_permissions(name).publish[0] == subjects.agent_all(name)
    calls: dict[str, msgspec.Struct] = {
        "request_spawn": SpawnToolRequest(name=newbie),
        "request_spawn_draft": SpawnToolRequest(name=newbie),
        "request_spawn_commit": SpawnCommitRequest(name=newbie, commit_ref="main"),
        "request_apply_commit": ApplyCommitRequest(name=name, commit_ref="main"),
        "ask_operator": AskRequest(question="may I?"),
    }
    assert set(calls) == {e.verb for e in endpoints.MANAGER_ENDPOINTS if e.service == "approvals"}
    async with rig.agent_connection(nats_server, hive.settings, name) as nc:
        for tool, req in calls.items():
            with pytest.raises(Forbidden, match=f"only the manager hm1nd may call {tool}$"):
                await rpc.request(nc, subjects.agent(name, tool), req, ApprovalQueued)
        # speaking as the manager is refused by NATS itself: no reply comes
        with pytest.raises(HiveError):
            await rpc.request(
                nc,
                subjects.manager_tool("request_spawn"),
                SpawnToolRequest(name=newbie),
                ApprovalQueued,
                timeout=2,
            )

    listed = await hive.admin("list", ApprovalsRequest(), ApprovalsReply)
    assert listed.approvals == []
    questions = await hive.admin("questions", QuestionsRequest(), QuestionsReply)
    assert questions.questions == []
    assert not hive.paths(newbie).root.exists()  # no draft was made
    # the manager itself is served on the same subscriptions
    draft = await hive.tool("request_spawn_draft", SpawnToolRequest(name=newbie), DraftInfo)
    assert draft.name == newbie
