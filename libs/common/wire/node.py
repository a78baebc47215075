"""Wire types between lifecycle's control half and the node agents.

``hive.node.<node>.<verb>`` carries one of the requests below from the
control half (registry, placement, credentials, the repos) to the node agent
that runs an agent's container and keeps its state dir. A node agent keeps no
database: everything it needs for an operation comes in the request (the
agent's name, port, kind, the deployed config tree, its NATS seed), and what
it holds it reports in ``list`` (adoption) and in its heartbeat
(``node.<node>`` in the state bucket).
"""

from __future__ import annotations

import msgspec

# the deployed config a node receives: a gzipped tar of the applied tree,
# well under NATS's default max_payload (1 MiB) for any real config
MAX_TREE_BYTES = 512 * 1024


class NodeAgentSpec(msgspec.Struct, kw_only=True):
    """What a node needs to know about one agent (the registry row's part)."""

    name: str
    port: int = 0
    manager: bool = False
    rev: str = ""  # hyperhive revision the container is built for


class NodeAgentRequest(msgspec.Struct, kw_only=True):
    """``start``, ``restart``, ``state``: a verb on one agent's container."""

    agent: NodeAgentSpec


class NodeDeployRequest(msgspec.Struct, kw_only=True):
    """``create`` and ``update``: build the container from a deployed tree.

    ``tree`` is the applied tree at ``sha`` (a gzipped tar, see
    :data:`MAX_TREE_BYTES`); ``None`` when the node shares the control half's
    data dir (the in-process ``hub`` node), whose applied repo is the tree.
    ``seed`` (create only) is the agent's NATS nkey seed, minted by the
    control half; ``running`` (update only) restarts a running container.
    """

    agent: NodeAgentSpec
    tree: bytes | None = None
    sha: str = ""
    seed: str = ""
    running: bool = False
    fresh_state: bool = False  # create only: start without a kept state dir


class NodeStopRequest(msgspec.Struct, kw_only=True):
    agent: NodeAgentSpec
    kill: bool = False


class NodeDestroyRequest(msgspec.Struct, kw_only=True):
    """Remove the container and the node's files of the agent; its state dir
    is kept (unless ``purge``, or empty)."""

    agent: NodeAgentSpec
    purge: bool = False
    container: bool = True  # False: files only (a draft, a purge of kept state)


class NodeDestroyReply(msgspec.Struct, kw_only=True):
    kept_state: bool = False


class NodeStateReply(msgspec.Struct, kw_only=True):
    """``running``, ``stopped`` or ``missing``; how it last ended when not running."""

    state: str
    exit_code: int | None = None
    detail: str = ""


class NodeLogsRequest(msgspec.Struct, kw_only=True):
    agent: NodeAgentSpec
    lines: int = 200
    after: int | None = None
    after_cursor: str = ""


class NodeNotesRequest(msgspec.Struct, kw_only=True):
    """``notes``: an agent's notes as its state dir on the node holds them
    (also a destroyed agent's kept state); as ``hive notes`` asks."""

    agent: NodeAgentSpec
    history: bool = False
    version: int | None = None


class NodeKeptRequest(msgspec.Struct, kw_only=True):
    """``kept``: the kept state dirs of these destroyed agents (the registry
    says which agents kept a state on this node)."""

    names: list[str] = msgspec.field(default_factory=list)


class NodeKeptState(msgspec.Struct, kw_only=True):
    name: str
    bytes: int = 0  # of the files in its state dir


class NodeKeptReply(msgspec.Struct, kw_only=True):
    """The asked-for state dirs the node holds (one it does not hold is left out)."""

    node: str
    kept: list[NodeKeptState] = msgspec.field(default_factory=list)


class NodeExposeRequest(msgspec.Struct, kw_only=True):
    """Show agent ``name`` to the manager running on this node."""

    name: str


class NodeContainer(msgspec.Struct, kw_only=True):
    name: str
    state: str  # running | stopped


class NodeListReply(msgspec.Struct, kw_only=True):
    """The containers a node holds (its agents dir), for adoption."""

    node: str
    containers: list[NodeContainer] = msgspec.field(default_factory=list)


class NodeExit(msgspec.Struct, kw_only=True):
    """A container the node saw stop by itself."""

    agent: str
    at: float  # when it was seen (epoch seconds)
    exit_code: int | None = None
    detail: str = ""


class NodeHeartbeat(msgspec.Struct, kw_only=True):
    """``node.<node>`` in the state bucket, written every couple of seconds
    and at once when a container stops by itself (``exits``)."""

    node: str
    at: float  # when it was written (epoch seconds)
    agents: int = 0  # containers running
    running: list[str] = msgspec.field(default_factory=list)
    load1: float = 0.0
    revision: str = ""  # hyperhive version of the node agent
    backend: str = ""
    started_at: float = 0.0  # the node agent's start: a restart is a new episode
    exits: list[NodeExit] = msgspec.field(default_factory=list)  # the recent ones


class NodeInfo(msgspec.Struct, kw_only=True):
    """One row of ``hive nodes``."""

    name: str
    state: str  # up | lost
    agents: int = 0  # live agents placed on it (registry)
    running: int = 0  # containers running (its heartbeat)
    load1: float = 0.0
    revision: str = ""
    backend: str = ""
    joined_at: float = 0.0
    last_seen: float | None = None


class NodesReply(msgspec.Struct, kw_only=True):
    nodes: list[NodeInfo] = msgspec.field(default_factory=list)


__all__ = [
    "MAX_TREE_BYTES",
    "NodeAgentRequest",
    "NodeAgentSpec",
    "NodeContainer",
    "NodeDeployRequest",
    "NodeDestroyReply",
    "NodeDestroyRequest",
    "NodeExit",
    "NodeExposeRequest",
    "NodeHeartbeat",
    "NodeInfo",
    "NodeKeptReply",
    "NodeKeptRequest",
    "NodeKeptState",
    "NodeListReply",
    "NodeLogsRequest",
    "NodeNotesRequest",
    "NodeStateReply",
    "NodeStopRequest",
    "NodesReply",
]
