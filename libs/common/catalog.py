"""The catalog of every NATS subject: who serves it, what it carries.

``docs/subjects.md`` is generated from this table (``python -m
hyperhive.common.catalog > docs/subjects.md``) and a test checks that the file
is current and that every request subject listed here is really served.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import msgspec

from hyperhive.common import subjects as s
from hyperhive.common import wire as w
from hyperhive.common.wire import page as wp


@dataclass(frozen=True, slots=True)
class Entry:
    subject: str  # pattern; <n> = an agent name
    kind: str  # request | publish | consumer (a JetStream consumer reads it)
    handler: str  # the service that answers (or the stream that keeps it)
    request: type[msgspec.Struct] | None
    reply: type[msgspec.Struct] | None
    what: str


def _agent(verb: str) -> str:
    return s.agent("N", verb).replace(".N.", ".<n>.")


PAGE_RELAY = "node agent (page relay)"  # the handler of hive.node.<node>.page.<n>.<op>


def _page(op: str) -> str:
    return s.node_page("NODE", "N", op).replace(".NODE.", ".<node>.").replace(".N.", ".<n>.")


def _page_relay() -> list[Entry]:
    """The agent page relay of each node (hyperhive.lifecycle.pagerelay); only
    the operator's user (the dashboard) may call it."""
    calls = {
        s.PAGE_STATUS: "`GET /api/status`: the badge's data",
        s.PAGE_PROMPT: "`POST /api/prompt`: a prompt or a slash command",
        s.PAGE_CANCEL: "`POST /api/cancel`: end the running turn",
        s.PAGE_CREDENTIALS: "`POST /api/credentials`: store claude's credentials",
    }
    e = [
        Entry(
            _page(op),
            "request",
            PAGE_RELAY,
            w.PageCall,
            w.PageAnswer,
            f"agent page relay, {what} of agent <n> on node <node>; the harness's answer "
            "as it came (a body only if it is JSON)",
        )
        for op, what in calls.items()
    ]
    e += [
        Entry(
            _page(s.PAGE_EVENTS),
            "request",
            PAGE_RELAY,
            w.EventsOpen,
            w.SessionOpened,
            "agent page relay: open the live tail (`GET /api/events`, SSE) as a session "
            "to pull from",
        ),
        Entry(
            _page(s.PAGE_TERMINAL),
            "request",
            PAGE_RELAY,
            w.TerminalOpen,
            w.SessionOpened,
            "agent page relay: open a terminal (a new login shell) as a session",
        ),
        Entry(
            _page(s.PAGE_PULL),
            "request",
            PAGE_RELAY,
            w.PullRequest,
            w.PullReply,
            "agent page relay: the next frames of a session (long poll, empty after "
            f"{wp.PULL_WAIT_S:g} s; frames from `have` on, so a lost reply is sent again); "
            f"a session not pulled from for {wp.SESSION_IDLE_S:g} s is closed",
        ),
        Entry(
            _page(s.PAGE_PUSH),
            "request",
            PAGE_RELAY,
            w.PushRequest,
            w.Ok,
            "agent page relay: one text frame (input, resize) to a terminal session",
        ),
        Entry(
            _page(s.PAGE_CLOSE),
            "request",
            PAGE_RELAY,
            w.SessionRequest,
            w.Ok,
            "agent page relay: end a session (the tail's stream, the terminal's shell)",
        ),
    ]
    return e


