"""SQL of the agent registry (schema ``lifecycle``, table ``agents``)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from hyperhive.common.wire.states import (  # noqa: F401 (the states, as store.X)
    CREATING,
    DESTROYED,
    DRAFT,
    FAILED,
    RUNNING,
    STOPPED,
)

_COLUMNS = """
    name, kind, state, port, rev, backend, state_seq, kept_state, error, state_flag, node,
    extract(epoch FROM state_since)::float8 AS state_since,
    extract(epoch FROM created_at)::float8 AS created_at,
    extract(epoch FROM destroyed_at)::float8 AS destroyed_at
"""


@dataclass(frozen=True, slots=True)
class AgentRow:
    name: str
    kind: str
    state: str
    port: int | None
    rev: str
    backend: str
    state_seq: int
    kept_state: bool
    error: str
    state_flag: str  # the transient flag of the change into ``state`` ('' for none)
    node: str  # the node its container is placed on
    state_since: float
    created_at: float
    destroyed_at: float | None

    @property
    def live(self) -> bool:
        """Registered and not destroyed (drafts included)."""
        return self.state != DESTROYED

    @property
    def manager(self) -> bool:
        return self.kind == "manager"


def _row(record: asyncpg.Record | None) -> AgentRow | None:
    return None if record is None else AgentRow(**dict(record))


async def get(conn: asyncpg.Connection, name: str, *, for_update: bool = False) -> AgentRow | None:
    lock = " FOR UPDATE" if for_update else ""
    return _row(await conn.fetchrow(f"SELECT {_COLUMNS} FROM agents WHERE name = $1{lock}", name))


async def list_agents(
    conn: asyncpg.Connection | asyncpg.Pool, states: tuple[str, ...] | None = None
) -> list[AgentRow]:
    """Every row (or those in ``states``), by name."""
    if states is None:
        records = await conn.fetch(f"SELECT {_COLUMNS} FROM agents ORDER BY name")
    else:
        records = await conn.fetch(
            f"SELECT {_COLUMNS} FROM agents WHERE state = ANY($1::text[]) ORDER BY name",
            list(states),
        )
    return [AgentRow(**dict(r)) for r in records]


async def used_ports(conn: asyncpg.Connection, excluding: str) -> set[int]:
    rows = await conn.fetch(
        "SELECT port FROM agents WHERE port IS NOT NULL AND state <> $1 AND name <> $2",
        DESTROYED,
        excluding,
    )
    return {r["port"] for r in rows}


async def register(
    conn: asyncpg.Connection,
    *,
    name: str,
    kind: str,
    state: str,
    port: int | None,
    rev: str,
    backend: str,
    node: str,
) -> AgentRow:
    """Inserts the row, or makes a destroyed or draft one new again."""
    record = await conn.fetchrow(
        f"""
        INSERT INTO agents (name, kind, state, port, rev, backend, state_seq, node)
        VALUES ($1, $2, $3, $4, $5, $6, 1, $7)
        ON CONFLICT (name) DO UPDATE SET
            kind = EXCLUDED.kind, state = EXCLUDED.state, port = EXCLUDED.port,
            rev = EXCLUDED.rev, backend = EXCLUDED.backend, node = EXCLUDED.node,
            state_seq = agents.state_seq + 1, state_since = now(),
            created_at = now(), destroyed_at = NULL, kept_state = false, error = '',
            state_flag = ''
        RETURNING {_COLUMNS}
        """,
        name,
        kind,
        state,
        port,
        rev,
        backend,
        node,
    )
    row = _row(record)
    assert row is not None
    return row


async def set_state(
    conn: asyncpg.Connection,
    name: str,
    state: str,
    *,
    error: str | None = None,
    rev: str | None = None,
    port: int | bool | None = False,
    kept_state: bool | None = None,
    flag: str = "",
) -> AgentRow:
    """Moves ``name`` to ``state`` (bumping its sequence) by an operation that
    set ``flag`` (``""``: none, e.g. a crash). ``port=None`` clears the port."""
    record = await conn.fetchrow(
        f"""
        UPDATE agents SET
            state = $2,
            state_seq = state_seq + 1,
            state_since = now(),
            error = COALESCE($3, error),
            rev = COALESCE($4, rev),
            port = CASE WHEN $5 THEN $6 ELSE port END,
            kept_state = COALESCE($7, kept_state),
            state_flag = $8,
            destroyed_at = CASE WHEN $2 = '{DESTROYED}' THEN now() ELSE destroyed_at END
        WHERE name = $1
        RETURNING {_COLUMNS}
        """,
        name,
        state,
        error,
        rev,
        port is not False,
        None if port is False else port,
        kept_state,
        flag,
    )
    row = _row(record)
    if row is None:
        raise LookupError(name)
    return row


async def set_fields(
    conn: asyncpg.Connection,
    name: str,
    *,
    error: str | None = None,
    rev: str | None = None,
    kept_state: bool | None = None,
) -> None:
    """Changes fields without a state change."""
    await conn.execute(
        """
        UPDATE agents SET error = COALESCE($2, error), rev = COALESCE($3, rev),
            kept_state = COALESCE($4, kept_state)
        WHERE name = $1
        """,
        name,
        error,
        rev,
        kept_state,
    )


# --- nodes ----------------------------------------------------------------------

NODE_UP = "up"
NODE_LOST = "lost"

_NODE_COLUMNS = """
    name, state, revision, backend,
    extract(epoch FROM joined_at)::float8 AS joined_at,
    extract(epoch FROM last_seen)::float8 AS last_seen
