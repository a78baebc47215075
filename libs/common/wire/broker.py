"""Wire types of the broker: messages, inboxes, receipts, turn statistics."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from hyperhive.common.wire.events import SystemEvent
from hyperhive.common.wire.states import MessageState

# Bounds checked when a request is decoded, so that a value Postgres or
# JetStream cannot take is a ``bad_request`` and never reaches them.
INT64_MAX = 2**63 - 1
# a message id (``bigserial``)
MessageId = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
# a unix time in seconds, within what ``timestamptz`` holds (up to year 5138)
UnixTime = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
# a JetStream stream sequence
StreamSeq = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]


class SendRequest(msgspec.Struct, kw_only=True):
    to: str
    body: str
    idempotency_key: str | None = None


class SendReply(msgspec.Struct, kw_only=True):
    id: int
    ts: float


class BrokerWake(msgspec.Struct, kw_only=True):
    """``hive.system.broker.wake``, between broker instances: ``recipients`` got
    messages committed by instance ``origin``; ``everyone``: ``origin`` just
    started, so every waiting ``recv`` looks again."""

    origin: str
    recipients: list[str] = msgspec.field(default_factory=list)
    everyone: bool = False


class RecvRequest(msgspec.Struct, kw_only=True):
    wait_ms: int = 0
    # the message the caller has just consumed: acked first, as ``ack`` would
    # (one request instead of two per message, for a loop of recv and ack)
    ack: MessageId | None = None


class Message(msgspec.Struct, kw_only=True):
    id: int
    sender: str
    recipient: str
    body: str
    ts: float
    redelivered: bool = False
    deliveries: int = 0
    event: SystemEvent | None = None  # set when sender is ``system``
    # W3C trace context of the send: the recipient's turn continues that trace
    traceparent: str | None = None


class RecvReply(msgspec.Struct, kw_only=True):
    message: Message | None = None
    empty: bool = False


class AckRequest(msgspec.Struct, kw_only=True):
    id: MessageId


class StatusRequest(msgspec.Struct, kw_only=True):
    id: MessageId


class MessageStatus(msgspec.Struct, kw_only=True):
    """A delivery receipt: where one message is in its life."""

    id: int
    sender: str
    recipient: str
    state: MessageState
    deliveries: int = 0
    redeliveries: int = 0
    created_at: float = 0.0
    delivered_at: float | None = None
    acked_at: float | None = None


class DeliverRequest(msgspec.Struct, kw_only=True):
    """``hive.system.broker.deliver``: a system event into an agent's inbox."""

    to: str
    event: SystemEvent
    idempotency_key: str | None = None


class AdminSendRequest(msgspec.Struct, kw_only=True):
    to: str
    body: str
    idempotency_key: str | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    agent: str | None = None
    since: UnixTime | None = None
    limit: int = 100


class HistoryItem(msgspec.Struct, kw_only=True):
    """One message with its delivery state, for history and inbox views."""

    id: int
    sender: str
    recipient: str
    body: str
    ts: float
    state: MessageState
    deliveries: int = 0
    delivered_at: float | None = None
    acked_at: float | None = None
    # the typed system event beside ``body`` when ``sender`` is ``system``
    # (the same as ``Message.event``), so that a reader need not parse the text
    event: SystemEvent | None = None


class HistoryReply(msgspec.Struct, kw_only=True):
    messages: list[HistoryItem] = msgspec.field(default_factory=list)


class InboxRequest(msgspec.Struct, kw_only=True):
    agent: str


class PruneRequest(msgspec.Struct, kw_only=True):
    """``hive.admin.broker.prune``: delete the acked messages created before ``before``."""

    before: UnixTime


class PruneReply(msgspec.Struct, kw_only=True):
    deleted: int  # messages deleted
    before: float


# how turn statistics split sends: to another agent, the operator, the manager
RECIPIENT_KINDS = frozenset({"peer", "operator", "manager"})


