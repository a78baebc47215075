"""request_apply_commit → diff → approve | deny, against real git repos."""

from __future__ import annotations

import git
import pytest

from hyperhive.approvals import gitops
from hyperhive.common.errors import Conflict, Internal
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    DenyRequest,
    DiffReply,
)
from hyperhive.common.wire.events import ApprovalResolved
from tests.approvals.conftest import (
    Hive,
    agent_name,
    commit_files,
    git_out,
    head_state,
    hive_events,
)

GOOD_TOML = 'model = "claude-sonnet-4-5"\nallowed_tools = ["Read"]\n'
BAD_TOML = "model = 5\n"


async def propose(hive: Hive, name: str, files: dict[str, str | None]) -> ApprovalQueued:
    sha = hive.commit(name, files)
    queued = await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref=sha), ApprovalQueued
    )
    assert queued.fetched_sha == sha
    return queued


async def test_approved_commit_is_deployed_and_main_fast_forwards(hive: Hive) -> None:
    name = agent_name()
    await hive.spawn(name)
    applied = hive.paths(name).applied
    before = gitops.main_sha(applied)
    queued = await propose(
        hive, name, {"agent.toml": GOOD_TOML, "notes/readme.md": "hello\n", "agent.nix": None}
    )

    diff = await hive.admin("diff", ApprovalIdRequest(id=queued.id), DiffReply)
    assert diff.sha == queued.fetched_sha
    assert sorted(diff.files) == ["agent.nix", "agent.toml", "notes/readme.md"]
    assert "+hello" in diff.diff and "claude-sonnet-4-5" in diff.diff

    # agent.nix deleted → the real build would fail; keep it for the deploy
    queued = await propose(hive, name, {"agent.nix": "{ ... }: { }\n"})
    info = await hive.admin("approve", ApprovalIdRequest(id=queued.id), ApprovalInfo)
    assert info.state == "deployed"
    assert info.tag == f"deployed/{queued.id}"
    assert gitops.main_sha(applied) == queued.fetched_sha
    assert git_out(applied, "merge-base", "--is-ancestor", before, "main") == ""
    assert (applied / "agent.nix").read_text() == "{ ... }: { }\n"
    assert (applied / "notes" / "readme.md").read_text() == "hello\n"
    assert head_state(applied) == ("refs/heads/main", queued.fetched_sha)
    assert git_out(applied, "status", "--porcelain") == ""
    # the manager's read-only mirror is this repo: what shipped is there
    assert git_out(applied, "show", f"deployed/{queued.id}:agent.toml") == GOOD_TOML.strip()

    ev = await hive.event(ApprovalResolved, approval_id=queued.id)
    assert (ev.state, ev.tag, ev.sha) == ("deployed", f"deployed/{queued.id}", queued.fetched_sha)
    # HIVE_EVENTS: each step of this approval, the start of the build included
    events = await hive_events(
        hive.service, "approval.>", lambda e: (e.agent, e.data.get("id")) == (name, queued.id), 3
    )
    assert [(e.kind, e.data["state"]) for e in events] == [
        ("approval.queued", "pending"),
        ("approval.approved", "approved"),
        ("approval.resolved", "deployed"),
    ]
    assert events[1].data["sha"] == events[2].data["sha"] == queued.fetched_sha
    assert events[2].data["tag"] == f"deployed/{queued.id}"

    # the first proposal now diffs against the new main
    listed = await hive.admin("list", ApprovalsRequest(state="pending"), ApprovalsReply)
    assert [a.id for a in listed.approvals] == [queued.id - 1]