"""


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    state: str
    revision: str
    backend: str
    joined_at: float
    last_seen: float | None


async def list_nodes(conn: asyncpg.Connection | asyncpg.Pool) -> list[NodeRow]:
    records = await conn.fetch(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")
    return [NodeRow(**dict(r)) for r in records]


async def get_node(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> NodeRow | None:
    record = await conn.fetchrow(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = $1", name)
    return None if record is None else NodeRow(**dict(record))


async def node_seen(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, revision: str, backend: str
) -> tuple[NodeRow, str | None]:
    """Records a heartbeat of ``name``. Returns the row and the state it was
    in before (None: a new node), so the caller knows a join or a return."""
    record = await conn.fetchrow(
        f"""
        WITH prev AS (SELECT state FROM nodes WHERE name = $1)
        INSERT INTO nodes (name, state, revision, backend, last_seen)
        VALUES ($1, 'up', $2, $3, now())
        ON CONFLICT (name) DO UPDATE SET
            state = 'up', revision = EXCLUDED.revision, backend = EXCLUDED.backend,
            last_seen = now(),
            state_since = CASE WHEN nodes.state = 'up' THEN nodes.state_since ELSE now() END
        RETURNING {_NODE_COLUMNS}, (SELECT state FROM prev) AS previous
        """,
        name,
        revision,
        backend,
    )
    data = dict(record)
    previous = data.pop("previous")
    return NodeRow(**data), previous


async def node_joined(conn: asyncpg.Connection | asyncpg.Pool, name: str, nkey: str) -> None:
    """Records a node that joined (again) with its NATS user's public key;
    it is ``up`` from now, until its heartbeat is missing."""
    await conn.execute(
        """
        INSERT INTO nodes (name, nkey, state, last_seen) VALUES ($1, $2, 'up', now())
        ON CONFLICT (name) DO UPDATE SET
            nkey = EXCLUDED.nkey, state = 'up', joined_at = now(), last_seen = now(),
            state_since = now()
        """,
        name,
        nkey,
    )


async def node_lost(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> bool:
    """Marks ``name`` lost. Returns whether it was up (so it is reported once)."""
    result = await conn.execute(
        "UPDATE nodes SET state = 'lost', state_since = now() WHERE name = $1 AND state = 'up'",
        name,
    )
    return result.endswith(" 1")


async def agents_on(conn: asyncpg.Connection | asyncpg.Pool, node: str) -> list[AgentRow]:
    """The live agents (drafts aside) placed on ``node``, by name."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM agents WHERE node = $1 AND state <> ALL($2::text[]) ORDER BY name",
        node,
        [DRAFT, DESTROYED],
    )
    return [AgentRow(**dict(r)) for r in records]


async def running_per_node(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Agents in ``running`` (or being created) per node: what placement weighs."""
    records = await conn.fetch(
        "SELECT node, count(*) AS n FROM agents WHERE state = ANY($1::text[]) GROUP BY node",
        [RUNNING, CREATING],
    )
    return {r["node"]: r["n"] for r in records}


async def live_per_node(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    records = await conn.fetch(
        "SELECT node, count(*) AS n FROM agents WHERE state <> ALL($1::text[]) GROUP BY node",
        [DRAFT, DESTROYED],
    )
    return {r["node"]: r["n"] for r in records}
