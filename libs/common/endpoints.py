"""Every request endpoint of hyperhive, declared once.

An :class:`Endpoint` names its subject, its request and reply types, who may
call it and what it does in one line. Everything else is derived from it:
services serve it (:meth:`hyperhive.common.rpc.Responder.serve`, which
checks the handler's types against it), the CLI, the dashboard and the
services call through it (:func:`hyperhive.common.rpc.call`), the harness
offers the manager's tools from it (name, description and input schema) and
``docs/subjects.md`` lists it (:mod:`hyperhive.common.catalog`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

import msgspec

from hyperhive.common import subjects as s
from hyperhive.common import wire as w

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)

# who may call an endpoint: any agent (as itself), the manager only, the
# operator's tools (CLI, dashboard), another service, or a joining node
Caller = Literal["agent", "manager", "operator", "service", "node"]
# ``node``: served by each node agent on its own subject (hive.node.<node>.<verb>)
Family = Literal["agent", "admin", "system", "node"]


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[Req, Rep]):
    """One request subject: served by ``service``, called by ``caller``.

    ``reply`` is ``None`` for a subject that is published to (no reply
    expected; the handler's answer, if any, is dropped).
    """

    service: str  # the part that serves it (as in ``hive serve <part>``)
    family: Family
    verb: str
    request: type[Req]
    reply: type[Rep] | None
    caller: Caller
    doc: str
    part: str = ""  # the subject's part, when not the service's (hive.admin.nodes.*)

    @property
    def served_on(self) -> str:
        """The pattern the service subscribes to.

        Agent endpoints are served for every agent (``hive.agent.*.<verb>``):
        the caller's name is in the subject; a manager tool called by another
        agent is answered with ``forbidden`` rather than "no responders". A
        node endpoint is served by each node agent on its own subject only
        (:meth:`subject`); this pattern covers them all.
        """
        match self.family:
            case "agent":
                return s.agent_wildcard(self.verb)
            case "node":
                return f"{s.ROOT}.node.*.{self.verb}"
            case "admin":
                return s.admin(self.part or self.service, self.verb)
            case "system":
                return s.system(self.part or self.service, self.verb)

    @property
    def pattern(self) -> str:
        """The subject as the docs write it (``<n>``: the calling agent)."""
        if self.family == "node":
            return f"{s.ROOT}.node.<node>.{self.verb}"
        if self.family != "agent":
            return self.served_on
        if self.caller == "manager":
            return s.manager_tool(self.verb)
        return f"{s.ROOT}.agent.<n>.{self.verb}"

    def subject(self, agent: str = "", *, node: str = "") -> str:
        """The subject to call: for an agent endpoint, ``agent``'s own; for a
        node endpoint, node agent ``node``'s."""
        if self.family == "agent":
            return s.agent(agent, self.verb)
        if self.family == "node":
            return s.node(node, self.verb)
        return self.served_on


ENDPOINTS: list[Endpoint[msgspec.Struct, msgspec.Struct]] = []


def _ep(
    service: str,
    family: Family,
    verb: str,
    request: type[Req],
    reply: type[Rep] | None,
    caller: Caller,
    doc: str,
    *,
    part: str = "",
) -> Endpoint[Req, Rep]:
    ep = Endpoint(service, family, verb, request, reply, caller, doc, part)
    assert not any(e.served_on == ep.served_on for e in ENDPOINTS), ep.served_on
    ENDPOINTS.append(ep)  # type: ignore[arg-type]
    return ep


# --- an agent, as itself (hive.agent.<n>.<verb>) -------------------------------------
BROKER = "broker"
SEND: Final = _ep(
    BROKER,
    "agent",
    s.AGENT_SEND,
    w.SendRequest,
    w.SendReply,
    "agent",
    "send a message to an agent or the operator; replies once committed",
)
RECV: Final = _ep(
    BROKER,
    "agent",
    s.AGENT_RECV,
    w.RecvRequest,
    w.RecvReply,
    "agent",
    "long-poll the oldest unacknowledged message (acking `ack` first, if given)",
)
ACK: Final = _ep(
    BROKER, "agent", s.AGENT_ACK, w.AckRequest, w.Ok, "agent", "mark a handed-out message consumed"
)
STATUS: Final = _ep(
    BROKER,
    "agent",
    s.AGENT_STATUS,
    w.StatusRequest,
    w.MessageStatus,
    "agent",
    "delivery receipt of a message the caller sent or received",
)
TURNS: Final = _ep(
    BROKER,
    "agent",
    s.AGENT_TURNS,
    w.TurnsRequest,
    w.TurnsReply,
    "agent",
    "backfill of the caller's own turn events",
)
STATS: Final = _ep(
    BROKER, "agent", s.AGENT_STATS, w.TurnStats, None, "agent", "turn statistics at turn end"
)

# --- the manager's tools (hive.agent.hm1nd.<tool>); the MCP tools of the same name ---
# ``doc`` is the tool's description claude reads.
LIFECYCLE = "lifecycle"
APPROVALS = "approvals"
KILL: Final = _ep(
    LIFECYCLE,
    "agent",
    "kill",
    w.AgentRequest,
    w.AgentInfo,
    "manager",
    "Stop an agent's container now.",
)
START: Final = _ep(
    LIFECYCLE,
    "agent",
    "start",
    w.AgentRequest,
    w.AgentInfo,
    "manager",
    "Start a stopped agent's container.",
)
RESTART: Final = _ep(
    LIFECYCLE,
    "agent",
    "restart",
    w.AgentRequest,
    w.AgentInfo,
    "manager",
    "Restart an agent's container.",
)
UPDATE: Final = _ep(
    LIFECYCLE,
    "agent",
    "update",
    w.AgentRequest,
    w.AgentInfo,
    "manager",
    "Rebuild an agent's container from its deployed config.",
)
REQUEST_SPAWN: Final = _ep(
    APPROVALS,
    "agent",
    "request_spawn",
    w.SpawnToolRequest,
    w.ApprovalQueued,
    "manager",
    "Ask the operator for a new agent with the default config (answer: SpawnResolved); "
    "host: the node to run it on (empty: the hive picks the least busy one).",
)
REQUEST_SPAWN_DRAFT: Final = _ep(
    APPROVALS,
    "agent",
    "request_spawn_draft",
    w.SpawnToolRequest,
    w.DraftInfo,
    "manager",
    "Two-step spawn, step one: create the agent's config repo and state dir, no container "
    "(no host yet: give it to request_spawn_commit).",
)
REQUEST_SPAWN_COMMIT: Final = _ep(
    APPROVALS,
    "agent",
    "request_spawn_commit",
    w.SpawnCommitRequest,
    w.ApprovalQueued,
    "manager",
    "Two-step spawn, step two: submit the draft's commit for the operator's approval "
    "(host: the node to run it on; empty: the hive picks).",
)
REQUEST_APPLY_COMMIT: Final = _ep(
    APPROVALS,
    "agent",
    "request_apply_commit",
    w.ApplyCommitRequest,
    w.ApprovalQueued,
    "manager",
    "Submit a commit of an agent's config for approval (answer: ApprovalResolved).",
)
ASK_OPERATOR: Final = _ep(
    APPROVALS,
    "agent",
    "ask_operator",
    w.AskRequest,
    w.ApprovalQueued,
    "manager",
    "Ask the operator a question: free text, or a choice among options (several with "
    "multi). The answer arrives later as OperatorAnswered with the returned id.",
)

# --- liveness of every service (hive.admin.<part>.ping) ---------------------------
PING: Final = {
    part: _ep(
        part,
        "admin",
        "ping",
        w.Ping,
        w.Pong,
        "operator",
        "liveness, version, database reachability, requests in flight",
    )
    for part in s.SERVICES
}

# --- the operator's verbs (hive.admin.<part>.<verb>) ----------------------------------
WATCH_STATUS: Final = _ep(
    "crash-watch",
    "admin",
    "status",
    w.Empty,
    w.WatchStatus,
    "operator",
    "what crash-watch sees: seeded, agent states, stuck agents, events reported, polls",
)
ADMIN_SEND: Final = _ep(
    BROKER, "admin", "send", w.AdminSendRequest, w.SendReply, "operator", "operator → agent message"
)
MESSAGES: Final = _ep(
    BROKER,
    "admin",
    "messages",
    w.MessagesRequest,
    w.HistoryReply,
    "operator",
    "message history (filters: agent, since, limit)",
)
INBOX: Final = _ep(
    BROKER,
    "admin",
    "inbox",
    w.InboxRequest,
    w.HistoryReply,
    "operator",
    "pending messages of one agent",
)
PRUNE: Final = _ep(
    BROKER,
    "admin",
    "prune",
    w.PruneRequest,
    w.PruneReply,
    "operator",
    "delete the acked messages created before a time (pending ones stay)",
)
ADMIN_STATUS: Final = _ep(
    BROKER,
    "admin",
    "status",
    w.StatusRequest,
    w.MessageStatus,
    "operator",
    "delivery receipt of any message",
)
TURN_STATS: Final = _ep(
    BROKER, "admin", "stats", w.StatsRequest, w.StatsReply, "operator", "turn statistics series"
)
USAGE: Final = _ep(
    BROKER,
    "admin",
    "usage",
    w.UsageRequest,
    w.UsageReply,
    "operator",
    "turns, model calls, tokens and cost per agent and UTC day",
)
AGENTS: Final = _ep(
    LIFECYCLE,
    "admin",
    "list",
    w.AgentsRequest,
    w.AgentsReply,
    "operator",
    "agents and their container state",
)
SPAWN: Final = _ep(
    LIFECYCLE,
    "admin",
    "spawn",
    w.SpawnRequest,
    w.AgentInfo,
    "operator",
    "operator spawn (no approval needed)",
)
ADMIN_CONTAINER: Final = {
    verb: _ep(
        LIFECYCLE,
        "admin",
        verb,
        w.AgentRequest,
        w.AgentInfo,
        "operator",
        f"{verb} an agent's container",
    )
    for verb in ("start", "stop", "restart", "kill", "update")
}
DESTROY: Final = _ep(
    LIFECYCLE,
    "admin",
    "destroy",
    w.DestroyRequest,
    w.Ok,
    "operator",
    "destroy an agent (state kept unless purge)",
)
KEPT: Final = _ep(
    LIFECYCLE,
    "admin",
    "kept",
    w.Empty,
    w.KeptStatesReply,
    "operator",
    "destroyed agents whose state was kept",
)
PURGE: Final = _ep(
    LIFECYCLE, "admin", "purge", w.AgentRequest, w.Ok, "operator", "delete a kept state"
)
LOGS: Final = _ep(
    LIFECYCLE,
    "admin",
    "logs",
    w.LogsRequest,
    w.LogsReply,
    "operator",
    "an agent's container logs",
)
CONFIG: Final = _ep(
    LIFECYCLE,
    "admin",
    "config",
    w.AgentRequest,
    w.ConfigReply,
    "operator",
    "an agent's deployed agent.nix and agent.toml",
)
NOTES: Final = _ep(
    LIFECYCLE,
    "admin",
    "notes",
    w.NotesRequest,
    w.NotesReply,
    "operator",
    "an agent's notes, one kept version of them, or the list of versions",
)
DRAFTS: Final = _ep(
    LIFECYCLE, "admin", "drafts", w.Empty, w.DraftsReply, "operator", "two-step spawn drafts"
)
NODES: Final = _ep(
    LIFECYCLE,
    "admin",
    "nodes",
    w.Empty,
    w.NodesReply,
    "operator",
    "the nodes (hosts that run agents): state (up/lost), agents, load, revision",
)
APPROVALS_LIST: Final = _ep(
    APPROVALS,
    "admin",
    "list",
    w.ApprovalsRequest,
    w.ApprovalsReply,
    "operator",
    "the approval queue and resolved approvals",
)
DIFF: Final = _ep(
    APPROVALS,
    "admin",
    "diff",
    w.ApprovalIdRequest,
    w.DiffReply,
    "operator",
    "git diff main..proposal/<id> of the applied repo",
)
APPROVE: Final = _ep(
    APPROVALS,
    "admin",
    "approve",
    w.ApproveRequest,
    w.ApprovalInfo,
    "operator",
    "approve and deploy",
)
DENY: Final = _ep(
    APPROVALS, "admin", "deny", w.DenyRequest, w.ApprovalInfo, "operator", "deny with a note"
)
QUESTIONS: Final = _ep(
    APPROVALS,
    "admin",
    "questions",
    w.QuestionsRequest,
    w.QuestionsReply,
    "operator",
    "questions from ask_operator",
)
ANSWER: Final = _ep(
    APPROVALS,
    "admin",
    "answer",
    w.AnswerRequest,
    w.QuestionInfo,
    "operator",
    "answer a question",
)

# --- between services (hive.system.<part>.<verb>) -------------------------------------
DELIVER: Final = _ep(
    BROKER,
    "system",
    "deliver",
    w.DeliverRequest,
    w.SendReply,
    "service",
    f"a system event into an agent's inbox, now (the services use `{s.DELIVERIES}` instead)",
)
SYS_AGENTS: Final = _ep(
    LIFECYCLE,
    "system",
    "list",
    w.AgentsRequest,
    w.AgentsReply,
    "service",
    "agents (for the broker and crash-watch)",
)
SYS_AGENT: Final = _ep(
    LIFECYCLE, "system", "get", w.AgentRequest, w.AgentInfo, "service", "one agent"
)
CREATE: Final = _ep(
    LIFECYCLE,
    "system",
    "create",
    w.CreateRequest,
    w.AgentInfo,
    "service",
    "create an agent's container (approved spawn)",
)
APPLY: Final = _ep(
    LIFECYCLE,
    "system",
    "apply",
    w.ApplyRequest,
    w.ApplyReply,
    "service",
    "rebuild from the applied tree (approved config change)",
)
DRAFT: Final = _ep(
    LIFECYCLE,
    "system",
    "draft",
    w.DraftRequest,
    w.DraftInfo,
    "service",
    "create a draft agent",
)
SYS_DRAFTS: Final = _ep(
    LIFECYCLE, "system", "drafts", w.Empty, w.DraftsReply, "service", "list drafts"
)

# --- lifecycle's control half → a node agent (hive.node.<node>.<verb>) ------------
# ``hive serve node`` serves them as its node; ``hive serve lifecycle`` as the hub's
# in-process node agent (which the control half calls directly, not over NATS)
NODE_AGENT = s.NODE_SERVICE
NODE: Final = {
    verb: _ep(NODE_AGENT, "node", verb, request, reply, "service", doc)
    for verb, request, reply, doc in (
        (
            "create",
            w.NodeDeployRequest,
            w.NodeStateReply,
            "build an agent's container from the deployed tree (and its NATS seed) "
            "carried in the request",
        ),
        (
            "start",
            w.NodeAgentRequest,
            w.NodeStateReply,
            "start a container (a running one is only watched from then on: adoption)",
        ),
        ("stop", w.NodeStopRequest, w.NodeStateReply, "stop a container (kill: at once)"),
        ("restart", w.NodeAgentRequest, w.NodeStateReply, "restart a container"),
        (
            "destroy",
            w.NodeDestroyRequest,
            w.NodeDestroyReply,
            "remove a container and the agent's files on the node (its state dir is kept "
            "unless purged)",
        ),
        ("update", w.NodeDeployRequest, w.NodeStateReply, "rebuild from a new deployed tree"),
        ("state", w.NodeAgentRequest, w.NodeStateReply, "running, stopped or missing"),
        ("logs", w.NodeLogsRequest, w.LogsReply, "a container's harness log"),
        ("expose", w.NodeExposeRequest, w.Ok, "show an agent to the manager on this node"),
        ("list", w.Empty, w.NodeListReply, "the containers the node holds (adoption)"),
        (
            "notes",
            w.NodeNotesRequest,
            w.NotesReply,
            "an agent's notes from its state dir on the node (also a kept state's)",
        ),
        (
            "kept",
            w.NodeKeptRequest,
            w.NodeKeptReply,
            "the sizes of destroyed agents' state dirs kept on the node",
        ),
    )
}


# --- joining nodes (docs/multihost.md), served by lifecycle ------------------------
JOIN_TOKEN: Final = _ep(
    LIFECYCLE,
    "admin",
    "join_token",
    w.JoinTokenRequest,
    w.JoinToken,
    "operator",
    "a one-time token for a new machine to join as a node (docs/multihost.md)",
    part=s.NODES_PART,
)
JOIN: Final = _ep(
    LIFECYCLE,
    "system",
    "join",
    w.JoinRequest,
    w.JoinReply,
    "node",
    "spend a join token: the node's NATS user is made for the key it sent "
    "(only a join token's user may call it)",
    part=s.NODES_PART,
)
assert (JOIN_TOKEN.served_on, JOIN.served_on) == (s.NODES_JOIN_TOKEN, s.NODES_JOIN)


def served_by(service: str) -> list[Endpoint[msgspec.Struct, msgspec.Struct]]:
    """The endpoints ``service`` must serve, in declaration order."""
    return [e for e in ENDPOINTS if e.service == service]


MANAGER_ENDPOINTS: Final = tuple(e for e in ENDPOINTS if e.caller == "manager")
# the manager's tools (MCP tool names = verbs), in the order claude is offered them
MANAGER_TOOLS: Final = tuple(e.verb for e in MANAGER_ENDPOINTS)