async def test_failed_build_rolls_back_main_and_tree(hive: Hive) -> None:
    name = agent_name()
    await hive.spawn(name)
    applied = hive.paths(name).applied
    main_before = gitops.main_sha(applied)
    toml_before = (applied / "agent.toml").read_text()
    queued = await propose(hive, name, {"agent.toml": BAD_TOML, "extra.txt": "x\n"})

    info = await hive.admin("approve", ApprovalIdRequest(id=queued.id), ApprovalInfo)

    assert info.state == "failed"
    assert "model" in info.error
    assert info.tag == f"failed/{queued.id}"
    assert gitops.main_sha(applied) == main_before
    assert head_state(applied) == ("refs/heads/main", main_before)
    assert (applied / "agent.toml").read_text() == toml_before
    assert not (applied / "extra.txt").exists()
    assert git_out(applied, "status", "--porcelain") == ""
    assert gitops.tag_sha(applied, f"failed/{queued.id}") == queued.fetched_sha
    assert "model" in gitops.tag_message(applied, f"failed/{queued.id}")
    assert not gitops.tag_sha(applied, f"deployed/{queued.id}")
    ev = await hive.event(ApprovalResolved, approval_id=queued.id)
    assert ev.state == "failed" and "model" in ev.error
    events = await hive_events(
        hive.service, "approval.>", lambda e: (e.agent, e.data.get("id")) == (name, queued.id), 3
    )
    assert [(e.kind, e.data["state"]) for e in events] == [
        ("approval.queued", "pending"),
        ("approval.approved", "approved"),
        ("approval.resolved", "failed"),
    ]
    assert events[2].data["tag"] == f"failed/{queued.id}" and "model" in events[2].data["error"]


async def test_deny_tags_the_note(hive: Hive) -> None:
    name = agent_name()
    await hive.spawn(name)
    applied = hive.paths(name).applied
    main_before = gitops.main_sha(applied)
    queued = await propose(hive, name, {"agent.toml": GOOD_TOML})
    note = "no: keep the default model\nsee the budget"

    info = await hive.admin("deny", DenyRequest(id=queued.id, note=note), ApprovalInfo)

    assert (info.state, info.note, info.tag) == ("denied", note, f"denied/{queued.id}")
    assert gitops.message_body(gitops.tag_message(applied, f"denied/{queued.id}")) == note
    assert git_out(applied, "cat-file", "-t", f"refs/tags/denied/{queued.id}") == "tag"
    assert gitops.main_sha(applied) == main_before
    ev = await hive.event(ApprovalResolved, approval_id=queued.id)
    assert (ev.state, ev.note) == ("denied", note)
    with pytest.raises(Conflict, match="already denied"):
        await hive.admin("approve", ApprovalIdRequest(id=queued.id), ApprovalInfo)
    events = await hive_events(hive.service, "approval.>", lambda e: e.agent == name, 2)
    assert [e.kind for e in events] == ["approval.queued", "approval.resolved"]
    assert events[0].data["sha"] == queued.fetched_sha
    assert (events[1].data["state"], events[1].data["note"]) == ("denied", note)


async def test_proposal_is_immutable_after_request(hive: Hive) -> None:
    name = agent_name()
    await hive.spawn(name)
    proposed, applied = hive.paths(name).proposed, hive.paths(name).applied
    queued = await propose(hive, name, {"agent.toml": GOOD_TOML})
    diff_before = await hive.admin("diff", ApprovalIdRequest(id=queued.id), DiffReply)

    # amend, then rewrite the branch entirely and gc: the pinned commit stays
    amended = commit_files(proposed, {"agent.toml": BAD_TOML}, "sneaky", amend=True)
    assert amended != queued.fetched_sha
    git_out(proposed, "reset", "--hard", "HEAD~1")
    git_out(proposed, "reflog", "expire", "--expire=now", "--all")
    git_out(proposed, "gc", "--prune=now", "--quiet")

    diff_after = await hive.admin("diff", ApprovalIdRequest(id=queued.id), DiffReply)
    assert diff_after == diff_before
    info = await hive.admin("approve", ApprovalIdRequest(id=queued.id), ApprovalInfo)
    assert info.state == "deployed"
    assert (applied / "agent.toml").read_text() == GOOD_TOML


async def test_noop_proposal_says_so(hive: Hive) -> None:
    name = agent_name()
    await hive.spawn(name)
    proposed = hive.paths(name).proposed
    sha = git_out(proposed, "rev-parse", "HEAD")
    queued = await hive.tool(
        "request_apply_commit", ApplyCommitRequest(name=name, commit_ref="main"), ApprovalQueued
    )
    assert queued.fetched_sha == sha
    diff = await hive.admin("diff", ApprovalIdRequest(id=queued.id), DiffReply)
    assert diff.diff == "(proposal matches currently-deployed tree)"
    assert diff.files == []


