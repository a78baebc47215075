"""Every NATS subject hyperhive uses: built here and nowhere else.

Identity lives in the subject: an agent may publish only under
``hive.agent.<self>.>`` and receive replies only on ``_INBOX.<self>.>``, so a
handler learns who is calling from the subject it was called on.
"""

from __future__ import annotations

from typing import Final

ROOT: Final = "hive"
MANAGER: Final = "hm1nd"
OPERATOR: Final = "operator"
SYSTEM: Final = "system"

# Service names, in start order. The NixOS module defines one unit per entry.
SERVICES: Final = ("broker", "lifecycle", "approvals", "crash-watch", "dashboard")

# ``hive serve node``: a node agent only (no database), not one of SERVICES
NODE_SERVICE: Final = "node"
# the node agent that ``hive serve lifecycle`` runs in-process (node name)
HUB_NODE: Final = "hub"

# JetStream
EVENTS_STREAM: Final = "HIVE_EVENTS"
TURNS_STREAM: Final = "HIVE_TURNS"
# system events on their way into an inbox: every service publishes, the broker
# consumes durably (hyperhive.common.delivery)
DELIVERIES_STREAM: Final = "HIVE_DELIVERIES"
DELIVERIES_CONSUMER: Final = "broker-deliveries"
STATE_BUCKET: Final = "hive_state"

# Agent-side verbs (hive.agent.<n>.<verb>)
AGENT_SEND: Final = "send"
AGENT_RECV: Final = "recv"
AGENT_ACK: Final = "ack"
AGENT_STATUS: Final = "status"
AGENT_EVENTS: Final = "events"
AGENT_STATS: Final = "stats"
AGENT_TURNS: Final = "turns"

# The manager's tools (hive.agent.hm1nd.<tool>) are endpoints: hyperhive.common.endpoints.


def _token(value: str) -> str:
    """Refuses a value that would change a subject's shape."""
    if not value or any(c in value for c in ". *>\t\r\n"):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def agent(name: str, verb: str) -> str:
    """``hive.agent.<name>.<verb>``: a subject an agent publishes on."""
    return f"{ROOT}.agent.{_token(name)}.{_token(verb)}"


def agent_wildcard(verb: str) -> str:
    """``hive.agent.*.<verb>``: what a service subscribes to for every agent."""
    return f"{ROOT}.agent.*.{_token(verb)}"


def agent_all(name: str) -> str:
    """``hive.agent.<name>.>``: everything an agent may publish on."""
    return f"{ROOT}.agent.{_token(name)}.>"


def manager_tool(tool: str) -> str:
    """``hive.agent.hm1nd.<tool>``."""
    return agent(MANAGER, tool)


def admin(part: str, verb: str) -> str:
    """``hive.admin.<part>.<verb>``: the operator surface of a service."""
    return f"{ROOT}.admin.{_token(part)}.{_token(verb)}"


def system(part: str, verb: str) -> str:
    """``hive.system.<part>.<verb>``: service-to-service calls."""
    return f"{ROOT}.system.{_token(part)}.{_token(verb)}"


def event(kind: str) -> str:
    """``hive.events.<kind>``: a state change, kept in ``HIVE_EVENTS``.

    ``kind`` may contain dots (``message.sent``) so that consumers can filter
    on a family (``hive.events.message.>``).
    """
    for part in kind.split("."):
        _token(part)
    return f"{ROOT}.events.{kind}"


def event_family(family: str) -> str:
    """``hive.events.<family>.>``: every event kind of a family (``message``)."""
    return f"{ROOT}.events.{_token(family)}.>"


# Joining a node (docs/multihost.md): the operator asks the control half for
# a one-time token; a new machine sends it back, signed, to become a node
NODES_PART: Final = "nodes"
NODES_JOIN: Final = f"{ROOT}.system.{NODES_PART}.join"
NODES_JOIN_TOKEN: Final = f"{ROOT}.admin.{NODES_PART}.join_token"

EVENTS_ALL: Final = f"{ROOT}.events.>"
AGENT_EVENTS_ALL: Final = f"{ROOT}.agent.*.{AGENT_EVENTS}"
ADMIN_ALL: Final = f"{ROOT}.admin.>"  # the operator surface of every service
# broker instances tell each other which inboxes got messages (wire.BrokerWake)
BROKER_WAKE: Final = f"{ROOT}.system.broker.wake"
# a system event for an inbox (wire.DeliverRequest), kept in DELIVERIES_STREAM
DELIVERIES: Final = f"{ROOT}.system.broker.inbox"

# JetStream's own API: what a client needs to read streams and consumers
JS_API_ALL: Final = "$JS.API.>"
JS_ACK_ALL: Final = "$JS.ACK.>"
JS_FLOW_CONTROL_ALL: Final = "$JS.FC.>"
# NATS micro discovery (``nats micro ls|info|stats``), answered by every service
MICRO_ALL: Final = "$SRV.>"


