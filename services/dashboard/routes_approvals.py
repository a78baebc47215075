"""Approvals: ◆ APPR0VE, deny with a note."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import FromPath

from hyperhive.common import endpoints as E
from hyperhive.common.wire.approvals import ApprovalInfo, ApproveRequest, DenyRequest
from hyperhive.dashboard.web import act, decided_by, deps, field, form_fields

REFRESH = ("approvals", "containers", "drafts")


def _outcome(info: ApprovalInfo) -> str:
    text = f"approval #{info.id} ({info.kind} {info.agent}): {info.state}"
    if info.tag:
        text += f", tagged {info.tag}"
    if info.error:
        text += f": {info.error.strip().splitlines()[-1] if info.error.strip() else ''}"
    return text


@post("/approvals/{approval_id:int}/approve")
async def approve(request: Request[Any, Any, Any], approval_id: FromPath[int]) -> Response[Any]:
    async def work() -> str:
        info = await deps(request).hive.act(
            E.APPROVE,
            ApproveRequest(id=approval_id, decided_by=decided_by(request)),
        )
        return _outcome(info)

    return await act(request, work(), section="approvals", refresh=REFRESH)


@post("/approvals/{approval_id:int}/deny")
async def deny(request: Request[Any, Any, Any], approval_id: FromPath[int]) -> Response[Any]:
    fields = await form_fields(request)

    async def work() -> str:
        note = field(fields, "note")
        req = DenyRequest(id=approval_id, note=note, decided_by=decided_by(request))
        info = await deps(request).hive.act(E.DENY, req)
        return _outcome(info)

    return await act(request, work(), section="approvals", refresh=REFRESH)


HANDLERS = [approve, deny]