def _entries() -> list[Entry]:
    e: list[Entry] = [
        Entry(
            _agent(s.AGENT_SEND),
            "request",
            "broker",
            w.SendRequest,
            w.SendReply,
            "send a message to an agent or the operator; replies once committed",
        ),
        Entry(
            _agent(s.AGENT_RECV),
            "request",
            "broker",
            w.RecvRequest,
            w.RecvReply,
            "long-poll the oldest unacknowledged message (acking `ack` first, if given)",
        ),
        Entry(
            _agent(s.AGENT_ACK),
            "request",
            "broker",
            w.AckRequest,
            w.Ok,
            "mark a handed-out message consumed",
        ),
        Entry(
            _agent(s.AGENT_STATUS),
            "request",
            "broker",
            w.StatusRequest,
            w.MessageStatus,
            "delivery receipt of a message the caller sent or received",
        ),
        Entry(
            _agent(s.AGENT_TURNS),
            "request",
            "broker",
            w.TurnsRequest,
            w.TurnsReply,
            "backfill of the caller's own turn events",
        ),
        Entry(
            _agent(s.AGENT_EVENTS),
            "publish",
            "stream HIVE_TURNS",
            w.TurnEvent,
            None,
            "claude stream-json events and harness records of the current turn",
        ),
        Entry(
            _agent(s.AGENT_STATS),
            "publish",
            "broker",
            w.TurnStats,
            None,
            "turn statistics at turn end",
        ),
        Entry(
            s.kv_subject(s.heartbeat_key("N")).replace(".N", ".<n>"),
            "publish",
            "KV hive_state",
            w.Heartbeat,
            None,
            "harness heartbeat (every interval; turn_started while a turn runs; "
            "login_needed while the API refuses its credentials)",
        ),
    ]
    lifecycle_tools = {
        "kill": "stop an agent's container at once",
        "start": "start an agent's container",
        "restart": "restart an agent's container",
        "update": "rebuild an agent's container from its deployed config",
    }
    for tool, what in lifecycle_tools.items():
        e.append(
            Entry(
                s.manager_tool(tool),
                "request",
                "lifecycle",
                w.AgentRequest,
                w.AgentInfo,
                f"manager tool: {what}",
            )
        )
    e += [
        Entry(
            s.manager_tool("request_spawn"),
            "request",
            "approvals",
            w.SpawnToolRequest,
            w.ApprovalQueued,
            "manager tool: queue a Spawn approval",
        ),
        Entry(
            s.manager_tool("request_spawn_draft"),
            "request",
            "approvals",
            w.SpawnToolRequest,
            w.DraftInfo,
            "manager tool: create a draft agent (repo + state, no container)",
        ),
        Entry(
            s.manager_tool("request_spawn_commit"),
            "request",
            "approvals",
            w.SpawnCommitRequest,
            w.ApprovalQueued,
            "manager tool: queue a Spawn approval from a draft's commit",
        ),
        Entry(
            s.manager_tool("request_apply_commit"),
            "request",
            "approvals",
            w.ApplyCommitRequest,
            w.ApprovalQueued,
            "manager tool: pin a config commit as proposal/<id> and queue it",
        ),
        Entry(
            s.manager_tool("ask_operator"),
            "request",
            "approvals",
            w.AskRequest,
            w.ApprovalQueued,
            "manager tool: queue a question for the operator",
        ),
    ]
    for part in s.SERVICES:
        e.append(
            Entry(
                s.admin(part, "ping"),
                "request",
                part,
                w.Ping,
                w.Pong,
                "liveness, version, database reachability, requests in flight",
            )
        )
    e += [
        Entry(
            s.admin("crash-watch", "status"),
            "request",
            "crash-watch",
            w.Empty,
            w.WatchStatus,
            "what crash-watch sees: seeded, agent states, stuck agents, events reported, polls",
        ),
        Entry(
            s.admin("broker", "send"),
            "request",
            "broker",
            w.AdminSendRequest,
            w.SendReply,
            "operator → agent message",
        ),
        Entry(
            s.admin("broker", "messages"),
            "request",
            "broker",
            w.MessagesRequest,
            w.HistoryReply,
            "message history (filters: agent, since, limit)",
        ),
        Entry(
            s.admin("broker", "inbox"),
            "request",
            "broker",
            w.InboxRequest,
            w.HistoryReply,
            "pending messages of one agent",
        ),
        Entry(
            s.admin("broker", "prune"),
            "request",
            "broker",
            w.PruneRequest,
            w.PruneReply,
            "delete the acked messages created before a time (pending ones stay)",
        ),
        Entry(
            s.admin("broker", "status"),
            "request",
            "broker",
            w.StatusRequest,
            w.MessageStatus,
            "delivery receipt of any message",
        ),
        Entry(
            s.admin("broker", "stats"),
            "request",
            "broker",
            w.StatsRequest,
            w.StatsReply,
            "turn statistics series",
        ),
        Entry(
            s.admin("broker", "usage"),
            "request",
            "broker",
            w.UsageRequest,
            w.UsageReply,
            "turns, model calls, tokens and cost per agent and UTC day",
        ),
        Entry(
            s.admin("lifecycle", "list"),
            "request",
            "lifecycle",
            w.AgentsRequest,
            w.AgentsReply,
            "agents and their container state",
        ),
        Entry(
            s.admin("lifecycle", "spawn"),
            "request",
            "lifecycle",
            w.SpawnRequest,
            w.AgentInfo,
            "operator spawn (no approval needed)",
        ),
    ]
    for verb in ("start", "stop", "restart", "kill", "update"):
        e.append(
            Entry(
                s.admin("lifecycle", verb),
                "request",
                "lifecycle",
                w.AgentRequest,
                w.AgentInfo,
                f"{verb} an agent's container",
            )
        )
    e += [
        Entry(
            s.admin("lifecycle", "destroy"),
            "request",
            "lifecycle",
            w.DestroyRequest,
            w.Ok,
            "destroy an agent (state kept unless purge)",
        ),
        Entry(
            s.admin("lifecycle", "kept"),
            "request",
            "lifecycle",
            w.Empty,
            w.KeptStatesReply,
            "destroyed agents whose state was kept",
        ),
        Entry(
            s.admin("lifecycle", "purge"),
            "request",
            "lifecycle",
            w.AgentRequest,
            w.Ok,
            "delete a kept state",
        ),
        Entry(
            s.admin("lifecycle", "logs"),
            "request",
            "lifecycle",
            w.LogsRequest,
            w.LogsReply,
            "an agent's container logs",
        ),
        Entry(
            s.admin("lifecycle", "config"),
            "request",
            "lifecycle",
            w.AgentRequest,
            w.ConfigReply,
            "an agent's deployed agent.nix and agent.toml",
        ),
        Entry(
            s.admin("lifecycle", "notes"),
            "request",
            "lifecycle",
            w.NotesRequest,
            w.NotesReply,
            "an agent's notes, one kept version of them, or the list of versions",
        ),
        Entry(
            s.admin("lifecycle", "drafts"),
            "request",
            "lifecycle",
            w.Empty,
            w.DraftsReply,
            "two-step spawn drafts",
        ),
        Entry(
            s.admin("lifecycle", "nodes"),
            "request",
            "lifecycle",
            w.Empty,
            w.NodesReply,
            "the nodes (hosts that run agents): state (up/lost), agents, load, revision",
        ),
        Entry(
            s.admin("approvals", "list"),
            "request",
            "approvals",
            w.ApprovalsRequest,
            w.ApprovalsReply,
            "the approval queue and resolved approvals",
        ),
        Entry(
            s.admin("approvals", "diff"),
            "request",
            "approvals",
            w.ApprovalIdRequest,
            w.DiffReply,
            "git diff main..proposal/<id> of the applied repo",
        ),
        Entry(
            s.admin("approvals", "approve"),
            "request",
            "approvals",
            w.ApproveRequest,
            w.ApprovalInfo,
            "approve and deploy",
        ),
        Entry(
            s.admin("approvals", "deny"),
            "request",
            "approvals",
            w.DenyRequest,
            w.ApprovalInfo,
            "deny with a note",
        ),
        Entry(
            s.admin("approvals", "questions"),
            "request",
            "approvals",
            w.QuestionsRequest,
            w.QuestionsReply,
            "questions from ask_operator",
        ),
        Entry(
            s.admin("approvals", "answer"),
            "request",
            "approvals",
            w.AnswerRequest,
            w.QuestionInfo,
            "answer a question",
        ),
        Entry(
            s.system("broker", "deliver"),
            "request",
            "broker",
            w.DeliverRequest,
            w.SendReply,
            "a system event into an agent's inbox, now (the services use "
            f"`{s.DELIVERIES}` instead)",
        ),
        Entry(
            s.DELIVERIES,
            "publish",
            f"stream {s.DELIVERIES_STREAM}",
            w.DeliverRequest,
            None,
            "every system event for an inbox (crash-watch, approvals), with its idempotency "
            "key as `Nats-Msg-Id`; the broker's durable consumer "
            f"`{s.DELIVERIES_CONSUMER}` inserts each once and acks it after the commit, so "
            "an event survives a broker outage of any length",
        ),
        Entry(
            s.BROKER_WAKE,
            "publish",
            "broker",
            w.BrokerWake,
            None,
            "internal, between broker instances: after a commit, wakes the other instances' "
            "waiting recv calls of the recipients; a starting instance wakes them all",
        ),
        Entry(
            s.NODES_JOIN_TOKEN,
            "request",
            "lifecycle",
            w.JoinTokenRequest,
            w.JoinToken,
            "a one-time token for a new machine to join as a node (docs/multihost.md)",
        ),
        Entry(
            s.NODES_JOIN,
            "request",
            "lifecycle",
            w.JoinRequest,
            w.JoinReply,
            "spend a join token: the node's NATS user is made for the key it sent "
            "(only a join token's user may call it)",
        ),
        Entry(
            s.system("lifecycle", "list"),
            "request",
            "lifecycle",
            w.AgentsRequest,
            w.AgentsReply,
            "agents (for the broker and crash-watch)",
        ),
        Entry(
            s.system("lifecycle", "get"),
            "request",
            "lifecycle",
            w.AgentRequest,
            w.AgentInfo,
            "one agent",
        ),
        Entry(
            s.system("lifecycle", "create"),
            "request",
            "lifecycle",
            w.CreateRequest,
            w.AgentInfo,
            "create an agent's container (approved spawn)",
        ),
        Entry(
            s.system("lifecycle", "apply"),
            "request",
            "lifecycle",
            w.ApplyRequest,
            w.ApplyReply,
            "rebuild from the applied tree (approved config change)",
        ),
        Entry(
            s.system("lifecycle", "draft"),
            "request",
            "lifecycle",
            w.DraftRequest,
            w.DraftInfo,
            "create a draft agent",
        ),
        Entry(
            s.system("lifecycle", "drafts"),
            "request",
            "lifecycle",
            w.Empty,
            w.DraftsReply,
            "list drafts",
        ),
        *_node_entries(),
        Entry(
            s.EVENTS_ALL,
            "publish",
            "stream HIVE_EVENTS",
            w.HiveEvent,
            None,
            "every committed state change; kinds below",
        ),
        Entry(
            s.event_family("message"),
            "consumer",
            "stream HIVE_EVENTS",
            w.HiveEvent,
            None,
            "`hive tail` (the operator's `.tail`): the follower of HIVE_EVENTS "
            "(`hyperhive.common.follow`) filtered to `message.*`, from now or from a start "
            "time (`--since`); after a reconnect it resumes after the last record, so nothing "
            "is missed. The dashboard (everything), the broker (`agent.created`, "
            "`agent.destroyed`) and crash-watch (`agent.state`) follow the same way",
        ),
        Entry(
            " ".join(
                s.event_family(f)
                for f in ("agent", "approval", "question", "crash", "stuck", "node")
            ),
            "consumer",
            "stream HIVE_EVENTS",
            w.HiveEvent,
            None,
            "the activity timeline (`hive log`, the dashboard's activity section, "
            "`GET /api/activity`): a short-lived pull consumer from a start time, each record "
            "turned into one line of plain words with who (`data.by`) and when",
        ),
    ]
    return e + _page_relay()


