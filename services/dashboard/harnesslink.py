"""The dashboard → harness hop: one agent page's API, reached for the operator.

This module is the only place that knows how the hop travels. An agent on
the dashboard's own node (``node.name``, ``HIVE_NODE_NAME``) is reached on
its page socket (:class:`~hyperhive.common.pagesocket.PageSocket`: a unix
socket in the agent's run dir, opened without following symlinks); an agent
on another node over NATS, through that node's page relay
(:mod:`hyperhive.dashboard.pagenats`). Either way the routes get the same
two things: :meth:`HarnessLink.client` for HTTP (JSON and SSE) and
:meth:`HarnessLink.terminal` for the terminal, and check what comes back
the same way. The name is checked with the agent-name rules first.

Which node an agent is on comes from lifecycle's registry (``AgentInfo.node``,
through ``hive.admin.lifecycle.list``), remembered for ``NODE_CACHE_S``. An
agent the registry does not know (or a registry that does not answer, with
nothing remembered) is looked for on this node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import httpx
from nats.aio.client import Client as NATS

from hyperhive.common import endpoints as E
from hyperhive.common import rpc
from hyperhive.common.config import Settings
from hyperhive.common.errors import HiveError
from hyperhive.common.names import check_agent_name
from hyperhive.common.pagesocket import BASE_URL, CONNECT_TIMEOUT_S, READ_TIMEOUT_S, PageSocket
from hyperhive.common.wire.lifecycle import AgentsRequest
from hyperhive.dashboard.pagenats import NatsPageTransport, open_terminal

__all__ = ["HarnessLink", "Terminal"]

log = logging.getLogger(__name__)

NODE_CACHE_S = 5.0  # how long an agent's node is taken as known
NODE_LOOKUP_TIMEOUT_S = 2.0


class Terminal(Protocol):
    """A terminal as the route uses it (a websockets connection is one)."""

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str) -> None: ...

    async def close(self) -> None: ...


class HarnessLink:
    """Opens connections to agents' page APIs, on this node or another."""

    def __init__(self, settings: Settings, nc: NATS | None = None) -> None:
        self._local = PageSocket(settings)
        self._nc = nc
        self.node = settings.node.name
        self._nodes: dict[str, str] = {}
        self._nodes_at = float("-inf")

    async def node_of(self, name: str) -> str:
        """The node agent ``name`` runs on, as far as the registry says."""
        if self._nc is None:
            return self.node
        if time.monotonic() - self._nodes_at > NODE_CACHE_S:
            try:
                reply = await rpc.call(
                    self._nc, E.AGENTS, AgentsRequest(), timeout=NODE_LOOKUP_TIMEOUT_S
                )
            except HiveError as exc:
                # asked again after NODE_CACHE_S, not on every call meanwhile
                log.info("agents' nodes unknown (lifecycle: %s): using what was known", exc)
            else:
                self._nodes = {a.name: a.node for a in reply.agents}
            self._nodes_at = time.monotonic()
        return self._nodes.get(name, self.node)

    async def client(self, name: str, *, stream: bool = False) -> httpx.AsyncClient:
        """An HTTP client of agent ``name``'s page API (close it after use).

        ``stream``: no read timeout (the SSE tail pings every 15 s).

        Raises:
            BadRequest: not a valid agent name.
            NotFound, Unavailable: on this node, no page socket (see PageSocket).
        """
        agent = check_agent_name(name, allow_manager=True)
        node = await self.node_of(agent)
        if node == self.node or self._nc is None:
            return self._local.client(agent, stream=stream)
        read = None if stream else READ_TIMEOUT_S
        return httpx.AsyncClient(
            transport=NatsPageTransport(self._nc, node, agent),
            base_url=BASE_URL,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=read),
            follow_redirects=False,
            trust_env=False,
        )

    async def terminal(self, name: str, cols: int, rows: int) -> Terminal:
        """A terminal on agent ``name``'s side (a new shell there).

        Raises:
            Unavailable: the page (or its node's relay) does not answer.
        """
        agent = check_agent_name(name, allow_manager=True)
        node = await self.node_of(agent)
        if node == self.node or self._nc is None:
            return await self._local.terminal(agent, cols, rows)
        return await open_terminal(self._nc, node, agent, cols, rows)
