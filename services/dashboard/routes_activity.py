"""The activity timeline as JSON, and one approval's diff as a page (what a
timeline entry links to)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from hyperhive.common import activity
from hyperhive.common import endpoints as E
from hyperhive.common.errors import BadRequest
from hyperhive.common.timeparse import parse_since
from hyperhive.common.wire.approvals import ApprovalsRequest
from hyperhive.dashboard import sections
from hyperhive.dashboard.web import deps, html, page_context

MAX_LIMIT = 2000


@get("/api/activity")
async def activity_json(request: Request[Any, Any, Any]) -> Response[Any]:
    """``?since=`` (unix, ISO or an age like 2h), ``kind=`` (repeatable or
    comma-separated), ``agent=``, ``limit=``: the timeline, oldest first."""
    q = request.query_params
    try:
        since = parse_since(q["since"]) if q.get("since") else None
        limit = int(q.get("limit") or 200)
    except ValueError:
        raise BadRequest("limit must be a number") from None
    kinds = [k for v in q.getall("kind", []) for k in v.split(",")]
    entries = await activity.read(
        deps(request).hub.js,
        since=since,
        kinds=kinds,
        agent=q.get("agent") or "",
        limit=max(1, min(limit, MAX_LIMIT)),
    )
    return Response({"entries": msgspec.to_builtins(entries), "now": time.time()})


@get("/approvals/{approval_id:int}/diff")
async def approval_diff(
    request: Request[Any, Any, Any], approval_id: FromPath[int]
) -> Response[str]:
    """One approval (any state) with its diff, who decided and when."""
    d = deps(request)
    reply = await d.hive.read(E.APPROVALS_LIST, ApprovalsRequest(limit=1000))
    found = [a for a in reply.approvals if a.id == approval_id]
    if not found:
        raise NotFoundException(f"no approval {approval_id}")
    proposal = await sections.proposal(d.hive, found[0])
    return html(d.render("approval_diff.html", p=proposal, **page_context(request)))


HANDLERS = [activity_json, approval_diff]