def _node(verb: str) -> str:
    return s.node("N", verb).replace(".N.", ".<node>.")


def _node_entries() -> list[Entry]:
    """Control half → node agent (``hive serve node``; the hub's runs in lifecycle)."""
    verbs: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct], str]] = {
        "create": (
            w.NodeDeployRequest,
            w.NodeStateReply,
            "build an agent's container "
            "from the deployed tree (and its NATS seed) carried in the request",
        ),
        "start": (
            w.NodeAgentRequest,
            w.NodeStateReply,
            "start a container (a running one is only watched from then on: adoption)",
        ),
        "stop": (w.NodeStopRequest, w.NodeStateReply, "stop a container (kill: at once)"),
        "restart": (w.NodeAgentRequest, w.NodeStateReply, "restart a container"),
        "destroy": (
            w.NodeDestroyRequest,
            w.NodeDestroyReply,
            "remove a container and the "
            "agent's files on the node (its state dir is kept unless purged)",
        ),
        "update": (w.NodeDeployRequest, w.NodeStateReply, "rebuild from a new deployed tree"),
        "state": (w.NodeAgentRequest, w.NodeStateReply, "running, stopped or missing"),
        "logs": (w.NodeLogsRequest, w.LogsReply, "a container's harness log"),
        "expose": (w.NodeExposeRequest, w.Ok, "show an agent to the manager on this node"),
        "list": (w.Empty, w.NodeListReply, "the containers the node holds (adoption)"),
    }
    entries = [
        Entry(_node(verb), "request", "node agent", req, reply, what)
        for verb, (req, reply, what) in verbs.items()
    ]
    entries.append(
        Entry(
            s.kv_subject(s.node_key("N")).replace(".N", ".<node>"),
            "publish",
            "KV hive_state",
            w.NodeHeartbeat,
            None,
            "node agent heartbeat (every node.heartbeat_interval_s, and at once when a "
            "container stops by itself); lifecycle's control half watches it",
        )
    )
    return entries


