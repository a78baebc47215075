"""Every state machine's states, once (docs/architecture.md, "State machines").

They are ``Literal`` types rather than enums: a wire field typed with one is
validated by msgspec on decode and encodes as the same plain string as before,
asyncpg's rows and SQL literals compare equal to them without conversion, and
``match``/``==`` on a plain string keep working. The frozensets beside them
are for membership tests at run time.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# --- agents (lifecycle's registry, ``lifecycle.agents.state``) ----------------

AgentState = Literal["draft", "creating", "running", "stopped", "failed", "destroyed"]
AGENT_STATES: Final = frozenset(get_args(AgentState))
DRAFT: Final = "draft"  # two-step spawn: a proposed repo, no container
CREATING: Final = "creating"
RUNNING: Final = "running"
STOPPED: Final = "stopped"
FAILED: Final = "failed"
DESTROYED: Final = "destroyed"
# states crash-watch calls down when they follow ``running`` unasked
DOWN_STATES: Final = frozenset({STOPPED, FAILED})

AgentKind = Literal["manager", "agent"]

# The transient flag (KV ``flag.<n>``) lifecycle sets while it stops, restarts,
# destroys or rebuilds an agent, so that crash-watch knows the stop was asked for.
AgentFlag = Literal["Stopping", "Restarting", "Destroying", "Rebuilding"]
AGENT_FLAGS: Final = frozenset(get_args(AgentFlag))
STOPPING: Final = "Stopping"
RESTARTING: Final = "Restarting"
DESTROYING: Final = "Destroying"
REBUILDING: Final = "Rebuilding"

# --- approvals (``approvals.approvals.state``) ----------------------------------

ApprovalState = Literal["pending", "approved", "deployed", "failed", "denied"]
APPROVAL_STATES: Final = frozenset(get_args(ApprovalState))
PENDING: Final = "pending"
APPROVED: Final = "approved"  # the build runs
DEPLOYED: Final = "deployed"
DENIED: Final = "denied"
# (``failed`` is FAILED above: the same word in both machines)
# the end states, each with its git tag ``<state>/<id>``
ApprovalEnd = Literal["deployed", "failed", "denied"]
APPROVAL_ENDS: Final = frozenset(get_args(ApprovalEnd))
# waiting for the operator, or approved and building now
APPROVAL_OPEN: Final = frozenset({PENDING, APPROVED})

ApprovalKind = Literal["ApplyCommit", "Spawn"]
APPLY_COMMIT: Final = "ApplyCommit"
SPAWN: Final = "Spawn"

# --- messages (derived by the broker from a row's columns) ----------------------

# ``committed``: stored, never handed out; ``handed_out``: ``recv`` gave it to
# the recipient at least once (and will again when its lease runs out before an
# ack); ``acked``: done. The broker derives it in one place
# (``hyperhive.broker.store.message_state``).
MessageState = Literal["committed", "handed_out", "acked"]
MESSAGE_STATES: Final = frozenset(get_args(MessageState))

# --- a harness's turn loop (its status, the agent page's badge) ---------------

# ``retrying``: the API failed transiently, the same message runs again after a
# back-off; ``login``: the API refused the credentials, no turns until they
# change; ``offline``: the harness cannot reach NATS (docs/turn-loop.md).
TurnState = Literal["idle", "thinking", "compacting", "retrying", "login", "offline"]
TURN_STATES: Final = frozenset(get_args(TurnState))
IDLE: Final = "idle"
THINKING: Final = "thinking"
COMPACTING: Final = "compacting"
RETRYING: Final = "retrying"
LOGIN: Final = "login"
OFFLINE: Final = "offline"

# --- why crash-watch calls an agent stuck -------------------------------------

StuckReason = Literal["heartbeat", "turn_too_long", "login_needed"]
# How each reason reads after "agent <n> looks stuck: " (the manager's inbox,
# the dashboard's activity timeline)
STUCK_WHY: dict[StuckReason, str] = {
    "heartbeat": "its heartbeat stopped",
    "turn_too_long": "its turn is running too long",
    "login_needed": "the API refused its credentials (login needed)",
}

__all__ = [
    "AGENT_FLAGS",
    "AGENT_STATES",
    "APPLY_COMMIT",
    "APPROVAL_ENDS",
    "APPROVAL_OPEN",
    "APPROVAL_STATES",
    "APPROVED",
    "COMPACTING",
    "CREATING",
    "DENIED",
    "DEPLOYED",
    "DESTROYED",
    "DESTROYING",
    "DOWN_STATES",
    "DRAFT",
    "FAILED",
    "IDLE",
    "LOGIN",
    "MESSAGE_STATES",
    "OFFLINE",
    "PENDING",
    "REBUILDING",
    "RESTARTING",
    "RETRYING",
    "RUNNING",
    "SPAWN",
    "STOPPED",
    "STOPPING",
    "STUCK_WHY",
    "THINKING",
    "TURN_STATES",
    "AgentFlag",
    "AgentKind",
    "AgentState",
    "ApprovalEnd",
    "ApprovalKind",
    "ApprovalState",
    "MessageState",
    "StuckReason",
    "TurnState",
]
