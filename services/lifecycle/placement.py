"""Which node a new agent's container goes to.

The rule (docs/architecture.md "Beyond one host"): the manager always runs
on the node of the control half (the hub: it reads every agent's repos
there); an agent spawned with a host goes to that node, which must be up;
otherwise to the up node with the fewest agents running (or being created),
the hub first on a tie, then by name.
"""

from __future__ import annotations

import asyncpg

from hyperhive.common.errors import BadRequest, Unavailable
from hyperhive.common.names import check_node_name
from hyperhive.lifecycle import store


async def pick(
    conn: asyncpg.Connection, host: str, *, up: set[str], local: str, manager: bool
) -> str:
    """The node to place a new container on.

    Raises:
        BadRequest: ``host`` is not a node name, or not the hub's for the manager.
        Unavailable: ``host`` is not up (unknown, or lost).
    """
    if manager:
        if host and host != local:
            raise BadRequest(f"the manager runs on the control half's node, {local}")
        return local
    if host:
        node = check_node_name(host)
        if node not in up:
            known = await store.get_node(conn, node)
            if known is None:
                why = "has never joined"
            elif not known.revision:  # joined; its node agent has never beaten (says it)
                why = "has joined but its node agent has not answered yet"
            else:
                why = "is lost"
            raise Unavailable(f"node {node} {why}: `hive nodes` lists the nodes that are up")
        return node
    running = await store.running_per_node(conn)
    return min(up, key=lambda n: (running.get(n, 0), n != local, n))


__all__ = ["pick"]
