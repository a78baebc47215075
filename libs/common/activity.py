"""The activity timeline: what happened in the hive, in plain words.

Built on ``HIVE_EVENTS``: each record of the agent, approval, question,
crash, stuck and node families becomes one :class:`Entry` (message traffic and turn
statistics stay in their own views). The dashboard's activity section and
``hive log`` read it the same way (:func:`read`) and say the same words
(:func:`entry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hyperhive.common import subjects
from hyperhive.common.errors import Unavailable
from hyperhive.common.wire.events import (
    AgentCreated,
    AgentDestroyed,
    AgentDrafted,
    AgentPurged,
    AgentStateChanged,
    ApprovalApproved,
    ApprovalEventData,
    ApprovalQueuedEvent,
    CrashDetected,
    HiveEvent,
    NodeBackEvent,
    NodeJoinedEvent,
    NodeLostEvent,
    QuestionAnswered,
    QuestionAsked,
    StuckDetected,
    decode_event,
    event_data,
)
from hyperhive.common.wire.states import (
    CREATING,
    DENIED,
    DEPLOYED,
    DESTROYED,
    FAILED,
    REBUILDING,
    RESTARTING,
    RUNNING,
    SPAWN,
    STOPPED,
    STUCK_WHY,
)

FAMILIES: Final = ("agent", "approval", "question", "crash", "stuck", "node")
# what --kind / the dashboard's filter accept besides event kinds and families
CATEGORIES: Final = (
    "spawn",
    "deploy",
    "deny",
    "fail",
    "approval",
    "question",
    "answer",
    "crash",
    "stuck",
    "restart",
    "start",
    "stop",
    "destroy",
    "draft",
    "node",
)
WHO_KINDS: Final = ("operator", "manager", "agent", "system")
TEXT_LIMIT: Final = 300
DEFAULT_WINDOW_S: Final = 86_400.0
READ_BATCH: Final = 256
READ_WAIT_S: Final = 1.0


class Entry(msgspec.Struct, kw_only=True):
    """One line of the timeline."""

    seq: int  # HIVE_EVENTS sequence
    ts: float
    kind: str  # the event kind, e.g. approval.resolved
    category: str  # one of CATEGORIES
    agent: str  # the agent it concerns ('' for none)
    who: str  # who did it, as recorded (e.g. 'operator via cli (ann@box)')
    who_kind: str  # operator | manager | agent | system
    text: str  # what happened, one line of plain words
    approval: int | None = None  # the approval it concerns (its diff)
    question: int | None = None  # the question it concerns
    link: str = ""  # the dashboard's page of it (a path)
    note: str = ""  # a deny's note, a build error, an answer


def _clip(value: object, limit: int = TEXT_LIMIT) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def who_kind(who: str) -> str:
    """operator | manager | agent | system, for a recorded ``by``."""
    if who.startswith(subjects.OPERATOR):
        return "operator"
    if who == subjects.MANAGER:
        return "manager"
    if not who or who == subjects.SYSTEM:
        return "system"
    return "agent"


def _who(*values: str, default: str = subjects.SYSTEM) -> str:
    """The first recorded ``by`` among ``values`` (clipped), or ``default``."""
    for value in values:
        if value:
            return _clip(value, 200)
    return default


def entry(ev: HiveEvent, seq: int) -> Entry | None:
    """The timeline's line for one event; None for events it leaves out."""
    agent = ev.agent or ""
    fields: dict[str, Any] = {}
    match event_data(ev):
        case AgentCreated(by=by):
            category, who = "spawn", _who(by)
            text = f"agent {agent} created and started"
        case AgentStateChanged(by=by) as data:
            made = _agent_state(agent, data)
            if made is None:
                return None
            category, text = made
            who = _who(by)
        case AgentDestroyed(by=by, purged=purged):
            category, who = "destroy", _who(by)
            kept = "its state purged" if purged else "its state kept"
            text = f"agent {agent} destroyed ({kept})"
        case AgentPurged(by=by):
            category, who = "destroy", _who(by)
            text = f"kept state of {agent} purged"
        case AgentDrafted(by=by):
            category, who = "draft", _who(by, default=subjects.MANAGER)
            text = f"draft of a new agent {agent} started"
        case ApprovalEventData() as data:
            category, who, text, fields = _approval(agent, data)
        case QuestionAsked(id=qid, question=question, by=by):
            category, who = "question", agent or _who(by)
            fields = {"question": qid}
            text = f"question #{qid}: {_clip(question)}"
        case QuestionAnswered(id=qid, answer=answer, answered_by=answered_by, by=by):
            category, who = "answer", _who(answered_by, by, default=subjects.OPERATOR)
            said = ", ".join(answer)
            fields = {"question": qid, "note": _clip(said)}
            text = f"question #{qid} answered: {_clip(said, 120)}"
        case CrashDetected(event=crash):
            category, who = "crash", subjects.SYSTEM
            code = crash.exit_code
            text = f"agent {agent} stopped unexpectedly" + (f" (exit code {code})" if code else "")
            fields = {"note": _clip(crash.detail, 200)}
        case StuckDetected(event=stuck):
            category, who = "stuck", subjects.SYSTEM
            why = STUCK_WHY.get(stuck.reason, stuck.reason)
            text = f"agent {agent} looks stuck: {why}"
            fields = {"note": _clip(stuck.detail, 200)}
        case NodeJoinedEvent(node=node):
            category, who = "node", subjects.SYSTEM
            text = f"node {_clip(node, 40)} joined the hive"
        case NodeLostEvent(node=node, agents=names):
            category, who = "node", subjects.SYSTEM
            on = ", ".join(names) or "no agents"
            text = f"node {_clip(node, 40)} lost (no heartbeat); its agents: {on}"
        case NodeBackEvent(node=node, agents=names):
            category, who = "node", subjects.SYSTEM
            on = ", ".join(names) or "no agents"
            text = f"node {_clip(node, 40)} back; its agents: {on}"
        case _:
            return None
    link = ""
    if fields.get("approval") is not None:
        link = f"/approvals/{fields['approval']}/diff"
    elif fields.get("question") is not None:
        link = f"/#question-{fields['question']}"
    return Entry(
        seq=seq,
        ts=ev.ts,
        kind=ev.kind,
        category=category,
        agent=agent,
        who=who,
        who_kind=who_kind(who),
        text=text,
        link=link,
        **fields,
    )


