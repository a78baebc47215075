"""Service wiring: the approval queue's handlers and its background loop."""

from __future__ import annotations

from hyperhive.approvals.handlers import Handlers
from hyperhive.approvals.machine import Machine
from hyperhive.approvals.notify import Notifier
from hyperhive.approvals.notify import check as check_notify
from hyperhive.approvals.peers import Peers
from hyperhive.common import endpoints as E
from hyperhive.common.config import Settings
from hyperhive.common.service import Runtime


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
    await rt.serve_all(
        {
            E.REQUEST_APPLY_COMMIT: h.request_apply_commit,
            E.REQUEST_SPAWN: h.request_spawn,
            E.REQUEST_SPAWN_DRAFT: h.request_spawn_draft,
            E.REQUEST_SPAWN_COMMIT: h.request_spawn_commit,
            E.ASK_OPERATOR: h.ask_operator,
            E.APPROVALS_LIST: h.list_approvals,
            E.DIFF: h.diff,
            E.APPROVE: h.approve,
            E.DENY: h.deny,
            E.QUESTIONS: h.questions,
            E.ANSWER: h.answer,
        }
    )
    rt.spawn(machine.settle_loop(), "approvals-settle")
    if notifier.enabled:
        rt.spawn(notifier.loop(), "approvals-notify")
