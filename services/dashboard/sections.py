"""What each section of the page shows, read through ``hive.admin.*``.

Every loader catches the failure of the service it reads and returns a view
marked down with the reason, so one service being down greys out its own
section only. Loaders run concurrently; each read has the short section
timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hyperhive.common import activity, subjects
from hyperhive.common import endpoints as E
from hyperhive.common.errors import HiveError
from hyperhive.common.wire.approvals import (
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalsRequest,
    QuestionsRequest,
)
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.broker import StatsRequest
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentsRequest,
)
from hyperhive.common.wire.states import APPROVAL_OPEN, DESTROYED, DRAFT, RUNNING
from hyperhive.dashboard import diff, stats
from hyperhive.dashboard.hive import Hive
from hyperhive.dashboard.redact import mask_diff

log = logging.getLogger(__name__)

PENDING_APPROVAL = APPROVAL_OPEN  # approved: deploying now
RESOLVED_SHOWN = 30
ACTIVITY_SHOWN = 300


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    title: str  # l33t heading (the seed's voice)
    service: str  # whose section it is
    label: str = ""  # the heading in plain words (navigation, screen readers)


# Page order. Drafts sit between K3PT ST4T3 and approvals (seed TODO).
SECTIONS: dict[str, Meta] = {
    m.name: m
    for m in (
        Meta("containers", "C0NT41N3RS", "lifecycle", "Containers"),
        Meta("nodes", "N0D3S", "lifecycle", "Nodes"),
        Meta("kept", "K3PT ST4T3", "lifecycle", "Kept state"),
        Meta("drafts", "DR4FTS", "lifecycle", "Drafts"),
        Meta("approvals", "4PPR0V4LS", "approvals", "Approvals"),
        Meta("questions", "QU3ST10NS", "approvals", "Questions"),
        Meta("activity", "4CT1V1TY", "HIVE_EVENTS", "Activity"),
        Meta("flow", "M3SS4G3 FL0W", "broker", "Message flow"),
        Meta("telemetry", "T3L3M3TRY", "broker", "Telemetry"),
    )
}


@dataclass
class View:
    """One section's data, or why it could not be read."""

    meta: Meta
    data: dict[str, Any] = field(default_factory=dict)
    down: str | None = None  # "<service> is down: <reason>"


def _down(meta: Meta, exc: HiveError, service: str | None = None) -> View:
    return View(meta, down=f"{service or meta.service} is down: {exc}")


async def _agents(hive: Hive) -> list[AgentInfo]:
    reply = await hive.read(E.AGENTS, AgentsRequest())
    live = [a for a in reply.agents if a.state not in (DRAFT, DESTROYED)]
    return sorted(live, key=lambda a: (a.name != subjects.MANAGER, a.name))


async def containers(hive: Hive) -> View:
    meta = SECTIONS["containers"]
    try:
        agents = await _agents(hive)
    except HiveError as exc:
        return _down(meta, exc)
    running = [a.name for a in agents if a.state == RUNNING]
    logins = await hive.logins_needed(running)
    return View(meta, {"agents": agents, "now": time.time(), "logins": logins})


async def nodes(hive: Hive) -> View:
    """The hosts that run agents (``hive nodes``): a lost one stands out."""
    meta = SECTIONS["nodes"]
    try:
        reply = await hive.read(E.NODES, Empty())
    except HiveError as exc:
        return _down(meta, exc)
    listed = sorted(reply.nodes, key=lambda n: (n.name != subjects.HUB_NODE, n.name))
    return View(meta, {"nodes": listed, "now": time.time()})


async def kept(hive: Hive) -> View:
    meta = SECTIONS["kept"]
    try:
        reply = await hive.read(E.KEPT, Empty())
    except HiveError as exc:
        return _down(meta, exc)
    return View(meta, {"kept": reply.kept})


async def drafts(hive: Hive) -> View:
    meta = SECTIONS["drafts"]
    try:
        reply = await hive.read(E.DRAFTS, Empty())
    except HiveError as exc:
        return _down(meta, exc)
    return View(meta, {"drafts": reply.drafts})


@dataclass
class Proposal:
    approval: ApprovalInfo
    sha: str
    files: list[diff.DiffFile]
    no_change: bool = False
    error: str | None = None
    default_spawn: bool = False  # a one-shot spawn: default config, nothing to diff


