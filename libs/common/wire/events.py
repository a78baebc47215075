"""System events delivered into agents' inboxes, and HIVE_EVENTS records."""

from __future__ import annotations

import logging
from typing import Any, Final, get_args

import msgspec

from hyperhive.common.wire.states import (
    AgentFlag,
    AgentKind,
    AgentState,
    ApprovalEnd,
    ApprovalKind,
    ApprovalState,
    StuckReason,
)

log = logging.getLogger(__name__)

# --- system events: sender ``system``, put into an inbox by the broker -------


class ContainerCrash(msgspec.Struct, kw_only=True, tag=True):
    """An agent's container stopped without anyone asking it to."""

    agent: str
    detail: str = ""
    exit_code: int | None = None


class AgentStuck(msgspec.Struct, kw_only=True, tag=True):
    """An agent's heartbeat stopped, or its turn ran past the limit."""

    agent: str
    reason: StuckReason
    since: float = 0.0
    detail: str = ""


class ApprovalResolved(msgspec.Struct, kw_only=True, tag=True):
    """An ApplyCommit approval reached an end state."""

    approval_id: int
    agent: str
    state: ApprovalEnd
    tag: str = ""
    note: str = ""
    sha: str = ""
    error: str = ""  # the build error when state is failed
    decided_by: str = ""  # who approved or denied it
    decided_at: float | None = None


class SpawnResolved(msgspec.Struct, kw_only=True, tag=True):
    """A Spawn approval reached an end state."""

    approval_id: int
    agent: str
    state: ApprovalEnd
    note: str = ""
    error: str = ""  # why the create failed when state is failed
    tag: str = ""  # deployed/<id> etc. for a two-step spawn
    sha: str = ""  # the spawn commit of a two-step spawn
    decided_by: str = ""
    decided_at: float | None = None


class OperatorAnswered(msgspec.Struct, kw_only=True, tag=True):
    """The operator answered an ``ask_operator`` question."""

    question_id: int
    question: str
    answer: list[str] = msgspec.field(default_factory=list)
    answered_by: str = ""


class NodeLost(msgspec.Struct, kw_only=True, tag=True):
    """A node's heartbeat stopped: its agents are out of reach (their
    messages wait in the broker)."""

    node: str
    agents: list[str] = msgspec.field(default_factory=list)
    silent_s: float = 0.0  # how long no heartbeat came


class NodeBack(msgspec.Struct, kw_only=True, tag=True):
    """A lost node answers again: its agents were adopted (or restarted)."""

    node: str
    agents: list[str] = msgspec.field(default_factory=list)
    restarted: list[str] = msgspec.field(default_factory=list)  # were down: started again


SystemEvent = (
    ContainerCrash
    | AgentStuck
    | ApprovalResolved
    | SpawnResolved
    | OperatorAnswered
    | NodeLost
    | NodeBack
)

SYSTEM_EVENT_TYPES: tuple[type[msgspec.Struct], ...] = (
    ContainerCrash,
    AgentStuck,
    ApprovalResolved,
    SpawnResolved,
    OperatorAnswered,
    NodeLost,
    NodeBack,
)


# --- HIVE_EVENTS: one record per committed state change ----------------------


class HiveEvent(msgspec.Struct, kw_only=True):
    """A state change on ``hive.events.<kind>``: the envelope as stored.

    ``kind`` repeats the subject suffix (``message.sent``, ``agent.state``,
    ``approval.resolved``, ...) so a record is self-describing when stored;
    ``data`` holds the kind's fields, ``agent`` the agent it concerns (if any).
    ``data`` stays a plain object on the wire; :func:`event_data` reads it as
    the kind's typed :class:`EventData` (the tagged union ``AnyEventData``).
    """

    kind: str
    ts: float
    agent: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str = ""  # unique per event; used as Nats-Msg-Id for dedupe


# The tag of each kind's data is the event kind. It lives in the envelope
# (``kind``), not in ``data`` (whose approval records have a ``kind`` of their
# own), so the union is tagged on a field that only exists while decoding.
EVENT_TAG: Final = "_kind"


