"""Bad input gets a clear error and writes nothing: no row, no tag, no file."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperhive.approvals import gitops
from hyperhive.common.errors import BadRequest, NotFound
from hyperhive.common.wire.approvals import (
    AnswerRequest,
    ApplyCommitRequest,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    AskRequest,
    QuestionInfo,
    QuestionsReply,
    QuestionsRequest,
    SpawnCommitRequest,
    SpawnToolRequest,
)
from tests.approvals.conftest import Hive, agent_name, git_out

BAD_REFS = [
    "",
    "--upload-pack=touch {canary}",
    "-c",
    "--output={canary}",
    "../proposed",
    "main/../x",
    "main..HEAD",
    "main feature",
    "main\nfeature",
    "main\x00",
    "HEAD:agent.toml",
    "HEAD~1",
    "HEAD^",
    "main@{0}",
    "refs//heads/main",
    "/etc/passwd",
    "main.lock",
    "x" * 300,
]
BAD_NAMES = ["../etc", "Bad", "a b", "a\nb", "--upload-pack=x", "", "toolongname1", "hm1nd.x"]


async def nothing_written(hive: Hive, name: str, tags_before: str) -> None:
    reply = await hive.admin("list", ApprovalsRequest(), ApprovalsReply)
    assert reply.approvals == []
    assert git_out(hive.paths(name).applied, "tag", "-l") == tags_before


async def test_unsafe_refs_are_refused_before_git_sees_them(hive: Hive, tmp_path: Path) -> None:
    name = agent_name("bi")
    await hive.spawn(name)
    canary = tmp_path / "pwned"
    tags = git_out(hive.paths(name).applied, "tag", "-l")
    for template in BAD_REFS:
        ref = template.replace("{canary}", str(canary))
        for tool, req in (
            ("request_apply_commit", ApplyCommitRequest(name=name, commit_ref=ref)),
            ("request_spawn_commit", SpawnCommitRequest(name=name, commit_ref=ref)),
        ):
            with pytest.raises(BadRequest, match="commit_ref"):
                await hive.tool(tool, req, ApprovalQueued)
    assert not canary.exists()
    await nothing_written(hive, name, tags)


async def test_unknown_agent_and_missing_ref(hive: Hive) -> None:
    name = agent_name("bi")
    await hive.spawn(name)
    tags = git_out(hive.paths(name).applied, "tag", "-l")
    with pytest.raises(NotFound, match="unknown agent"):
        await hive.tool(
            "request_apply_commit",
            ApplyCommitRequest(name="nosuch", commit_ref="main"),
            ApprovalQueued,
        )
    for ref in ("no-such-branch", "deadbeef", "0" * 40):
        with pytest.raises(NotFound, match="no commit"):
            await hive.tool(
                "request_apply_commit",
                ApplyCommitRequest(name=name, commit_ref=ref),
                ApprovalQueued,
            )
    with pytest.raises(NotFound, match="no draft"):
        await hive.tool(
            "request_spawn_commit",
            SpawnCommitRequest(name="nosuch", commit_ref="main"),
            ApprovalQueued,
        )
    await nothing_written(hive, name, tags)


async def test_bad_agent_names(hive: Hive) -> None:
    for bad in BAD_NAMES:
        for tool, req in (
            ("request_apply_commit", ApplyCommitRequest(name=bad, commit_ref="main")),
            ("request_spawn", SpawnToolRequest(name=bad)),
            ("request_spawn_draft", SpawnToolRequest(name=bad)),
            ("request_spawn_commit", SpawnCommitRequest(name=bad, commit_ref="main")),
        ):
            with pytest.raises(BadRequest, match="agent name"):
                await hive.tool(tool, req, ApprovalQueued)
    for reserved in ("operator", "system", "hm1nd"):
        with pytest.raises(BadRequest, match="reserved"):
            await hive.tool("request_spawn", SpawnToolRequest(name=reserved), ApprovalQueued)
    reply = await hive.admin("list", ApprovalsRequest(), ApprovalsReply)
    assert reply.approvals == []


async def test_bad_questions_and_answers(hive: Hive) -> None:
    bad_questions = [
        (AskRequest(question="pick one", options=[]), "radio question needs at least one option"),
        (AskRequest(question="pick", options=[], multi=True), "checkbox question needs"),
        (AskRequest(question="x", multi=True), "multi needs options"),
        (AskRequest(question="   "), "question is empty"),
        (AskRequest(question="x", options=["a", "a"]), "distinct"),
        (AskRequest(question="x", options=["a", " "]), "non-empty"),
    ]
    for req, message in bad_questions:
        with pytest.raises(BadRequest, match=message):
            await hive.tool("ask_operator", req, ApprovalQueued)
    listed = await hive.admin("questions", QuestionsRequest(), QuestionsReply)
    assert listed.questions == []

    radio = await hive.tool(
        "ask_operator", AskRequest(question="which?", options=["a", "b"]), ApprovalQueued
    )
    free = await hive.tool("ask_operator", AskRequest(question="why?"), ApprovalQueued)
    bad_answers = [
        (radio.id, ["c"], "not an option"),
        (radio.id, ["a", "b"], "exactly one"),
        (radio.id, [], "exactly one"),
        (free.id, [""], "one non-empty text"),
        (free.id, ["a", "b"], "one non-empty text"),
    ]
    for qid, answer, message in bad_answers:
        with pytest.raises(BadRequest, match=message):
            await hive.admin("answer", AnswerRequest(id=qid, answer=answer), QuestionInfo)
    with pytest.raises(NotFound):
        await hive.admin("answer", AnswerRequest(id=radio.id + 100, answer=["a"]), QuestionInfo)
    listed = await hive.admin("questions", QuestionsRequest(answered=True), QuestionsReply)
    assert listed.questions == []


def test_check_ref_accepts_ordinary_refs() -> None:
    for ref in ("main", "feature/x-1", "v1.2", "a" * 40, "HEAD", "refs/heads/main"):
        assert gitops.check_ref(ref) == ref
