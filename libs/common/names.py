"""Agent names: the one check every part applies before a name is used."""

from __future__ import annotations

import re
from typing import Final

from hyperhive.common import subjects
from hyperhive.common.errors import BadRequest

# nixos-container allows 11 characters and agents run as ``h-<name>``.
AGENT_NAME: Final = re.compile(r"^[a-z][a-z0-9-]{0,8}$")
RESERVED: Final = frozenset({subjects.MANAGER, subjects.OPERATOR, subjects.SYSTEM, "hive"})
# an agent's reply inbox is ``_INBOX.<name>``: a name that starts like a node
# agent's (``_INBOX.node-<node>``) would read that node's replies
RESERVED_PREFIXES: Final = ("node-",)


def check_agent_name(name: object, *, allow_manager: bool = False) -> str:
    """Returns ``name`` if it is a valid agent name.

    Raises:
        BadRequest: not a string, wrong shape, or reserved.
    """
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid agent name {name!r}: use 1-9 characters a-z, 0-9 and '-', "
            "starting with a letter"
        )
    if name in RESERVED and not (allow_manager and name == subjects.MANAGER):
        raise BadRequest(f"agent name {name!r} is reserved")
    if name.startswith(RESERVED_PREFIXES):
        raise BadRequest(f"agent name {name!r} is reserved (node agents use 'node-')")
    return name


def is_agent_name(name: str) -> bool:
    """True for any well-formed name, the manager's included."""
    return bool(AGENT_NAME.fullmatch(name))


def check_node_name(name: object) -> str:
    """Returns ``name`` if it is a valid node name (the agent-name rules:
    ``hub``, ``node1``; a node name is a subject token and a NATS user name).

    Raises:
        BadRequest: not a string or wrong shape.
    """
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid node name {name!r}: use 1-9 characters a-z, 0-9 and '-', "
            "starting with a letter"
        )
    return name