def _agent_state(agent: str, d: AgentStateChanged) -> tuple[str, str] | None:
    state, previous, flag = d.state, d.previous, d.flag or ""
    if state == CREATING or previous == CREATING:
        return None  # agent.created says it
    if state == RUNNING and flag == RESTARTING:
        return "restart", f"agent {agent} restarted"
    if state == RUNNING and flag == REBUILDING:
        return "deploy", f"agent {agent} rebuilt with its new config"
    if state == RUNNING:
        return "start", f"agent {agent} started (was {previous or 'unknown'})"
    by_itself = d.exit_code is not msgspec.UNSET or d.detail is not msgspec.UNSET
    if state == STOPPED and by_itself and not d.by:
        code = d.exit_code
        return "stop", f"agent {agent} stopped by itself" + (f" (exit code {code})" if code else "")
    if state == STOPPED:
        return "stop", f"agent {agent} stopped"
    if state == FAILED:
        return "fail", f"agent {agent} failed (was {previous or 'unknown'})"
    if state == DESTROYED:
        return None  # agent.destroyed says it
    return "start", f"agent {agent} is {state}"


def _approval(agent: str, d: ApprovalEventData) -> tuple[str, str, str, dict[str, Any]]:
    aid = d.id
    sha = d.sha[:12]
    spawn = d.kind == SPAWN
    what = (
        (f"spawn {agent}" + (f" at {sha}" if sha else "")) if spawn else f"deploy {sha} to {agent}"
    )
    fields: dict[str, Any] = {"approval": aid}
    decided = _who(d.decided_by, d.by, default=subjects.OPERATOR)
    if isinstance(d, ApprovalQueuedEvent):
        return (
            "approval",
            _who(d.by, default=subjects.MANAGER),
            f"approval #{aid} asked: {what}",
            fields,
        )
    if isinstance(d, ApprovalApproved):
        return "approval", decided, f"approval #{aid} approved: {what} (building)", fields
    if d.state == DEPLOYED:
        done = f"agent {agent} spawned" if spawn else f"{sha} deployed to {agent}"
        return ("spawn" if spawn else "deploy"), decided, f"approval #{aid}: {done}", fields
    if d.state == DENIED:
        fields["note"] = _clip(d.note)
        note = f": “{fields['note']}”" if fields["note"] else " (no note)"
        return "deny", decided, f"approval #{aid} denied ({what}){note}", fields
    fields["note"] = _clip(d.error)
    return "fail", decided, f"approval #{aid} failed ({what})", fields


