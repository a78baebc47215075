"""ask_operator: free text, radio and checkboxes; answers reach the manager."""

from __future__ import annotations

import uuid

import pytest

from hyperhive.common.errors import Conflict
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApprovalQueued,
    AskRequest,
    QuestionInfo,
    QuestionsReply,
    QuestionsRequest,
)
from hyperhive.common.wire.events import OperatorAnswered
from tests.approvals.conftest import Hive, hive_events


async def test_three_forms_answered_into_the_managers_inbox(hive: Hive) -> None:
    tag = uuid.uuid4().hex[:8]
    free = await hive.tool("ask_operator", AskRequest(question=f"why? {tag}"), ApprovalQueued)
    radio = await hive.tool(
        "ask_operator",
        AskRequest(question=f"which model? {tag}", options=["haiku", "sonnet"]),
        ApprovalQueued,
    )
    boxes = await hive.tool(
        "ask_operator",
        AskRequest(question=f"which tools? {tag}", options=["Read", "Bash", "Edit"], multi=True),
        ApprovalQueued,
    )
    open_ = await hive.admin("questions", QuestionsRequest(answered=False), QuestionsReply)
    assert [(q.id, q.options, q.multi) for q in open_.questions] == [
        (boxes.id, ["Read", "Bash", "Edit"], True),
        (radio.id, ["haiku", "sonnet"], False),
        (free.id, None, False),
    ]

    answers = {free.id: ["because\nreasons"], radio.id: ["sonnet"], boxes.id: ["Edit", "Read"]}
    for qid, answer in answers.items():
        info = await hive.admin("answer", AnswerRequest(id=qid, answer=answer), QuestionInfo)
        assert info.answer == answer and info.answered_at
    for qid, answer in answers.items():
        ev = await hive.event(OperatorAnswered, question_id=qid)
        assert ev.answer == answer and tag in ev.question

    with pytest.raises(Conflict, match="already answered"):
        await hive.admin("answer", AnswerRequest(id=radio.id, answer=["haiku"]), QuestionInfo)
    assert (
        await hive.admin("questions", QuestionsRequest(answered=False), QuestionsReply)
    ).questions == []

    events = await hive_events(
        hive.service, "question.>", lambda e: tag in str(e.data.get("question")), 6
    )
    assert sorted(e.kind for e in events) == ["question.answered"] * 3 + ["question.asked"] * 3
    assert all(e.agent == "hm1nd" for e in events)


async def test_checkboxes_may_be_answered_with_none(hive: Hive) -> None:
    q = await hive.tool(
        "ask_operator",
        AskRequest(question="any extras?", options=["a", "b"], multi=True),
        ApprovalQueued,
    )
    info = await hive.admin("answer", AnswerRequest(id=q.id, answer=[]), QuestionInfo)
    assert info.answer == []
    assert (await hive.event(OperatorAnswered, question_id=q.id)).answer == []
