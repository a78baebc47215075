"""Containers, K3PT ST4T3 and drafts: lifecycle actions and per-agent panels."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from hyperhive.common.errors import BadRequest, HiveError
from hyperhive.common.names import check_agent_name
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import HistoryReply, InboxRequest
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    ConfigReply,
    DestroyRequest,
    LogsReply,
    LogsRequest,
    SpawnRequest,
)
from hyperhive.dashboard.redact import mask
from hyperhive.dashboard.web import Deps, act, deps, field, form_fields, html, page_context, sse

VERBS = ("start", "stop", "restart", "kill", "update")
REFRESH = ("containers", "kept", "drafts", "flow", "telemetry")
LOG_LINES = 200


def _name(name: str) -> str:
    return check_agent_name(name, allow_manager=True)


@post("/agents/spawn")
async def spawn(request: Request[Any, Any, Any]) -> Response[Any]:
    fields = await form_fields(request)

    async def work() -> str:
        name = check_agent_name(field(fields, "name"))
        reuse = field(fields, "reuse_state", "on") == "on"
        info = await deps(request).hive.act(
            "lifecycle", "spawn", SpawnRequest(name=name, reuse_state=reuse), AgentInfo
        )
        return f"sp4wn3d {info.name}: {info.state} on port {info.port}"

    return await act(request, work(), section="containers", refresh=REFRESH)


@post("/agents/{name:str}/{verb:str}")
async def verb(
    request: Request[Any, Any, Any], name: FromPath[str], verb: FromPath[str]
) -> Response[Any]:
    fields = await form_fields(request)

    async def work() -> str:
        agent = _name(name)
        hive = deps(request).hive
        if verb == "destroy":
            purge = field(fields, "purge") == "on"
            await hive.act("lifecycle", "destroy", DestroyRequest(name=agent, purge=purge), Ok)
            return f"destr0y3d {agent}" + (" (state purged)" if purge else " (state kept)")
        if verb not in VERBS:
            raise BadRequest(f"unknown action {verb!r}")
        info = await hive.act("lifecycle", verb, AgentRequest(name=agent), AgentInfo)
        return f"{verb}: {info.name} is {info.state}"

    return await act(request, work(), section="containers", refresh=REFRESH)


@post("/kept/{name:str}/purge")
async def purge(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
    async def work() -> str:
        agent = _name(name)
        await deps(request).hive.act("lifecycle", "purge", AgentRequest(name=agent), Ok)
        return f"purged kept state of {agent}"

    return await act(request, work(), section="kept", refresh=REFRESH)


@post("/kept/{name:str}/respawn")
async def respawn(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
    async def work() -> str:
        agent = _name(name)
        info = await deps(request).hive.act(
            "lifecycle", "spawn", SpawnRequest(name=agent, reuse_state=True), AgentInfo
        )
        return f"re-sp4wn3d {info.name} with its kept state: {info.state}"

    return await act(request, work(), section="kept", refresh=REFRESH)


async def _panel(request: Request[Any, Any, Any], template: str, **data: Any) -> Response[str]:
    return html(deps(request).render(template, **data, **page_context(request)))


@get("/agents/{name:str}/inbox")
async def inbox(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    """Pending (unacknowledged) messages of one agent."""
    try:
        reply = await deps(request).hive.read(
            "broker", "inbox", InboxRequest(agent=_name(name)), HistoryReply
        )
    except HiveError as exc:
        return await _panel(request, "panel_inbox.html", messages=[], down=str(exc), name=name)
    return await _panel(request, "panel_inbox.html", messages=reply.messages, down=None, name=name)


@get("/agents/{name:str}/config")
async def config(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    """``agent.nix`` and ``agent.toml`` as deployed (applied/main)."""
    try:
        reply = await deps(request).hive.read(
            "lifecycle", "config", AgentRequest(name=_name(name)), ConfigReply
        )
    except HiveError as exc:
        return await _panel(request, "panel_config.html", config=None, down=str(exc))
    return await _panel(request, "panel_config.html", config=reply, down=None)


async def _follow_logs(d: Deps, name: str) -> AsyncIterator[bytes]:
    """The last lines, then new ones as lifecycle's cursor moves."""
    yield b"retry: 3000\n\n"
    request = LogsRequest(name=name, lines=LOG_LINES)
    while not d.hub.closed:
        try:
            reply = await d.hive.read("lifecycle", "logs", request, LogsReply)
        except HiveError as exc:
            yield _frame("down", str(exc))
        else:
            # the process backend follows by byte offset, journald by cursor
            request = LogsRequest(
                name=name,
                lines=LOG_LINES,
                after=reply.cursor if reply.cursor is not None else request.after,
                after_cursor=reply.journal_cursor or request.after_cursor,
            )
            if reply.lines:
                yield _frame("lines", [mask(line) for line in reply.lines])
            else:
                yield b": idle\n\n"  # also notices a closed browser
        await asyncio.sleep(d.settings.logs_poll_s)


def _frame(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@get("/agents/{name:str}/logs")
async def logs(request: Request[Any, Any, Any], name: FromPath[str]) -> Stream:
    """The agent's log, following live (SSE)."""
    return sse(_follow_logs(deps(request), _name(name)))


HANDLERS = [spawn, verb, purge, respawn, inbox, config, logs]
