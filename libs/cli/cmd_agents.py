"""``hive agents``, ``hive spawn``, ``hive start|stop|restart|kill|update``,
``hive destroy``, ``hive kept``, ``hive purge``, ``hive logs``, ``hive drafts``,
``hive config``, ``hive notes``, ``hive nodes``: the operator's verbs on lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import sys

from hyperhive.cli.client import (
    call,
    fmt_ts,
    print_json,
    print_table,
    require_agent,
    run_command,
)
from hyperhive.common import endpoints as E
from hyperhive.common.config import Settings
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    AgentsRequest,
    DestroyRequest,
    LogsRequest,
    NotesRequest,
    SpawnRequest,
)

# container operations can take a while (nixos-container builds)
OP_TIMEOUT_S = 1800.0
FOLLOW_INTERVAL_S = 1.0
CONTAINER_VERBS = {
    "start": "start an agent's container",
    "stop": "stop an agent's container (graceful)",
    "restart": "restart an agent's container",
    "kill": "stop an agent's container at once",
    "update": "rebuild an agent's container from its deployed config",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds lifecycle's verbs."""
    p = sub.add_parser("agents", help="list agents and their containers")
    p.add_argument("--all", action="store_true", help="include destroyed agents")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_agents)

    p = sub.add_parser("spawn", help="create and start an agent (no approval needed)")
    p.add_argument("name")
    p.add_argument("--fresh", action="store_true", help="do not reuse a kept state dir")
    p.add_argument(
        "--host",
        default="",
        metavar="NODE",
        help="the node to run it on (`hive nodes`); default: the up node with the "
        "fewest running agents",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_spawn)

    p = sub.add_parser("nodes", help="the hosts that run agents: state, agents, load, revision")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_nodes)

    for verb, text in CONTAINER_VERBS.items():
        p = sub.add_parser(verb, help=text)
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_verb, verb=verb)

    p = sub.add_parser("destroy", help="remove an agent (its state dir is kept unless --purge)")
    p.add_argument("name")
    p.add_argument("--purge", action="store_true", help="delete its state dir too")
    p.set_defaults(func=_destroy)

    p = sub.add_parser("kept", help="state dirs kept from destroyed agents")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_kept)

    p = sub.add_parser("purge", help="delete a destroyed agent's kept state dir")
    p.add_argument("name")
    p.set_defaults(func=_purge)

    p = sub.add_parser("logs", help="an agent's harness logs")
    p.add_argument("name")
    p.add_argument("-n", "--lines", type=int, default=100, help="last N lines (default 100)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(func=_logs)

    p = sub.add_parser("drafts", help="agents drafted by the manager, not yet created")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_drafts)

    p = sub.add_parser("config", help="an agent's deployed config files")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_config)

    p = sub.add_parser(
        "notes", help="an agent's notes; --history lists every kept version, --version N shows one"
    )
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--history", action="store_true", help="list the kept versions")
    which.add_argument("--version", type=int, metavar="N", help="show version N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_notes)


AGENT_COLUMNS = ["name", "kind", "state", "host", "port", "rev", "since", "error"]


def _agent_row(a: AgentInfo) -> list[object]:
    state = f"{a.state} ({a.flag})" if a.flag else a.state
    rev = f"{a.rev} (stale)" if a.stale else a.rev
    host = f"{a.node} (lost)" if a.node_state == "lost" else a.node
    return [a.name, a.kind, state, host, a.port or "", rev, fmt_ts(a.state_since), a.error[:60]]


def _print_agent(a: AgentInfo, as_json: bool) -> None:
    if as_json:
        print_json(a)
    else:
        print_table(AGENT_COLUMNS, [_agent_row(a)])


def _agents(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        reply = await call(
            settings,
            E.AGENTS,
            AgentsRequest(include_destroyed=args.all),
        )
        if args.json:
            print_json(reply.agents)
            return
        print_table(AGENT_COLUMNS, [_agent_row(a) for a in reply.agents])

    return run_command(body)


def _spawn(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        info = await call(
            settings,
            E.SPAWN,
            SpawnRequest(name=args.name, reuse_state=not args.fresh, host=args.host),
            timeout=OP_TIMEOUT_S,
        )
        _print_agent(info, args.json)

    return run_command(body)


def _nodes(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        reply = await call(settings, E.NODES, Empty())
        if args.json:
            print_json(reply.nodes)
            return
        print_table(
            ["node", "state", "agents", "running", "load", "revision", "last seen"],
            [
                [
                    n.name,
                    n.state,
                    n.agents,
                    n.running,
                    f"{n.load1:.2f}",
                    n.revision,
                    fmt_ts(n.last_seen),
                ]
                for n in reply.nodes
            ],
        )

    return run_command(body)


def _verb(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        await require_agent(settings, args.name)
        info = await call(
            settings,
            E.ADMIN_CONTAINER[args.verb],
            AgentRequest(name=args.name),
            timeout=OP_TIMEOUT_S,
        )
        _print_agent(info, args.json)

    return run_command(body)


def _destroy(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        await require_agent(settings, args.name)
        await call(
            settings,
            E.DESTROY,
            DestroyRequest(name=args.name, purge=args.purge),
            timeout=OP_TIMEOUT_S,
        )
        kept = "" if args.purge else " (state kept: `hive purge` deletes it)"
        print(f"destroyed {args.name}{kept}")

    return run_command(body)


def _kept(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        reply = await call(settings, E.KEPT, Empty())
        if args.json:
            print_json(reply.kept)
            return
        print_table(
            ["name", "host", "destroyed", "bytes"],
            [[k.name, k.node, fmt_ts(k.destroyed_at), k.bytes] for k in reply.kept],
        )

    return run_command(body)


def _purge(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        await require_agent(settings, args.name, destroyed_ok=True)
        await call(settings, E.PURGE, AgentRequest(name=args.name))
        print(f"purged {args.name}")

    return run_command(body)


def _logs(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        await require_agent(settings, args.name)
        reply = await call(settings, E.LOGS, LogsRequest(name=args.name, lines=args.lines))
        _write(reply.lines)
        while args.follow:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            reply = await call(
                settings,
                E.LOGS,
                LogsRequest(
                    name=args.name,
                    after=reply.cursor,
                    after_cursor=reply.journal_cursor,
                    lines=args.lines,
                ),
            )
            _write(reply.lines)

    return run_command(body)


def _write(lines: list[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _drafts(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        reply = await call(settings, E.DRAFTS, Empty())
        if args.json:
            print_json(reply.drafts)
            return
        print_table(
            ["name", "created", "head"],
            [[d.name, fmt_ts(d.created_at), d.head[:12]] for d in reply.drafts],
        )

    return run_command(body)


def _config(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        await require_agent(settings, args.name)
        reply = await call(settings, E.CONFIG, AgentRequest(name=args.name))
        if args.json:
            print_json(reply)
            return
        print(f"# {reply.name} @ {reply.sha or '(nothing deployed)'}")
        for path, text in sorted(reply.files.items()):
            print(f"\n==> {path} <==")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")

    return run_command(body)


def _notes(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        reply = await call(
            settings,
            E.NOTES,
            NotesRequest(name=args.name, history=args.history, version=args.version),
        )
        if args.json:
            print_json(reply)
            return 0
        if args.history:
            print_table(
                ["v", "time", "kind", "turn", "bytes", "note"],
                [[v.v, fmt_ts(v.ts), v.kind, v.turn, v.bytes, v.note] for v in reply.versions],
            )
            return 0
        if not reply.exists:
            print(f"hive: {reply.name} has no notes yet", file=sys.stderr)
            return 1
        text = reply.text
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        if reply.truncated:
            print(
                f"hive: only the first {len(text.encode())} of {reply.bytes} bytes", file=sys.stderr
            )
        return 0

    return run_command(body)