# The agent page relay (hive.node.<node>.page.<agent>.<op>): the dashboard
# reaches the page API of an agent on another node through that node's agent.
# One-shot JSON calls, each the harness route of the same name:
PAGE_STATUS: Final = "status"
PAGE_PROMPT: Final = "prompt"
PAGE_CANCEL: Final = "cancel"
PAGE_CREDENTIALS: Final = "credentials"
PAGE_CALLS: Final = (PAGE_STATUS, PAGE_PROMPT, PAGE_CANCEL, PAGE_CREDENTIALS)
# sessions: the live tail and the terminal are opened, then pulled from
# (long-poll), pushed to (terminal input) and closed
PAGE_EVENTS: Final = "events"
PAGE_TERMINAL: Final = "terminal"
PAGE_PULL: Final = "pull"
PAGE_PUSH: Final = "push"
PAGE_CLOSE: Final = "close"
PAGE_OPS: Final = (*PAGE_CALLS, PAGE_EVENTS, PAGE_TERMINAL, PAGE_PULL, PAGE_PUSH, PAGE_CLOSE)


def node_page(node: str, agent: str, op: str) -> str:
    """``hive.node.<node>.page.<agent>.<op>``: one call of an agent page's
    relay on the node the agent runs on."""
    return f"{ROOT}.node.{_token(node)}.page.{_token(agent)}.{_token(op)}"


def node_page_op(node: str, op: str) -> str:
    """``hive.node.<node>.page.*.<op>``: what a node's relay serves for every agent."""
    return f"{ROOT}.node.{_token(node)}.page.*.{_token(op)}"


# who may call any node's page relay: the operator (the dashboard), never an agent
NODE_PAGE_ALL: Final = f"{ROOT}.node.*.page.>"


def parse_node_page(subject: str) -> tuple[str, str, str]:
    """Splits ``hive.node.<node>.page.<agent>.<op>`` into ``(node, agent, op)``.

    Raises:
        ValueError: not a page relay subject.
    """
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != ROOT or parts[1] != "node" or parts[3] != "page":
        raise ValueError(f"not a page relay subject: {subject!r}")
    return parts[2], parts[4], parts[5]


INBOX_ROOT: Final = "_INBOX"


def inbox_prefix(name: str) -> str:
    """The reply-inbox prefix of a NATS user (``_INBOX.<name>``)."""
    return f"{INBOX_ROOT}.{_token(name)}"


def inbox_all(name: str) -> str:
    """``_INBOX.<name>.>``: every reply subject under a user's inbox prefix."""
    return f"{inbox_prefix(name)}.>"


def operator_inbox_prefix() -> str:
    """``_INBOX.operator``: where the operator (CLI, dashboard) gets replies."""
    return inbox_prefix(OPERATOR)


# Node verbs (hive.node.<node>.<verb>, control half -> node agent): endpoints.NODE
def node(name: str, verb: str) -> str:
    """``hive.node.<node>.<verb>``: a request to node agent ``name``."""
    return f"{ROOT}.node.{_token(name)}.{_token(verb)}"


def node_all(name: str) -> str:
    """``hive.node.<node>.>``: every subject a node agent serves."""
    return f"{ROOT}.node.{_token(name)}.>"


def node_key(name: str) -> str:
    """Key of a node agent's heartbeat (``NodeHeartbeat``) in the state bucket."""
    return f"node.{_token(name)}"


NODE_KEYS: Final = "node.*"  # every node's heartbeat key (a KV watch filter)


def heartbeat_key(name: str) -> str:
    """Key of an agent's harness heartbeat in the state bucket."""
    return f"heartbeat.{_token(name)}"


def flag_key(name: str) -> str:
    """Key of an agent's transient container flag in the state bucket."""
    return f"flag.{_token(name)}"


def kv_subject(key: str) -> str:
    """The subject a KV put on ``key`` in the state bucket publishes to."""
    return f"$KV.{STATE_BUCKET}.{key}"


def parse_agent(subject: str) -> tuple[str, str]:
    """Splits ``hive.agent.<n>.<verb>`` into ``(n, verb)``.

    Raises:
        ValueError: the subject is not an agent subject.
    """
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != ROOT or parts[1] != "agent":
        raise ValueError(f"not an agent subject: {subject!r}")
    return parts[2], parts[3]


# --- HIVE_EVENTS kinds (hive.events.<kind>) ----------------------------------
EV_MESSAGE_SENT: Final = "message.sent"
EV_MESSAGE_DELIVERED: Final = "message.delivered"  # handed out by recv
EV_MESSAGE_REDELIVERED: Final = "message.redelivered"
EV_MESSAGE_ACKED: Final = "message.acked"
EV_AGENT_CREATED: Final = "agent.created"
EV_AGENT_STATE: Final = "agent.state"  # data: state, previous, flag
EV_AGENT_DESTROYED: Final = "agent.destroyed"
EV_AGENT_PURGED: Final = "agent.purged"
EV_AGENT_DRAFT: Final = "agent.draft"
EV_APPROVAL_QUEUED: Final = "approval.queued"
EV_APPROVAL_APPROVED: Final = "approval.approved"  # pending → approved: the build starts
EV_APPROVAL_RESOLVED: Final = "approval.resolved"  # data: id, kind, state, tag, note
EV_QUESTION_ASKED: Final = "question.asked"
EV_QUESTION_ANSWERED: Final = "question.answered"
EV_CRASH: Final = "crash.detected"
EV_STUCK: Final = "stuck.detected"
EV_STATS: Final = "stats.turn"
EV_NODE_JOINED: Final = "node.joined"  # data: node, revision
EV_NODE_LOST: Final = "node.lost"  # data: node, agents, silent_s
EV_NODE_BACK: Final = "node.back"  # data: node, agents, adopted, restarted
EV_MESSAGES_PRUNED: Final = "messages.pruned"  # data: before, deleted, by
