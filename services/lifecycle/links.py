"""How the control half reaches a node agent: in-process or over NATS.

Both links speak the node verbs of :mod:`hyperhive.common.wire.node`; the
in-process one (the ``hub`` node of ``hive serve lifecycle``) calls the
:class:`NodeAgent` directly, the remote one sends ``hive.node.<node>.<verb>``
and gets the node's error back as the same ``HiveError`` (a failed build is a
``BackendFailed`` on either).
"""

from __future__ import annotations

import abc
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from hyperhive.common import endpoints as E
from hyperhive.common import rpc
from hyperhive.common.config import Settings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import LogsReply, NotesReply
from hyperhive.common.wire.node import (
    NodeAgentRequest,
    NodeAgentSpec,
    NodeDeployRequest,
    NodeDestroyRequest,
    NodeExposeRequest,
    NodeKeptReply,
    NodeKeptRequest,
    NodeListReply,
    NodeLogsRequest,
    NodeNotesRequest,
    NodeStateReply,
    NodeStopRequest,
)
from hyperhive.lifecycle.node import NodeAgent

T = TypeVar("T", bound=msgspec.Struct)


class NodeLink(abc.ABC):
    """One node agent, as the control half calls it."""

    def __init__(self, node: str, settings: Settings) -> None:
        self.node = node
        self.quick_s = settings.node.request_timeout_s
        self.build_s = settings.node.build_timeout_s

    # the node shares the control half's data dir: no tree travels
    shared: bool = False

    @abc.abstractmethod
    async def call(self, endpoint: Endpoint[Any, T], req: msgspec.Struct, timeout: float) -> T:
        """Runs ``endpoint`` (one of :data:`~hyperhive.common.endpoints.NODE`) on the node."""

    async def create(
        self,
        agent: NodeAgentSpec,
        *,
        seed: str,
        tree: bytes | None,
        sha: str,
        fresh_state: bool = False,
    ) -> None:
        req = NodeDeployRequest(agent=agent, seed=seed, tree=tree, sha=sha, fresh_state=fresh_state)
        await self.call(E.NODE["create"], req, self.build_s)

    async def start(self, agent: NodeAgentSpec) -> None:
        await self.call(E.NODE["start"], NodeAgentRequest(agent=agent), self.build_s)

    async def stop(self, agent: NodeAgentSpec, *, kill: bool = False) -> None:
        req = NodeStopRequest(agent=agent, kill=kill)
        await self.call(E.NODE["stop"], req, self.build_s)

    async def restart(self, agent: NodeAgentSpec) -> None:
        await self.call(E.NODE["restart"], NodeAgentRequest(agent=agent), self.build_s)

    async def update(
        self, agent: NodeAgentSpec, *, running: bool, tree: bytes | None, sha: str
    ) -> None:
        req = NodeDeployRequest(agent=agent, running=running, tree=tree, sha=sha)
        await self.call(E.NODE["update"], req, self.build_s)

    async def destroy(
        self, agent: NodeAgentSpec, *, purge: bool = False, container: bool = True
    ) -> bool:
        """Returns whether the node keeps a state of the agent."""
        req = NodeDestroyRequest(agent=agent, purge=purge, container=container)
        reply = await self.call(E.NODE["destroy"], req, self.build_s)
        return reply.kept_state

    async def state(self, agent: NodeAgentSpec) -> NodeStateReply:
        return await self.call(E.NODE["state"], NodeAgentRequest(agent=agent), self.quick_s)

    async def logs(
        self, agent: NodeAgentSpec, lines: int, after: int | None, cursor: str
    ) -> LogsReply:
        req = NodeLogsRequest(agent=agent, lines=lines, after=after, after_cursor=cursor)
        return await self.call(E.NODE["logs"], req, self.quick_s)

    async def expose(self, name: str) -> None:
        await self.call(E.NODE["expose"], NodeExposeRequest(name=name), self.quick_s)

    async def list(self) -> NodeListReply:
        return await self.call(E.NODE["list"], Empty(), self.quick_s)

    async def notes(self, agent: NodeAgentSpec, history: bool, version: int | None) -> NotesReply:
        req = NodeNotesRequest(agent=agent, history=history, version=version)
        return await self.call(E.NODE["notes"], req, self.quick_s)

    async def kept(self, names: list[str]) -> NodeKeptReply:
        return await self.call(E.NODE["kept"], NodeKeptRequest(names=names), self.quick_s)


class LocalLink(NodeLink):
    """The node agent in this process."""

    shared = True

    def __init__(self, agent: NodeAgent, settings: Settings) -> None:
        super().__init__(agent.name, settings)
        self.agent = agent

    async def call(self, endpoint: Endpoint[Any, T], req: msgspec.Struct, timeout: float) -> T:
        method: Any = getattr(self.agent, endpoint.verb)
        return await method(req)  # type: ignore[no-any-return]


class RemoteLink(NodeLink):
    """A node agent on another host (or process), over NATS."""

    def __init__(self, node: str, settings: Settings, nc: NATS) -> None:
        super().__init__(node, settings)
        self.nc = nc

    async def call(self, endpoint: Endpoint[Any, T], req: msgspec.Struct, timeout: float) -> T:
        return await rpc.call(self.nc, endpoint, req, node=self.node, timeout=timeout)


__all__ = ["LocalLink", "NodeLink", "RemoteLink"]
