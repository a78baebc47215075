"""``hive``: the operator's command line. Every command that prints data
also takes ``--json``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module adds its verbs with ``register(subparsers)``; a verb's handler is
# stored as ``func`` and returns the exit code.
COMMAND_MODULES = (
    "hyperhive.cli.cmd_core",
    "hyperhive.cli.cmd_setup",
    "hyperhive.cli.cmd_messages",
    "hyperhive.cli.cmd_agents",
    "hyperhive.cli.cmd_approvals",
    "hyperhive.cli.cmd_usage",
    "hyperhive.harness.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hive", description="Run and steer a swarm of Claude Code agents."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
