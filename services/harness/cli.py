"""``hive harness …``: the processes that run inside an agent's container."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``hive harness serve`` and ``hive harness mcp``."""