class EventData(msgspec.Struct, kw_only=True, tag_field=EVENT_TAG):
    """The data of one ``HIVE_EVENTS`` kind; ``by``: who caused the change
    (:mod:`hyperhive.common.actor`), when known."""

    by: str = ""


# --- message.*: written in SQL by the broker (``hyperhive.broker.store``) ------


class MessageEventData(EventData, kw_only=True):
    id: int
    sender: str
    recipient: str
    body: str  # the first ``body_chars`` characters, masked
    deliveries: int = 0
    ts: float = 0.0  # when the message was committed


class MessageSent(MessageEventData, tag="message.sent"):
    pass


class MessageDelivered(MessageEventData, tag="message.delivered"):
    """Handed out by ``recv`` the first time."""


class MessageRedelivered(MessageEventData, tag="message.redelivered"):
    """Handed out again: its lease ran out before an ack."""


class MessageAcked(MessageEventData, tag="message.acked"):
    pass


class MessagesPruned(EventData, tag="messages.pruned"):
    before: float
    deleted: int


class TurnStatsRecorded(EventData, tag="stats.turn"):
    ts: float
    values: dict[str, float] = msgspec.field(default_factory=dict)


# --- agent.*: lifecycle --------------------------------------------------------


class AgentCreated(EventData, tag="agent.created"):
    agent_kind: AgentKind
    port: int | None = None
    backend: str = ""
    node: str = ""  # the node it was placed on ('' : before nodes existed)


class AgentStateChanged(EventData, tag="agent.state"):
    """A committed change of an agent's state (not written when it stays)."""

    state: AgentState
    previous: AgentState | None = None  # None: just registered
    flag: AgentFlag | None = None  # the operation that made it (None: none, e.g. a crash)
    seq: int = 0  # the agent's ``state_seq`` after the change
    # only present when the container stopped by itself (lifecycle's monitor saw it)
    exit_code: int | msgspec.UnsetType | None = msgspec.UNSET
    detail: str | msgspec.UnsetType = msgspec.UNSET


class AgentDestroyed(EventData, tag="agent.destroyed"):
    purged: bool = False


class AgentPurged(EventData, tag="agent.purged"):
    pass


class AgentDrafted(EventData, tag="agent.draft"):
    head: str = ""


# --- approval.* and question.*: approvals --------------------------------------


class ApprovalEventData(EventData, kw_only=True):
    """An approval's row as the event records it."""

    id: int
    kind: ApprovalKind
    state: ApprovalState
    sha: str = ""
    ref: str = ""
    tag: str = ""
    note: str = ""
    error: str = ""
    decided_by: str = ""
    decided_at: float | None = None


class ApprovalQueuedEvent(ApprovalEventData, tag="approval.queued"):
    pass


class ApprovalApproved(ApprovalEventData, tag="approval.approved"):
    """pending → approved: the build starts."""


class ApprovalResolvedEvent(ApprovalEventData, tag="approval.resolved"):
    """An end state: deployed, failed or denied."""


class QuestionAsked(EventData, tag="question.asked"):
    id: int
    question: str
    options: list[str] | None = None
    multi: bool = False


class QuestionAnswered(EventData, tag="question.answered"):
    id: int
    question: str
    answer: list[str] = msgspec.field(default_factory=list)
    answered_by: str = ""


# --- crash.detected / stuck.detected: crash-watch -----------------------------


class CrashDetected(EventData, tag="crash.detected"):
    event: ContainerCrash  # what the manager's inbox got


class StuckDetected(EventData, tag="stuck.detected"):
    event: AgentStuck


# --- node.*: lifecycle's control half (docs/architecture.md "Beyond one host")


class NodeJoinedEvent(EventData, tag="node.joined"):
    node: str
    revision: str = ""
    hostname: str = ""  # as the joining machine said (hive node --join)


