"""Service wiring: the approval queue's handlers and its background loop."""

from __future__ import annotations

import msgspec

from hyperhive.approvals.handlers import Handlers
from hyperhive.approvals.machine import Machine
from hyperhive.approvals.notify import Notifier
from hyperhive.approvals.notify import check as check_notify
from hyperhive.approvals.peers import Peers
from hyperhive.common import subjects
from hyperhive.common.config import Settings
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


def check(settings: Settings) -> None:
    """A webhook URL the sender cannot use stops the service at start."""
    check_notify(settings.notify)


async def start(rt: Runtime) -> None:
    """Serves the manager's tools and the operator's verbs; recovers and
    reports interrupted approvals in the background."""
    assert rt.pool is not None and rt.outbox is not None
    peers = Peers(rt.nc, rt.settings.approvals.build_timeout_s)
    notifier = Notifier(rt.pool, rt.settings.notify)
    outbox_kick = rt.outbox.kick

    def kick() -> None:  # a change was committed: publish its event, notify
        outbox_kick()
        notifier.kick()

    machine = Machine(rt.pool, rt.settings, peers, kick)
    h = Handlers(rt.pool, rt.settings, peers, machine, kick)
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
    if notifier.enabled:
        rt.spawn(notifier.loop(), "approvals-notify")
