"""``hive harness …``: the processes that run inside an agent's container."""

from __future__ import annotations

import argparse
import sys

from hyperhive.common.config import load_settings
from hyperhive.common.errors import HiveError


def _serve(_args: argparse.Namespace) -> int:
    from hyperhive.harness.serve import serve_main

    try:
        settings = load_settings()
    except HiveError as exc:
        print(f"hive harness serve: {exc}", file=sys.stderr)
        return 1
    return serve_main(settings)


def _mcp(_args: argparse.Namespace) -> int:
    from hyperhive.harness.mcp_server import serve_stdio

    try:
        settings = load_settings()
    except HiveError as exc:
        print(f"hive harness mcp: {exc}", file=sys.stderr)
        return 1
    if not settings.harness.agent:
        print("hive harness mcp: HIVE_HARNESS_AGENT is not set", file=sys.stderr)
        return 1
    serve_stdio(settings)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``hive harness serve`` and ``hive harness mcp``."""
    harness = sub.add_parser("harness", help="run an agent's harness (inside its container)")
    verbs = harness.add_subparsers(dest="harness_command", metavar="VERB")
    verbs.required = True
    serve = verbs.add_parser(
        "serve",
        help="the turn loop and the agent page (settings from HIVE_HARNESS_* and HIVE_NATS_*)",
    )
    serve.set_defaults(func=_serve)
    mcp = verbs.add_parser("mcp", help="the stdio MCP server 'hyperhive' that claude starts")
    mcp.set_defaults(func=_mcp)