class TurnStats(msgspec.Struct, kw_only=True):
    """Published by the harness on ``hive.agent.<n>.stats`` at turn end."""

    ts: float
    duration_ms: float
    exit_code: int
    tool_calls: dict[str, int] = msgspec.field(default_factory=dict)
    messages_sent: int = 0
    # the same sends by recipient kind: ``peer``, ``operator``, ``manager``
    messages_sent_to: dict[str, int] = msgspec.field(default_factory=dict)
    messages_received: int = 1
    compact_retry: bool = False
    # from claude's ``result`` events of the turn (summed over its runs):
    # input_tokens excludes the cache, as the API's ``usage.input_tokens`` does
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""
    inbox_depth: int | None = None
    notes_bytes: int | None = None
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    model_calls: int = 0  # claude's ``num_turns``: model responses of the agent loop
    # ``turn``, or ``compaction``: a notes compaction between turns, whose
    # usage counts but which is not a turn (only its usage keys are stored)
    kind: Literal["turn", "compaction"] = "turn"


# the stats key stored exactly once per turn (a compaction has none)
TURN_KEY = "duration_ms"
# the turn statistics that ``hive.admin.broker.usage`` adds up (stats keys)
USAGE_KEYS = (
    "model_calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cost_usd",
)


class UsageRequest(msgspec.Struct, kw_only=True):
    """``hive.admin.broker.usage``: totals per agent and UTC day."""

    agent: str | None = None
    since: UnixTime | None = None  # turns after this time (default: all)


class UsageDay(msgspec.Struct, kw_only=True):
    """One agent's turns of one UTC day, added up."""

    agent: str
    day: str  # YYYY-MM-DD, UTC
    turns: int = 0
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0


class UsageReply(msgspec.Struct, kw_only=True):
    days: list[UsageDay] = msgspec.field(default_factory=list)  # by day, then agent


class StatsRequest(msgspec.Struct, kw_only=True):
    agent: str | None = None
    since: UnixTime | None = None
    key: str | None = None
    limit: int = 5000


class StatPoint(msgspec.Struct, kw_only=True, array_like=True):
    agent: str
    ts: float
    key: str
    value: float


class StatsReply(msgspec.Struct, kw_only=True):
    points: list[StatPoint] = msgspec.field(default_factory=list)


class TurnsRequest(msgspec.Struct, kw_only=True):
    """``hive.agent.<n>.turns``: backfill of the agent's own turn events."""

    after_seq: StreamSeq = 0
    limit: int = 500


class TurnEvent(msgspec.Struct, kw_only=True):
    """One record on ``hive.agent.<n>.events``.

    ``type`` is ``claude`` for a stream-json event from the claude CLI (kept
    verbatim in ``event``), or a harness record: ``turn_start``, ``turn_end``,
    ``state``, ``operator``.
    """

    type: str
    ts: float
    turn: int = 0
    event: dict[str, object] = msgspec.field(default_factory=dict)
    seq: int = 0  # stream sequence, filled in on backfill


class TurnsReply(msgspec.Struct, kw_only=True):
    """The newest ``limit`` events after ``after_seq``, oldest first."""

    events: list[TurnEvent] = msgspec.field(default_factory=list)
    more: bool = False  # older events after ``after_seq`` were left out


__all__ = [
    "INT64_MAX",
    "RECIPIENT_KINDS",
    "TURN_KEY",
    "USAGE_KEYS",
    "AckRequest",
    "AdminSendRequest",
    "BrokerWake",
    "DeliverRequest",
    "HistoryItem",
    "HistoryReply",
    "InboxRequest",
    "Message",
    "MessageId",
    "MessageStatus",
    "MessagesRequest",
    "PruneReply",
    "PruneRequest",
    "RecvReply",
    "RecvRequest",
    "SendReply",
    "SendRequest",
    "StatPoint",
    "StatsReply",
    "StatsRequest",
    "StatusRequest",
    "StreamSeq",
    "TurnEvent",
    "TurnStats",
    "TurnsReply",
    "TurnsRequest",
    "UnixTime",
    "UsageDay",
    "UsageReply",
    "UsageRequest",
]
