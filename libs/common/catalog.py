"""The catalog of every NATS subject: who serves it, what it carries.

Request subjects come from :mod:`hyperhive.common.endpoints` (declared
there once); this module adds what is only published or consumed.
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
from hyperhive.common.endpoints import ENDPOINTS, Endpoint
from hyperhive.common.wire import page as wp


@dataclass(frozen=True, slots=True)
class Entry:
    subject: str  # pattern; <n> = an agent name
    kind: str  # request | publish | consumer (a JetStream consumer reads it)
    handler: str  # the service that answers (or the stream that keeps it)
    caller: str  # who may call or publish it: agent, manager, operator, service
    request: type[msgspec.Struct] | None
    reply: type[msgspec.Struct] | None
    what: str


def _from_endpoint(e: Endpoint[msgspec.Struct, msgspec.Struct]) -> Entry:
    return Entry(
        e.pattern,
        "request" if e.reply is not None else "publish",
        e.service,
        e.caller,
        e.request,
        e.reply,
        e.doc,
    )


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
            "operator",
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
            "operator",
            w.EventsOpen,
            w.SessionOpened,
            "agent page relay: open the live tail (`GET /api/events`, SSE) as a session "
            "to pull from",
        ),
        Entry(
            _page(s.PAGE_TERMINAL),
            "request",
            PAGE_RELAY,
            "operator",
            w.TerminalOpen,
            w.SessionOpened,
            "agent page relay: open a terminal (a new login shell) as a session",
        ),
        Entry(
            _page(s.PAGE_PULL),
            "request",
            PAGE_RELAY,
            "operator",
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
            "operator",
            w.PushRequest,
            w.Ok,
            "agent page relay: one text frame (input, resize) to a terminal session",
        ),
        Entry(
            _page(s.PAGE_CLOSE),
            "request",
            PAGE_RELAY,
            "operator",
            w.SessionRequest,
            w.Ok,
            "agent page relay: end a session (the tail's stream, the terminal's shell)",
        ),
    ]
    return e


def _streams() -> list[Entry]:
    """What is published to a stream or a bucket, or read by a consumer: no endpoint."""
    return [
        Entry(
            s.agent("N", s.AGENT_EVENTS).replace(".N.", ".<n>."),
            "publish",
            "stream HIVE_TURNS",
            "agent",
            w.TurnEvent,
            None,
            "claude stream-json events and harness records of the current turn",
        ),
        Entry(
            s.kv_subject(s.heartbeat_key("N")).replace(".N", ".<n>"),
            "publish",
            "KV hive_state",
            "agent",
            w.Heartbeat,
            None,
            "harness heartbeat (every interval; turn_started while a turn runs; "
            "login_needed while the API refuses its credentials)",
        ),
        Entry(
            s.kv_subject(s.node_key("N")).replace(".N", ".<node>"),
            "publish",
            "KV hive_state",
            "node",
            w.NodeHeartbeat,
            None,
            "node agent heartbeat (every node.heartbeat_interval_s, and at once when a "
            "container stops by itself); lifecycle's control half watches it",
        ),
        Entry(
            s.DELIVERIES,
            "publish",
            f"stream {s.DELIVERIES_STREAM}",
            "service",
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
            "service",
            w.BrokerWake,
            None,
            "internal, between broker instances: after a commit, wakes the other instances' "
            "waiting recv calls of the recipients; a starting instance wakes them all",
        ),
        Entry(
            s.EVENTS_ALL,
            "publish",
            "stream HIVE_EVENTS",
            "service",
            w.HiveEvent,
            None,
            "every committed state change; kinds below",
        ),
        Entry(
            s.event_family("message"),
            "consumer",
            "stream HIVE_EVENTS",
            "operator",
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
            "operator",
            w.HiveEvent,
            None,
            "the activity timeline (`hive log`, the dashboard's activity section, "
            "`GET /api/activity`): a short-lived pull consumer from a start time, each record "
            "turned into one line of plain words with who (`data.by`) and when",
        ),
    ]


CATALOG: tuple[Entry, ...] = (
    tuple(_from_endpoint(e) for e in ENDPOINTS) + tuple(_streams()) + tuple(_page_relay())
)

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
        "| subject | kind | served by | called by | payload | reply | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in CATALOG:
        lines.append(
            f"| `{e.subject}` | {e.kind} | {e.handler} | {e.caller} | {_fields(e.request)} "
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
        "nats ... micro ls                        # every service instance (micro discovery)",
        "nats ... micro stats broker              # its endpoints: requests, errors, time",
        f"hive tail [--agent A] [--since 10m]      # message events, from {s.EVENTS_STREAM}",
        "hive log [--agent A] [--kind deny] [--since 1d] [--json]   # the activity timeline",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
