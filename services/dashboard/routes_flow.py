"""Message flow: live SSE from the event hub, and an operator send form."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromQuery
from litestar.response import Stream

from hyperhive.common import endpoints as E
from hyperhive.common import sse, subjects
from hyperhive.common.errors import BadRequest
from hyperhive.common.names import check_agent_name
from hyperhive.common.wire.broker import AdminSendRequest
from hyperhive.dashboard.web import act, deps, field, form_fields

BACKFILL = 200  # flow items a new client gets before live ones


@get("/flow/stream")
async def flow_stream(
    request: Request[Any, Any, Any], agent: FromQuery[str | None] = None
) -> Stream:
    """Messages between agents, backfilled, then live.

    ``agent`` keeps messages that agent sent or received. A reconnecting
    EventSource sends ``Last-Event-ID`` (a HIVE_EVENTS sequence) and gets only
    what it missed.
    """
    hub = deps(request).hub
    last = request.headers.get("last-event-id", "")
    if last.isdigit():
        cursor = hub.flow.ring.after_key(int(last))
    else:
        cursor = hub.flow.ring.tail(BACKFILL)
    return sse.response(hub.stream(hub.flow, cursor, agent.strip() if agent else None))


@post("/messages/send")
async def send(request: Request[Any, Any, Any]) -> Response[Any]:
    fields = await form_fields(request)

    async def work() -> str:
        to = field(fields, "to")
        body = field(fields, "body")
        if to != subjects.OPERATOR:
            check_agent_name(to, allow_manager=True)
        if not body:
            raise BadRequest("the message is empty")
        reply = await deps(request).hive.act(E.ADMIN_SEND, AdminSendRequest(to=to, body=body))
        return f"sent message #{reply.id} to {to}"

    return await act(request, work(), section="flow", refresh=())


HANDLERS = [flow_stream, send]
