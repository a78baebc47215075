"""Wire types of lifecycle: the agent registry and its containers."""

from __future__ import annotations

from typing import Annotated

import msgspec

from hyperhive.common.wire.states import AgentFlag, AgentKind, AgentState, StuckReason


class AgentInfo(msgspec.Struct, kw_only=True):
    name: str
    kind: AgentKind
    state: AgentState
    port: int
    rev: str = ""
    stale: bool = False
    flag: AgentFlag | None = None
    created_at: float = 0.0
    destroyed_at: float | None = None
    kept_state: bool = False
    backend: str = ""
    state_seq: int = 0  # bumped on every state change (orders polls against events)
    state_since: float = 0.0  # when the current state began
    error: str = ""  # the last failed operation's error
    # the flag of the operation that brought it into ``state`` (None: none,
    # e.g. a crash): a poll tells a deliberate stop from a crash without the event
    state_flag: AgentFlag | None = None
    node: str = "hub"  # the host (node) its container is placed on
    node_state: str = ""  # up | lost: its node answers (its heartbeat is fresh) or not


class AgentsRequest(msgspec.Struct, kw_only=True):
    include_destroyed: bool = False


class AgentsReply(msgspec.Struct, kw_only=True):
    agents: list[AgentInfo] = msgspec.field(default_factory=list)


class AgentRequest(msgspec.Struct, kw_only=True):
    """A verb on one agent (start, stop, restart, kill, update, config)."""

    name: str


class SpawnRequest(msgspec.Struct, kw_only=True):
    name: str
    reuse_state: bool = True
    # the node to place it on; empty: the control half picks (placement rule
    # in docs/architecture.md "Beyond one host")
    host: str = ""


class DestroyRequest(msgspec.Struct, kw_only=True):
    name: str
    purge: bool = False


class KeptState(msgspec.Struct, kw_only=True):
    name: str
    destroyed_at: float | None = None
    bytes: int = 0
    node: str = ""  # the host that keeps the state dir


class KeptStatesReply(msgspec.Struct, kw_only=True):
    kept: list[KeptState] = msgspec.field(default_factory=list)


class LogsRequest(msgspec.Struct, kw_only=True):
    name: str
    lines: int = 200
    after: int | None = None  # byte offset (process) or cursor; for following
    after_cursor: str = ""  # journald cursor (nixos backend); for following


class LogsReply(msgspec.Struct, kw_only=True):
    lines: list[str] = msgspec.field(default_factory=list)
    cursor: int | None = None
    journal_cursor: str = ""  # nixos backend: pass back as after_cursor


class ConfigReply(msgspec.Struct, kw_only=True):
    """An agent's deployed config files (``agent.nix``, ``agent.toml``)."""

    name: str
    files: dict[str, str] = msgspec.field(default_factory=dict)
    sha: str = ""


class NotesRequest(msgspec.Struct, kw_only=True):
    """``hive.admin.lifecycle.notes``: an agent's notes, a version of them, or their history."""

    name: str
    history: bool = False  # list the kept versions (the newest 2000), without text
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None  # this version's text


class NotesVersion(msgspec.Struct, kw_only=True):
    """One kept version of an agent's notes (a line of the history's log)."""

    v: int
    ts: float
    kind: str  # change (as the harness found them) | compaction (what a compaction wrote)
    bytes: int
    sha256: str
    turn: int | None = None
    note: str = ""


class NotesReply(msgspec.Struct, kw_only=True):
    """The current notes (or ``version``'s), and the history when asked for."""

    name: str
    exists: bool = False  # the file (or version) exists
    text: str = ""
    bytes: int = 0  # the file's full size
    truncated: bool = False  # ``text`` is only the first part of a large file
    version: int | None = None
    versions: list[NotesVersion] = msgspec.field(default_factory=list)


# --- hive.system.lifecycle.* (approvals → lifecycle) -------------------------


class DraftRequest(msgspec.Struct, kw_only=True):
    """Create an agent's proposed repo and state dir, with no container."""

    name: str


class DraftInfo(msgspec.Struct, kw_only=True):
    name: str
    created_at: float = 0.0
    head: str = ""


class DraftsReply(msgspec.Struct, kw_only=True):
    drafts: list[DraftInfo] = msgspec.field(default_factory=list)


class CreateRequest(msgspec.Struct, kw_only=True):
    """Create (and start) an agent's container.

    With ``sha`` set, the applied repo's tree is already at that commit (a
    two-step spawn); otherwise the default config is used.
    """

    name: str
    sha: str | None = None
    host: str = ""  # the node to place it on; empty: the control half picks


class ApplyRequest(msgspec.Struct, kw_only=True):
    """The applied tree of ``name`` changed: rebuild its container from it."""

    name: str


class ApplyReply(msgspec.Struct, kw_only=True):
    ok: bool
    error: str = ""  # the build error when ok is False


# --- the state bucket (KV, shared by lifecycle and crash-watch) ----------------


class TransientFlag(msgspec.Struct, kw_only=True):
    """``flag.<n>``: lifecycle is stopping, restarting, destroying or rebuilding ``n``.

    ``since`` lets crash-watch ignore a flag that a lifecycle which died in the
    middle of an operation left behind.
    """

    flag: AgentFlag
    since: float = 0.0  # when it was set (epoch seconds)


class Heartbeat(msgspec.Struct, kw_only=True):
    """``heartbeat.<n>``: the harness is alive (written every heartbeat interval)."""

    ts: float  # when it was written (epoch seconds)
    turn_started: float | None = None  # set while a turn runs
    # set while the API refuses the agent's credentials: why (docs/turn-loop.md)
    login_needed: str = ""


# --- hive.admin.crash-watch.status --------------------------------------------


class WatchStatus(msgspec.Struct, kw_only=True):
    """What crash-watch currently sees."""

    seeded: bool  # the first poll is done: changes from now on are reported
    agents: dict[str, AgentState] = msgspec.field(default_factory=dict)  # name → state
    stuck: dict[str, StuckReason] = msgspec.field(default_factory=dict)  # name → reason
    reported: int = 0  # events reported since start
    polls: int = 0  # polls of lifecycle's registry completed since start


__all__ = [
    "AgentInfo",
    "AgentRequest",
    "AgentsReply",
    "AgentsRequest",
    "ApplyReply",
    "ApplyRequest",
    "ConfigReply",
    "CreateRequest",
    "DestroyRequest",
    "DraftInfo",
    "DraftRequest",
    "DraftsReply",
    "Heartbeat",
    "KeptState",
    "KeptStatesReply",
    "LogsReply",
    "LogsRequest",
    "NotesReply",
    "NotesRequest",
    "NotesVersion",
    "SpawnRequest",
    "TransientFlag",
    "WatchStatus",
]