def matches(e: Entry, kinds: Iterable[str] = (), agent: str = "") -> bool:
    """Whether ``e`` passes the filters: ``kinds`` are categories, event
    kinds or families (any may match); ``agent`` is the agent it concerns or
    who did it."""
    wanted = [k.strip() for k in kinds if k.strip()]
    if wanted and not any(k in (e.category, e.kind) or e.kind.startswith(k + ".") for k in wanted):
        return False
    return not agent or agent in (e.agent, e.who)


async def read(
    js: JetStreamContext,
    *,
    since: float | None = None,
    kinds: Iterable[str] = (),
    agent: str = "",
    limit: int = 200,
) -> list[Entry]:
    """The newest ``limit`` entries after ``since`` (default: the last day),
    oldest first, read from HIVE_EVENTS with a short-lived consumer.

    Raises:
        Unavailable: HIVE_EVENTS cannot be read.
    """
    kinds = list(kinds)
    start = since if since is not None else datetime.now(UTC).timestamp() - DEFAULT_WINDOW_S
    found: deque[Entry] = deque(maxlen=max(1, limit))
    name = f"activity-{uuid.uuid4().hex[:16]}"
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
        if info.state.last_seq == 0:
            return []
        await js.add_consumer(
            subjects.EVENTS_STREAM,
            ConsumerConfig(
                name=name,
                filter_subjects=[subjects.event_family(f) for f in FAMILIES],
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.fromtimestamp(start, UTC),
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
        sub = await js.pull_subscribe_bind(durable=None, stream=subjects.EVENTS_STREAM, name=name)
        pending = (await js.consumer_info(subjects.EVENTS_STREAM, name)).num_pending
    except (nats.errors.Error, OSError) as exc:
        raise Unavailable(f"cannot read {subjects.EVENTS_STREAM}: {exc}") from None
    try:
        done = not pending
        while not done:
            try:
                msgs = await sub.fetch(batch=READ_BATCH, timeout=READ_WAIT_S)
            except nats.errors.TimeoutError:
                break  # nothing (more) after since
            for msg in msgs:
                meta = msg.metadata
                try:
                    ev = decode_event(msg.data)
                except msgspec.DecodeError:
                    continue
                e = entry(ev, meta.sequence.stream)
                if e is not None and matches(e, kinds, agent):
                    found.append(e)
                if meta.num_pending == 0 or meta.sequence.stream >= info.state.last_seq:
                    done = True
    except (nats.errors.Error, OSError) as exc:
        raise Unavailable(f"cannot read {subjects.EVENTS_STREAM}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(js.delete_consumer(subjects.EVENTS_STREAM, name), timeout=1.0)
    return list(found)
