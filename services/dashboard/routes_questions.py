"""Questions from ``ask_operator``: free text, one choice (radio) or several."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import FromPath

from hyperhive.common import endpoints as E
from hyperhive.common.errors import BadRequest
from hyperhive.common.wire.approvals import AnswerRequest
from hyperhive.dashboard.web import act, decided_by, deps, field, form_fields

REFRESH = ("questions",)


@post("/questions/{question_id:int}/answer")
async def answer(request: Request[Any, Any, Any], question_id: FromPath[int]) -> Response[Any]:
    """A form posts ``choice`` (radio/checkbox, several for multi) or ``answer`` (text)."""
    fields = await form_fields(request)

    async def work() -> str:
        chosen = [c for c in fields.get("choice", []) if c]
        text = field(fields, "answer")
        values = chosen or ([text] if text else [])
        if not values:
            raise BadRequest("pick an option or write an answer")
        req = AnswerRequest(id=question_id, answer=values, decided_by=decided_by(request))
        info = await deps(request).hive.act(E.ANSWER, req)
        return f"answered question #{info.id}: {', '.join(info.answer or values)}"

    return await act(request, work(), section="questions", refresh=REFRESH)


HANDLERS = [answer]
