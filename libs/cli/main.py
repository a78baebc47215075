"""``hive``: the operator's command line. Every command that prints data
also takes ``--json``."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from hyperhive.cli import client

# Each module adds its verbs with ``register(subparsers)``; a verb's handler is
# stored as ``func`` and returns the exit code.
COMMAND_MODULES = (
    "hyperhive.cli.cmd_core",
    "hyperhive.cli.cmd_setup",
    "hyperhive.cli.cmd_messages",
    "hyperhive.cli.cmd_agents",
    "hyperhive.cli.cmd_approvals",
    "hyperhive.cli.cmd_log",
    "hyperhive.cli.cmd_usage",
    "hyperhive.cli.cmd_node",
)


# Every reply of the services is masked on its way to the operator
# (hyperhive.common.redact, client.call); these commands, whose output may quote
# a config, an environment or a message, take --show-secrets to print it in clear.
SHOW_SECRETS_COMMANDS = (
    "agents",
    "config",
    "logs",
    "messages",
    "inbox",
    "approvals",
    "diff",
    "approve",
    "deny",
    "questions",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hive", description="Run and steer a swarm of Claude Code agents."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for name in SHOW_SECRETS_COMMANDS:
        sub.choices[name].add_argument(
            "--show-secrets",
            action="store_true",
            help="print secrets (env values, tokens, keys) in clear; masked by default",
        )
    return parser


# what a shell reports for a Unix tool that SIGPIPE ended (``yes | head -1``)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command. A reader that went away (``hive messages | head -1``)
    ends it quietly with :data:`EXIT_BROKEN_PIPE`, as it ends a Unix tool."""
    try:
        args = build_parser().parse_args(argv)
        client.set_show_secrets(getattr(args, "show_secrets", False))
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # nothing more reaches the reader; and Python's own flush at exit
        # must not fail on the closed pipe either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