async def test_a_moved_proposal_tag_changes_neither_diff_nor_deploy(hive: Hive) -> None:
    """proposal/<id> is a ref anyone with the repo can move; fetched_sha is the record."""
    name = agent_name()
    await hive.spawn(name)
    applied = hive.paths(name).applied
    queued = await propose(hive, name, {"agent.toml": GOOD_TOML})
    before = await hive.admin("diff", ApprovalIdRequest(id=queued.id), DiffReply)
    # another commit reaches the applied repo, and the tag is moved onto it
    other = await propose(hive, name, {"agent.toml": BAD_TOML, "evil.txt": "x\n"})
    git_out(applied, "tag", "-f", f"proposal/{queued.id}", other.fetched_sha)
    assert gitops.tag_sha(applied, f"proposal/{queued.id}") == other.fetched_sha

    diff = await hive.admin("diff", ApprovalIdRequest(id=queued.id), DiffReply)
    assert diff.sha == queued.fetched_sha
    assert diff.files == before.files == ["agent.toml"]
    assert "claude-sonnet-4-5" in diff.diff and "evil.txt" not in diff.diff
    assert f"tag proposal/{queued.id} now points at {other.fetched_sha}" in diff.diff
    assert diff.diff.endswith(before.diff)

    info = await hive.admin("approve", ApprovalIdRequest(id=queued.id), ApprovalInfo)
    assert info.state == "deployed", info
    assert gitops.main_sha(applied) == queued.fetched_sha
    assert gitops.tag_sha(applied, f"deployed/{queued.id}") == queued.fetched_sha
    assert (applied / "agent.toml").read_text() == GOOD_TOML
    assert not (applied / "evil.txt").exists()


async def test_approving_a_proposal_not_based_on_main_is_refused(hive: Hive) -> None:
    """Two proposals from the same main: once one is deployed, the other would
    revert it. Approve refuses it, changes nothing, and it stays pending."""
    name = agent_name()
    await hive.spawn(name)
    proposed, applied = hive.paths(name).proposed, hive.paths(name).applied
    base = gitops.main_sha(applied)
    older = await propose(hive, name, {"agent.toml": GOOD_TOML, "older.txt": "1\n"})
    git_out(proposed, "reset", "--hard", base)
    newer = await propose(hive, name, {"agent.toml": 'model = "newer"\n'})
    assert (await hive.admin("approve", ApprovalIdRequest(id=newer.id), ApprovalInfo)).state == (
        "deployed"
    )
    tags = git_out(applied, "tag", "-l")

    diff = await hive.admin("diff", ApprovalIdRequest(id=older.id), DiffReply)
    assert f"proposal {older.id} is not based on the deployed main" in diff.diff
    message = f"proposal {older.id} is not based on the deployed main; rebase and request again"
    with pytest.raises(Conflict, match=message):
        await hive.admin("approve", ApprovalIdRequest(id=older.id), ApprovalInfo)

    assert gitops.main_sha(applied) == newer.fetched_sha
    assert head_state(applied) == ("refs/heads/main", newer.fetched_sha)
    assert (applied / "agent.toml").read_text() == 'model = "newer"\n'
    assert not (applied / "older.txt").exists()
    assert git_out(applied, "status", "--porcelain") == ""
    assert git_out(applied, "tag", "-l") == tags
    listed = await hive.admin("list", ApprovalsRequest(state="pending"), ApprovalsReply)
    assert [a.id for a in listed.approvals] == [older.id]
    # the operator can still deny it
    denied = await hive.admin("deny", DenyRequest(id=older.id, note="stale"), ApprovalInfo)
    assert denied.state == "denied"


def test_advance_main_only_fast_forwards(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "applied"
    git_out_init(repo)
    a = commit_files(repo, {"f": "a\n"}, "a")
    b = commit_files(repo, {"f": "b\n"}, "b")
    git_out(repo, "checkout", "-q", "--detach", a)
    c = commit_files(repo, {"f": "c\n"}, "c")  # a sibling of b
    git_out(repo, "update-ref", "refs/heads/main", b)
    with pytest.raises(Conflict, match="not a fast-forward"):
        gitops.advance_main(repo, c, b)
    assert gitops.main_sha(repo) == b
    with pytest.raises(Internal, match="main moved"):
        gitops.advance_main(repo, c, a)  # main is not where the caller thinks
    assert gitops.main_sha(repo) == b
    git_out(repo, "update-ref", "refs/heads/main", a)
    gitops.advance_main(repo, c, a)
    gitops.advance_main(repo, c, a)  # again (recovery): main is there already
    assert head_state(repo) == ("refs/heads/main", c)


def git_out_init(path) -> None:  # type: ignore[no-untyped-def]
    git.Repo.init(path, initial_branch="main").close()
