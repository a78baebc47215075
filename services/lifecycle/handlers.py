"""NATS handlers of lifecycle: decode, check names, call :class:`Lifecycle`."""

from __future__ import annotations

from hyperhive.common import subjects
from hyperhive.common.errors import Forbidden
from hyperhive.common.names import check_agent_name
from hyperhive.common.rpc import Call, Responder, manager_only
from hyperhive.common.wire.base import Empty, Ok
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    AgentsReply,
    AgentsRequest,
    ApplyReply,
    ApplyRequest,
    ConfigReply,
    CreateRequest,
    DestroyRequest,
    DraftInfo,
    DraftRequest,
    DraftsReply,
    KeptStatesReply,
    LogsReply,
    LogsRequest,
    NotesReply,
    NotesRequest,
    SpawnRequest,
)
from hyperhive.common.wire.node import NodesReply
from hyperhive.lifecycle.core import Lifecycle
from hyperhive.lifecycle.nodes import Nodes

PART = "lifecycle"


class Handlers:
    """One method per subject; identity and names are checked here."""

    def __init__(self, lc: Lifecycle, nodes: Nodes) -> None:
        self.lc = lc
        self.nodes = nodes

    def _name(self, name: str) -> str:
        """Any existing agent's name, the manager's included."""
        return check_agent_name(name, allow_manager=True)

    # --- shared by system and admin -------------------------------------------

    async def list(self, req: AgentsRequest, _call: Call) -> AgentsReply:
        return AgentsReply(agents=await self.lc.list(req.include_destroyed))

    async def drafts(self, _req: Empty, _call: Call) -> DraftsReply:
        return DraftsReply(drafts=await self.lc.drafts())

    # --- hive.system.lifecycle.* ----------------------------------------------

    async def get(self, req: AgentRequest, _call: Call) -> AgentInfo:
        return await self.lc.get(self._name(req.name))

    async def create(self, req: CreateRequest, _call: Call) -> AgentInfo:
        return await self.lc.create(check_agent_name(req.name), sha=req.sha, host=req.host)

    async def apply(self, req: ApplyRequest, _call: Call) -> ApplyReply:
        return await self.lc.apply(self._name(req.name))

    async def draft(self, req: DraftRequest, _call: Call) -> DraftInfo:
        return await self.lc.draft(check_agent_name(req.name))

    # --- hive.admin.lifecycle.* -----------------------------------------------

    async def spawn(self, req: SpawnRequest, _call: Call) -> AgentInfo:
        manager = bool(self.lc.manager) and req.name == self.lc.manager
        name = check_agent_name(req.name, allow_manager=manager)
        return await self.lc.create(
            name, reuse_state=req.reuse_state, manager=manager, host=req.host
        )

    async def start(self, req: AgentRequest, _call: Call) -> AgentInfo:
        return await self.lc.start(self._name(req.name))

    async def stop(self, req: AgentRequest, _call: Call) -> AgentInfo:
        return await self.lc.stop(self._name(req.name))

    async def kill(self, req: AgentRequest, _call: Call) -> AgentInfo:
        return await self.lc.stop(self._name(req.name), kill=True)

    async def restart(self, req: AgentRequest, _call: Call) -> AgentInfo:
        return await self.lc.restart(self._name(req.name))

    async def update(self, req: AgentRequest, _call: Call) -> AgentInfo:
        return await self.lc.update(self._name(req.name))

    async def destroy(self, req: DestroyRequest, _call: Call) -> Ok:
        await self.lc.destroy(self._name(req.name), purge=req.purge)
        return Ok()

    async def kept(self, _req: Empty, _call: Call) -> KeptStatesReply:
        return KeptStatesReply(kept=await self.lc.kept())

    async def purge(self, req: AgentRequest, _call: Call) -> Ok:
        await self.lc.purge(self._name(req.name))
        return Ok()

    async def logs(self, req: LogsRequest, _call: Call) -> LogsReply:
        return await self.lc.logs(self._name(req.name), req.lines, req.after, req.after_cursor)

    async def config(self, req: AgentRequest, _call: Call) -> ConfigReply:
        return await self.lc.config(self._name(req.name))

    async def notes(self, req: NotesRequest, _call: Call) -> NotesReply:
        return await self.lc.notes(self._name(req.name), req.history, req.version)

    async def list_nodes(self, _req: Empty, _call: Call) -> NodesReply:
        return NodesReply(nodes=await self.nodes.infos())

    # --- hive.agent.<manager>.{kill,start,restart,update} ---------------------

    async def manager_tool(self, req: AgentRequest, call: Call) -> AgentInfo:
        """A manager tool, served behind :func:`manager_only` (the manager calls)."""
        name = check_agent_name(req.name, allow_manager=True)
        if name == self.lc.manager:
            raise Forbidden(f"the manager cannot {call.verb} itself; ask the operator")
        match call.verb:
            case "kill":
                return await self.lc.stop(name, kill=True)
            case "start":
                return await self.lc.start(name)
            case "restart":
                return await self.lc.restart(name)
            case _:
                return await self.lc.update(name)

    async def register(self, responder: Responder) -> None:
        """Serves every lifecycle subject."""
        system = {
            "list": (AgentsRequest, self.list),
            "get": (AgentRequest, self.get),
            "create": (CreateRequest, self.create),
            "apply": (ApplyRequest, self.apply),
            "draft": (DraftRequest, self.draft),
            "drafts": (Empty, self.drafts),
        }
        for verb, (kind, handler) in system.items():
            await responder.serve(subjects.system(PART, verb), kind, handler)
        admin = {
            "list": (AgentsRequest, self.list),
            "spawn": (SpawnRequest, self.spawn),
            "start": (AgentRequest, self.start),
            "stop": (AgentRequest, self.stop),
            "restart": (AgentRequest, self.restart),
            "kill": (AgentRequest, self.kill),
            "update": (AgentRequest, self.update),
            "destroy": (DestroyRequest, self.destroy),
            "kept": (Empty, self.kept),
            "purge": (AgentRequest, self.purge),
            "logs": (LogsRequest, self.logs),
            "config": (AgentRequest, self.config),
            "notes": (NotesRequest, self.notes),
            "drafts": (Empty, self.drafts),
            "nodes": (Empty, self.list_nodes),
        }
        for verb, (kind, handler) in admin.items():
            await responder.serve(subjects.admin(PART, verb), kind, handler)
        if self.lc.manager:
            tool_handler = manager_only(self.manager_tool, self.lc.manager)
            for tool in subjects.LIFECYCLE_MANAGER_TOOLS:
                await responder.serve(subjects.agent_wildcard(tool), AgentRequest, tool_handler)
