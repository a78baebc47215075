"""Service wiring: the approval queue's handlers and its background loop."""

from __future__ import annotations

import msgspec

from hyperhive.approvals.handlers import Handlers
from hyperhive.approvals.machine import Machine
from hyperhive.approvals.peers import Peers
from hyperhive.common import subjects
from hyperhive.common.rpc import Handler, manager_only
from hyperhive.common.service import Runtime
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalsRequest,
    ApproveRequest,
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
    tools: dict[str, tuple[type[msgspec.Struct], Handler]] = {
        "request_apply_commit": (ApplyCommitRequest, h.request_apply_commit),
        "request_spawn": (SpawnToolRequest, h.request_spawn),
        "request_spawn_draft": (SpawnToolRequest, h.request_spawn_draft),
        "request_spawn_commit": (SpawnCommitRequest, h.request_spawn_commit),
        "ask_operator": (AskRequest, h.ask_operator),
    }
    assert set(tools) == set(subjects.APPROVALS_MANAGER_TOOLS)
    for tool, (request_type, handler) in tools.items():
        await serve(subjects.agent_wildcard(tool), request_type, manager_only(handler))
    admin = subjects.admin
    await serve(admin(PART, "list"), ApprovalsRequest, h.list_approvals)
    await serve(admin(PART, "diff"), ApprovalIdRequest, h.diff)
    await serve(admin(PART, "approve"), ApproveRequest, h.approve)
    await serve(admin(PART, "deny"), DenyRequest, h.deny)
    await serve(admin(PART, "questions"), QuestionsRequest, h.questions)
    await serve(admin(PART, "answer"), AnswerRequest, h.answer)
    rt.spawn(machine.settle_loop(), "approvals-settle")