class NodeLostEvent(EventData, tag="node.lost"):
    node: str
    agents: list[str] = msgspec.field(default_factory=list)
    silent_s: float = 0.0


class NodeBackEvent(EventData, tag="node.back"):
    node: str
    agents: list[str] = msgspec.field(default_factory=list)
    adopted: list[str] = msgspec.field(default_factory=list)  # found running
    restarted: list[str] = msgspec.field(default_factory=list)  # started again


AnyEventData = (
    MessageSent
    | MessageDelivered
    | MessageRedelivered
    | MessageAcked
    | MessagesPruned
    | TurnStatsRecorded
    | AgentCreated
    | AgentStateChanged
    | AgentDestroyed
    | AgentPurged
    | AgentDrafted
    | ApprovalQueuedEvent
    | ApprovalApproved
    | ApprovalResolvedEvent
    | QuestionAsked
    | QuestionAnswered
    | CrashDetected
    | StuckDetected
    | NodeJoinedEvent
    | NodeLostEvent
    | NodeBackEvent
)
EVENT_DATA_TYPES: Final[dict[str, type[EventData]]] = {
    t.__struct_config__.tag: t  # type: ignore[misc]
    for t in get_args(AnyEventData)
}


_decoder = msgspec.json.Decoder(HiveEvent)
_encoder = msgspec.json.Encoder()


def decode_event(payload: bytes | str) -> HiveEvent:
    """A ``HIVE_EVENTS`` record; its data typed by :func:`event_data`.

    Raises:
        msgspec.DecodeError: not a record.
    """
    return _decoder.decode(payload)


def encode_event(ev: HiveEvent) -> bytes:
    """The JSON of a ``HIVE_EVENTS`` record, as published and stored."""
    return _encoder.encode(ev)


def event_kind(data: EventData) -> str:
    """The event kind (``hive.events.<kind>``) of ``data``."""
    return str(data.__struct_config__.tag)


def event_data(ev: HiveEvent) -> AnyEventData | None:
    """``ev``'s data as its kind's type; None for a kind this version does not
    know (readers skip it) or data that does not match its kind (logged)."""
    if ev.kind not in EVENT_DATA_TYPES:
        return None
    raw: dict[str, Any] = {**ev.data, EVENT_TAG: ev.kind}
    inner = raw.get("event")
    if isinstance(inner, dict) and "agent" not in inner:
        # crash-watch's records before the typed events left the agent to the envelope
        raw["event"] = {**inner, "agent": ev.agent or ""}
    try:
        return msgspec.convert(raw, AnyEventData)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        log.warning("%s event %s does not match its type: %s", ev.kind, ev.id, exc)
        return None


def event_fields(data: EventData) -> dict[str, Any]:
    """``data`` as the plain object a record's ``data`` holds (no tag, no
    empty ``by``)."""
    out: dict[str, Any] = msgspec.to_builtins(data)
    out.pop(EVENT_TAG, None)
    if not out.get("by"):
        out.pop("by", None)
    return out


__all__ = [
    "EVENT_DATA_TYPES",
    "EVENT_TAG",
    "SYSTEM_EVENT_TYPES",
    "AgentCreated",
    "AgentDestroyed",
    "AgentDrafted",
    "AgentPurged",
    "AgentStateChanged",
    "AgentStuck",
    "AnyEventData",
    "ApprovalApproved",
    "ApprovalEventData",
    "ApprovalQueuedEvent",
    "ApprovalResolved",
    "ApprovalResolvedEvent",
    "ContainerCrash",
    "CrashDetected",
    "EventData",
    "HiveEvent",
    "MessageAcked",
    "MessageDelivered",
    "MessageEventData",
    "MessageRedelivered",
    "MessageSent",
    "MessagesPruned",
    "OperatorAnswered",
    "QuestionAnswered",
    "QuestionAsked",
    "SpawnResolved",
    "StuckDetected",
    "SystemEvent",
    "TurnStatsRecorded",
    "decode_event",
    "encode_event",
    "event_data",
    "event_fields",
    "event_kind",
]
