"""NATS handlers of lifecycle: decode, check names, call :class:`Lifecycle`."""

from __future__ import annotations

from typing import Any

from hyperhive.common import endpoints as E
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import Forbidden
from hyperhive.common.names import check_agent_name
from hyperhive.common.rpc import Call, Handler
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

    def _not_on_itself(self, verb: Handler) -> Handler:
        """An admin verb as the manager's tool (only the manager gets here: the
        responder guards it), which the manager may not turn on itself."""

        async def tool(req: AgentRequest, call: Call) -> AgentInfo:
            if check_agent_name(req.name, allow_manager=True) == self.lc.manager:
                raise Forbidden(f"the manager cannot {call.verb} itself; ask the operator")
            return await verb(req, call)

        return tool

    def endpoints(self) -> dict[Endpoint[Any, Any], Handler]:
        """Every lifecycle endpoint and its handler."""
        return {
            E.SYS_AGENTS: self.list,
            E.SYS_AGENT: self.get,
            E.CREATE: self.create,
            E.APPLY: self.apply,
            E.DRAFT: self.draft,
            E.SYS_DRAFTS: self.drafts,
            E.AGENTS: self.list,
            E.SPAWN: self.spawn,
            E.ADMIN_CONTAINER["start"]: self.start,
            E.ADMIN_CONTAINER["stop"]: self.stop,
            E.ADMIN_CONTAINER["restart"]: self.restart,
            E.ADMIN_CONTAINER["kill"]: self.kill,
            E.ADMIN_CONTAINER["update"]: self.update,
            E.DESTROY: self.destroy,
            E.KEPT: self.kept,
            E.PURGE: self.purge,
            E.LOGS: self.logs,
            E.CONFIG: self.config,
            E.NOTES: self.notes,
            E.DRAFTS: self.drafts,
            E.NODES: self.list_nodes,
            # served whether or not this hive has a manager: anyone else hears
            # ``forbidden`` (the responder's guard)
            E.KILL: self._not_on_itself(self.kill),
            E.START: self._not_on_itself(self.start),
            E.RESTART: self._not_on_itself(self.restart),
            E.UPDATE: self._not_on_itself(self.update),
        }