CATALOG: tuple[Entry, ...] = tuple(_entries())

EVENT_KINDS: tuple[str, ...] = tuple(
    sorted(v for k, v in vars(s).items() if k.startswith("EV_") and isinstance(v, str))
)


def _fields(kind: type[msgspec.Struct] | None) -> str:
    if kind is None:
        return "-"
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    names = [f.name + ("?" if not f.required else "") for f in info.fields]
    return f"`{kind.__name__}` {{{', '.join(names)}}}"


def render_markdown() -> str:
    """``docs/subjects.md``."""
    lines = [
        "# NATS subjects",
        "",
        "Generated from `hyperhive.common.catalog` by "
        "`python -m hyperhive.common.catalog > docs/subjects.md`; a test fails when this",
        "file is stale. `<n>` is an agent name, `<node>` a node's (`HIVE_NODE_NAME`).",
        "Payloads are JSON of the named",
        "`msgspec` Struct in `hyperhive.common.wire` (`?` marks a field with a default);",
        'every request\'s error reply is `{"error": {"code", "message"}}`.',
        "",
        "| subject | kind | served by | payload | reply | what |",
        "|---|---|---|---|---|---|",
    ]
    for e in CATALOG:
        lines.append(
            f"| `{e.subject}` | {e.kind} | {e.handler} | {_fields(e.request)} "
            f"| {_fields(e.reply)} | {e.what} |"
        )
    lines += [
        "",
        "## Event kinds on `hive.events.<kind>` (stream `HIVE_EVENTS`)",
        "",
        "Each record is a `HiveEvent` {kind, ts, agent?, data?, id?}.",
        "",
        "`data.by` says who caused it, when a request did: the agent for",
        "`hive.agent.<n>.*`, the operator's tool for `hive.admin.*` (the `Hive-Actor`",
        "header, e.g. `operator via cli (ann@box)`, else `operator`), and for",
        "`hive.system.*` the actor the calling service passed on (else `system`).",
        "A change from a service's own loop (a crash restart, an auto-update) has none.",
        "",
    ]
    # each kind's data, from its typed Struct (hyperhive.common.wire.events)
    lines += [f"- `{k}`: data {_fields(w.EVENT_DATA_TYPES[k])}" for k in EVENT_KINDS]
    lines += [
        "",
        "## System events (sender `system`, in an agent's inbox)",
        "",
        "Tagged by `type`, stored with the message and shown as `event` by `recv`,",
        "`hive messages --json`, `hive inbox --json` and the dashboard's inbox panel:",
        "",
        *[f"- {_fields(t)}" for t in w.SYSTEM_EVENT_TYPES],
        "",
        "## Watching the hive",
        "",
        "With the NATS CLI and the operator's credentials (`hive up` writes them to",
        "`$HIVE_HOME/nats/operator.seed`):",
        "",
        "```sh",
        "nats --server nats://127.0.0.1:4222 --nkey $HIVE_HOME/nats/operator.seed \\",
        f"     --inbox-prefix {s.operator_inbox_prefix()} sub '{s.EVENTS_ALL}'",
        f"nats ... stream view {s.EVENTS_STREAM}         # the durable event log",
        f"nats ... sub '{s.AGENT_EVENTS_ALL}'       # live claude output of every agent",
        f"hive tail [--agent A] [--since 10m]      # message events, from {s.EVENTS_STREAM}",
        "hive log [--agent A] [--kind deny] [--since 1d] [--json]   # the activity timeline",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