async def proposal(hive: Hive, approval: ApprovalInfo) -> Proposal:
    """An approval with its diff (or why there is none)."""
    sha = approval.fetched_sha or approval.commit_ref
    if approval.kind == "Spawn" and not sha:
        return Proposal(approval, "", [], default_spawn=True)
    try:
        reply = await hive.read(E.DIFF, ApprovalIdRequest(id=approval.id))
    except HiveError as exc:
        return Proposal(approval, sha, [], error=str(exc))
    text = reply.diff
    return Proposal(
        approval,
        reply.sha or sha,
        diff.parse(mask_diff(text)),
        no_change=not text.strip() or text.strip() == diff.NO_CHANGE,
    )


async def approvals(hive: Hive) -> View:
    meta = SECTIONS["approvals"]
    try:
        reply = await hive.read(E.APPROVALS_LIST, ApprovalsRequest(limit=200))
    except HiveError as exc:
        return _down(meta, exc)
    pending = [a for a in reply.approvals if a.state in PENDING_APPROVAL]
    pending.sort(key=lambda a: a.id)
    resolved = [a for a in reply.approvals if a.state not in PENDING_APPROVAL]
    resolved.sort(key=lambda a: a.resolved_at or a.created_at, reverse=True)
    proposals = await asyncio.gather(*(proposal(hive, a) for a in pending))
    return View(meta, {"pending": proposals, "resolved": resolved[:RESOLVED_SHOWN]})


async def questions(hive: Hive) -> View:
    meta = SECTIONS["questions"]
    try:
        reply = await hive.read(E.QUESTIONS, QuestionsRequest())
    except HiveError as exc:
        return _down(meta, exc)
    open_ = sorted((q for q in reply.questions if q.answer is None), key=lambda q: q.id)
    answered = sorted(
        (q for q in reply.questions if q.answer is not None),
        key=lambda q: q.answered_at or 0.0,
        reverse=True,
    )
    return View(meta, {"open": open_, "answered": answered[:RESOLVED_SHOWN]})


async def activity_view(hive: Hive) -> View:
    """The last day of the timeline, newest first (filtered in the page)."""
    meta = SECTIONS["activity"]
    kept = hive.activity_feed() if hive.activity_feed else None
    if kept is not None:  # the event hub's copy: no stream read per page
        since = time.time() - activity.DEFAULT_WINDOW_S
        entries = [e for e in kept if e.ts >= since][-ACTIVITY_SHOWN:]
    else:
        try:
            async with asyncio.timeout(hive.read_timeout * 2):
                entries = await activity.read(hive.nc.jetstream(), limit=ACTIVITY_SHOWN)
        except (HiveError, TimeoutError) as exc:
            return View(meta, down=f"HIVE_EVENTS unreadable: {exc or 'timed out'}")
    entries.reverse()
    names = sorted({e.agent for e in entries if e.agent})
    return View(
        meta,
        {
            "entries": entries,
            "agents": names,
            "categories": activity.CATEGORIES,
        },
    )


async def flow(hive: Hive) -> View:
    """The flow itself streams over SSE; this only offers agent names to filter on."""
    meta = SECTIONS["flow"]
    try:
        names = [a.name for a in await _agents(hive)]
    except HiveError:
        names = []  # the filter is free text too: the flow works without lifecycle
    return View(meta, {"agents": names})


async def telemetry(hive: Hive) -> View:
    meta = SECTIONS["telemetry"]
    try:
        # one row per turn is enough to learn which agents have stats
        recent = StatsRequest(since=time.time() - 86_400, key=stats.TURN_KEY, limit=5000)
        reply = await hive.read(E.TURN_STATS, recent)
    except HiveError as exc:
        return _down(meta, exc)
    names = {p.agent for p in reply.points}
    try:
        names |= {a.name for a in await _agents(hive)}
    except HiveError:
        pass  # charts of agents with stats still work without lifecycle
    ordered = sorted(names, key=lambda n: (n != subjects.MANAGER, n))
    return View(meta, {"agents": ordered})


LOADERS: dict[str, Callable[[Hive], Awaitable[View]]] = {
    "containers": containers,
    "nodes": nodes,
    "kept": kept,
    "drafts": drafts,
    "approvals": approvals,
    "questions": questions,
    "activity": activity_view,
    "flow": flow,
    "telemetry": telemetry,
}


async def load(name: str, hive: Hive) -> View:
    """One section; a loader bug shows as a broken section, not a broken page."""
    try:
        return await LOADERS[name](hive)
    except Exception:
        log.exception("section %s failed", name)
        return View(SECTIONS[name], down=f"{name}: internal error (see dashboard log)")


async def load_all(hive: Hive) -> list[View]:
    return list(await asyncio.gather(*(load(n, hive) for n in SECTIONS)))
