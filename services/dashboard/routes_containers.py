"""Containers, kept state and drafts: lifecycle actions and per-agent panels."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.enums import MediaType
from litestar.params import FromPath, FromQuery

from hyperhive.common import endpoints as E
from hyperhive.common.errors import BadRequest, HiveError
from hyperhive.common.names import check_agent_name, check_node_name
from hyperhive.common.wire.broker import InboxRequest
from hyperhive.common.wire.lifecycle import (
    AgentRequest,
    DestroyRequest,
    LogsRequest,
    SpawnRequest,
)
from hyperhive.dashboard.redact import mask
from hyperhive.dashboard.web import act, deps, field, form_fields, html, page_context

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
        host = field(fields, "host", "").strip()
        info = await deps(request).hive.act(
            E.SPAWN,
            SpawnRequest(name=name, reuse_state=reuse, host=check_node_name(host) if host else ""),
        )
        return f"Spawned {info.name}: {info.state} on {info.node}, port {info.port}"

    return await act(request, work(), section="containers", refresh=REFRESH)


@post("/agents/{name:str}/{verb:str}")
async def verb(
    request: Request[Any, Any, Any], name: FromPath[str], verb: FromPath[str]
) -> Response[Any]:
    fields = await form_fields(request)

    async def work() -> str:
        agent = _name(name)
        hive = deps(request).hive
        if verb != "destroy" and verb not in VERBS:
            raise BadRequest(f"unknown action {verb!r}")
        try:
            if verb == "destroy":
                purge = field(fields, "purge") == "on"
                await hive.act(E.DESTROY, DestroyRequest(name=agent, purge=purge))
                return f"Destroyed {agent}" + (
                    " and its state" if purge else " (its state is kept)"
                )
            info = await hive.act(E.ADMIN_CONTAINER[verb], AgentRequest(name=agent))
        except HiveError as exc:  # say which action was refused, and why
            raise type(exc)(f"Could not {verb} {agent}: {exc.message}") from exc
        return f"{verb}: {info.name} is {info.state}"

    return await act(request, work(), section="containers", refresh=REFRESH)


@post("/kept/{name:str}/purge")
async def purge(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
    async def work() -> str:
        agent = _name(name)
        await deps(request).hive.act(E.PURGE, AgentRequest(name=agent))
        return f"purged kept state of {agent}"

    return await act(request, work(), section="kept", refresh=REFRESH)


@post("/kept/{name:str}/respawn")
async def respawn(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
    async def work() -> str:
        agent = _name(name)
        info = await deps(request).hive.act(E.SPAWN, SpawnRequest(name=agent, reuse_state=True))
        return f"Spawned {info.name} again with its kept state: {info.state}"

    return await act(request, work(), section="kept", refresh=REFRESH)


async def _panel(request: Request[Any, Any, Any], template: str, **data: Any) -> Response[str]:
    return html(deps(request).render(template, **data, **page_context(request)))


@get("/agents/{name:str}/inbox")
async def inbox(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    """Pending (unacknowledged) messages of one agent."""
    try:
        reply = await deps(request).hive.read(E.INBOX, InboxRequest(agent=_name(name)))
    except HiveError as exc:
        return await _panel(request, "panel_inbox.html", messages=[], down=str(exc), name=name)
    return await _panel(request, "panel_inbox.html", messages=reply.messages, down=None, name=name)


@get("/agents/{name:str}/config")
async def config(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    """``agent.nix`` and ``agent.toml`` as deployed (applied/main)."""
    try:
        reply = await deps(request).hive.read(E.CONFIG, AgentRequest(name=_name(name)))
    except HiveError as exc:
        return await _panel(request, "panel_config.html", config=None, down=str(exc))
    return await _panel(request, "panel_config.html", config=reply, down=None)


@get("/agents/{name:str}/logs")
async def logs(
    request: Request[Any, Any, Any],
    name: FromPath[str],
    after: FromQuery[int | None] = None,
    cursor: FromQuery[str] = "",
) -> Response[Any]:
    """The agent's last log lines, or with ``after``/``cursor`` (from the
    previous reply) the lines since. The page polls this while the panel is
    open, which holds no connection (a browser allows only six per host).
    """
    query = LogsRequest(name=_name(name), lines=LOG_LINES, after=after, after_cursor=cursor)
    try:
        reply = await deps(request).hive.read(E.LOGS, query)
    except HiveError as exc:
        return Response({"down": str(exc)}, status_code=503, media_type=MediaType.JSON)
    # the process backend follows by byte offset, journald by cursor
    return Response(
        {
            "lines": [mask(line) for line in reply.lines],
            "after": reply.cursor if reply.cursor is not None else after,
            "cursor": reply.journal_cursor or cursor,
        },
        media_type=MediaType.JSON,
    )


HANDLERS = [spawn, verb, purge, respawn, inbox, config, logs]
