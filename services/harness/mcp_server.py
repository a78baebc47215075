"""``hive harness mcp``: the stdio MCP server ``hyperhive`` that claude talks to.

Each tool call is one NATS request with the agent's own credentials (seed
file, inbox prefix ``_INBOX.<n>``): the agent can only speak as itself, and the
service learns who calls from the subject. A service error comes back to
claude as a tool error carrying the service's message. The manager tools are
offered only to ``hm1nd`` (and the services refuse them from anyone else).

Tracing: the harness gives the running turn's trace context in the
``TRACEPARENT`` environment variable (W3C ``traceparent``); every tool call's
NATS request is a child of it, so a send can be followed from the sender's
turn through the broker to the recipient's turn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, get_type_hints

import msgspec
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.context import Context

from hyperhive.common import endpoints, rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import ConfigError, HiveError
from hyperhive.common.natsconn import connect
from hyperhive.common.telemetry import setup_tracing, span, traceparent_context
from hyperhive.common.wire.broker import AckRequest, RecvRequest, SendRequest, StatusRequest
from hyperhive.harness.tools import SERVER_NAME, TRACEPARENT_ENV

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

MAX_RECV_WAIT_S = 60.0  # the broker caps a long poll at this anyway
R = TypeVar("R", bound=msgspec.Struct)


def _plain(value: msgspec.Struct | dict[str, Any]) -> dict[str, Any]:
    """A reply as a plain dict: the tool's structured result (and its JSON text)."""
    return value if isinstance(value, dict) else msgspec.to_builtins(value)


class Bridge:
    """One NATS connection with the agent's credentials, opened on first use.

    ``parent``: the turn's trace context; each call's request is its child.
    """

    def __init__(self, settings: Settings, parent: Context | None = None) -> None:
        self.settings = settings
        self.agent = settings.harness.agent
        self.parent = parent
        self._nc: NATS | None = None
        self._lock = asyncio.Lock()

    async def nc(self) -> NATS:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                try:
                    self._nc = await connect(
                        self.settings.nats, name=f"hive-mcp-{self.agent}", attempts=3
                    )
                except HiveError as exc:
                    raise ToolError(f"{exc.code}: {exc.message}") from None
            return self._nc

    async def call(
        self,
        endpoint: Endpoint[Any, R],
        payload: msgspec.Struct,
        timeout: float | None = None,
    ) -> R:
        """``endpoint`` as this agent → the reply, or a ToolError with the service's message."""
        nc = await self.nc()
        with span(tracer, f"tool {endpoint.verb}", parent=self.parent, kind=trace.SpanKind.SERVER):
            try:
                return await rpc.call(
                    nc,
                    endpoint,
                    payload,
                    agent=self.agent,
                    timeout=timeout or self.settings.nats.request_timeout_s,
                )
            except HiveError as exc:
                raise ToolError(f"{exc.code}: {exc.message}") from None

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


def build_server(settings: Settings, traceparent: str = "") -> tuple[MCPServer, Bridge]:
    """The MCP server for ``settings.harness.agent`` and its NATS bridge
    (``traceparent``: the turn's trace context, see the module docstring)."""
    bridge = Bridge(settings, traceparent_context(traceparent))
    server: MCPServer = MCPServer(
        SERVER_NAME,
        instructions=(
            "hyperhive: message other agents, the manager (hm1nd) and the operator; "
            "tool results are JSON objects."
        ),
    )

    @server.tool()
    async def send(to: str, body: str) -> dict[str, Any]:
        """Send a message to an agent by name, to hm1nd (the manager) or to "operator".

        Returns {"id", "ts"} once the message is stored; delivery is at least once.
        """
        r = await bridge.call(endpoints.SEND, SendRequest(to=to, body=body))
        return _plain(r)

    @server.tool()
    async def recv(wait_seconds: float = 0) -> dict[str, Any]:
        """Take the next message from your inbox now (acknowledged at once).

        Waits up to wait_seconds (max 60) for one to arrive. Returns the message
        {"id", "from", "body", "redelivered", "event"} or {"empty": true}.
        """
        if not 0 <= wait_seconds <= MAX_RECV_WAIT_S:
            raise ToolError(f"wait_seconds must be between 0 and {MAX_RECV_WAIT_S:g}")
        wait_ms = int(wait_seconds * 1000)
        timeout = settings.nats.request_timeout_s + wait_seconds
        r = await bridge.call(endpoints.RECV, RecvRequest(wait_ms=wait_ms), timeout)
        if r.message is None:
            return _plain({"empty": True})
        m = r.message
        await bridge.call(endpoints.ACK, AckRequest(id=m.id))
        return _plain(
            {
                "id": m.id,
                "from": m.sender,
                "body": m.body,
                "ts": m.ts,
                "redelivered": m.redelivered,
                "event": msgspec.to_builtins(m.event) if m.event is not None else None,
            }
        )

    @server.tool()
    async def message_status(id: int) -> dict[str, Any]:
        """The delivery receipt of a message you sent or received (by its id)."""
        r = await bridge.call(endpoints.STATUS, StatusRequest(id=id))
        return _plain(r)

    if bridge.agent == subjects.MANAGER:
        _add_manager_tools(server, bridge)
    return server, bridge


def _add_manager_tools(server: MCPServer, bridge: Bridge) -> None:
    for endpoint in endpoints.MANAGER_ENDPOINTS:
        server.add_tool(
            _endpoint_tool(bridge, endpoint), name=endpoint.verb, description=endpoint.doc
        )


def _endpoint_tool(
    bridge: Bridge, endpoint: Endpoint[msgspec.Struct, msgspec.Struct]
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A tool whose arguments are the fields of the endpoint's request Struct
    (the input schema claude sees is derived from them) and whose result is
    the endpoint's reply."""
    hints = get_type_hints(endpoint.request)
    params = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if f.required else f.default,
            annotation=hints[f.name],
        )
        for f in msgspec.structs.fields(endpoint.request)
    ]

    async def tool(**arguments: Any) -> dict[str, Any]:
        try:
            req = msgspec.convert(arguments, endpoint.request)
        except msgspec.ValidationError as exc:
            raise ToolError(f"bad_request: {exc}") from None
        return _plain(await bridge.call(endpoint, req))

    tool.__signature__ = inspect.Signature(params, return_annotation=dict[str, Any])  # type: ignore[attr-defined]
    tool.__name__ = tool.__qualname__ = endpoint.verb
    return tool


def run(settings: Settings) -> None:
    """``hive harness mcp``: the server on stdin/stdout until claude closes it.

    Raises:
        ConfigError: no agent to speak as.
    """
    if not settings.harness.agent:
        raise ConfigError("HIVE_HARNESS_AGENT is not set")
    # stdout carries the MCP protocol: only an exporter that does not print
    if settings.telemetry.exporter == "otlp":
        setup_tracing(settings.telemetry, "harness-mcp")
    server, _bridge = build_server(settings, os.environ.get(TRACEPARENT_ENV, ""))
    server.run()
