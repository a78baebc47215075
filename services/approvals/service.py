"""Service wiring: the approval queue's handlers and its background loop."""

from __future__ import annotations

from hyperhive.approvals.handlers import Handlers
from hyperhive.approvals.machine import Machine
from hyperhive.approvals.peers import Peers
from hyperhive.common import subjects
from hyperhive.common.service import Runtime
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalsRequest,
    AskRequest,
    DenyRequest,
    QuestionsRequest,
    SpawnCommitRequest,
    SpawnToolRequest,
)

PART = "approvals"


async def start(rt: Runtime) -> None:
    """Serves the manager's tools and the operator's verbs; recovers and
    reports interrupted approvals in the background."""
    assert rt.pool is not None and rt.outbox is not None
    peers = Peers(rt.nc, rt.settings.approvals.build_timeout_s)
    machine = Machine(rt.pool, rt.settings, peers, rt.outbox.kick)
    h = Handlers(rt.pool, rt.settings, peers, machine, rt.outbox.kick)
    serve = rt.responder.serve
    tool = subjects.manager_tool
    await serve(tool("request_apply_commit"), ApplyCommitRequest, h.request_apply_commit)
    await serve(tool("request_spawn"), SpawnToolRequest, h.request_spawn)
    await serve(tool("request_spawn_draft"), SpawnToolRequest, h.request_spawn_draft)
    await serve(tool("request_spawn_commit"), SpawnCommitRequest, h.request_spawn_commit)
    await serve(tool("ask_operator"), AskRequest, h.ask_operator)
    admin = subjects.admin
    await serve(admin(PART, "list"), ApprovalsRequest, h.list_approvals)
    await serve(admin(PART, "diff"), ApprovalIdRequest, h.diff)
    await serve(admin(PART, "approve"), ApprovalIdRequest, h.approve)
    await serve(admin(PART, "deny"), DenyRequest, h.deny)
    await serve(admin(PART, "questions"), QuestionsRequest, h.questions)
    await serve(admin(PART, "answer"), AnswerRequest, h.answer)
    rt.spawn(machine.settle_loop(), "approvals-settle")
