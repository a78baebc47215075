"""System events delivered into agents' inboxes, and HIVE_EVENTS records."""

from __future__ import annotations

from typing import Any

import msgspec

# --- system events: sender ``system``, put into an inbox by the broker -------


class ContainerCrash(msgspec.Struct, kw_only=True, tag=True):
    """An agent's container stopped without anyone asking it to."""

    agent: str
    detail: str = ""
    exit_code: int | None = None


class AgentStuck(msgspec.Struct, kw_only=True, tag=True):
    """An agent's heartbeat stopped, or its turn ran past the limit."""

    agent: str
    reason: str  # "heartbeat" | "turn_too_long" | "login_needed"
    since: float = 0.0
    detail: str = ""


class ApprovalResolved(msgspec.Struct, kw_only=True, tag=True):
    """An ApplyCommit approval reached an end state."""

    approval_id: int
    agent: str
    state: str  # deployed | failed | denied
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
    state: str  # deployed | failed | denied
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
    """A state change on ``hive.events.<kind>``.

    ``kind`` repeats the subject suffix (``message.sent``, ``agent.state``,
    ``approval.resolved``, ...) so a record is self-describing when stored;
    ``data`` holds the kind's fields, ``agent`` the agent it concerns (if any).
    """

    kind: str
    ts: float
    agent: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str = ""  # unique per event; used as Nats-Msg-Id for dedupe
