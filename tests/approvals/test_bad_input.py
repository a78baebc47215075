"""Bad input gets a clear error and writes nothing: no row, no tag, no file."""

from __future__ import annotations

from pathlib import Path

import git
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
from hyperhive.common.wire.lifecycle import DraftInfo
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


def commit_special(repo_path: Path, kind: str) -> str:
    """A commit whose tree has a symlink or a submodule (gitlink), on top of HEAD."""
    with git.Repo(repo_path) as repo:
        if kind == "symlink":
            (repo_path / "passwd").symlink_to("/etc/passwd")
            repo.git.add("passwd")
        else:
            head = repo.head.commit.hexsha
            repo.git.update_index("--add", "--cacheinfo", f"160000,{head},vendor/lib")
        repo.git.commit("-m", f"add a {kind}", env=AUTHOR_ENV)
        sha = repo.head.commit.hexsha
        repo.git.reset("--hard", "HEAD~1")  # the commit stays reachable by sha only
        return sha


AUTHOR_ENV = {
    "GIT_AUTHOR_NAME": "hm1nd",
    "GIT_AUTHOR_EMAIL": "hm1nd@hive",
    "GIT_COMMITTER_NAME": "hm1nd",
    "GIT_COMMITTER_EMAIL": "hm1nd@hive",
}


@pytest.mark.parametrize("kind", ["symlink", "submodule"])
async def test_symlinks_and_submodules_are_refused(hive: Hive, kind: str) -> None:
    name, draft = agent_name("bi"), agent_name("bd")
    await hive.spawn(name)
    await hive.tool("request_spawn_draft", SpawnToolRequest(name=draft), DraftInfo)
    cases = (
        (name, ApplyCommitRequest, "request_apply_commit"),
        (draft, SpawnCommitRequest, "request_spawn_commit"),
    )
    for agent, request, tool in cases:
        applied = hive.paths(agent).applied
        tags = git_out(applied, "tag", "-l")
        sha = commit_special(hive.paths(agent).proposed, kind)
        with pytest.raises(BadRequest, match=f"has {kind}s 'passwd'|has {kind}s 'vendor/lib'"):
            await hive.tool(tool, request(name=agent, commit_ref=sha), ApprovalQueued)
        assert git_out(applied, "tag", "-l") == tags
        with pytest.raises(git.GitCommandError):  # not even fetched
            git_out(applied, "cat-file", "-e", sha)
    reply = await hive.admin("list", ApprovalsRequest(), ApprovalsReply)
    assert reply.approvals == []


def test_check_tree_names_every_offender(tmp_path: Path) -> None:
    repo_path = tmp_path / "r"
    with git.Repo.init(repo_path, initial_branch="main") as repo:
        (repo_path / "dir").mkdir()
        (repo_path / "dir" / "a.txt").write_text("x\n")
        repo.git.add("-A")
        repo.git.commit("-m", "plain", env=AUTHOR_ENV)
        plain = repo.head.commit.hexsha
        for n in range(7):
            (repo_path / f"l{n}").symlink_to("dir/a.txt")
        repo.git.add("-A")
        repo.git.update_index("--add", "--cacheinfo", f"160000,{plain},sub")
        repo.git.commit("-m", "links", env=AUTHOR_ENV)
        sha = repo.head.commit.hexsha
    gitops.check_tree(repo_path, plain, "proposed")  # files and directories are fine
    with pytest.raises(BadRequest) as err:
        gitops.check_tree(repo_path, sha, "proposed")
    assert "symlinks 'l0', 'l1', 'l2', 'l3', 'l4' and 2 more; submodules 'sub'" in str(err.value)
