"""Wire types of approvals: the queue, diffs, operator questions."""

from __future__ import annotations

import msgspec

from hyperhive.common.wire.states import ApprovalKind, ApprovalState

# Who decided, as the operator's tool records it: ``operator via dashboard
# (token "operator")``, ``operator via cli (root@host)``. Only the operator's
# side sets it (``hive.admin.*``, which no agent may publish on); one line.
MAX_DECIDED_BY = 200


class ApplyCommitRequest(msgspec.Struct, kw_only=True):
    name: str
    commit_ref: str


class SpawnToolRequest(msgspec.Struct, kw_only=True):
    """``request_spawn`` and ``request_spawn_draft``."""

    name: str
    host: str = ""  # request_spawn: the node to run it on ('' : lifecycle picks)


class SpawnCommitRequest(msgspec.Struct, kw_only=True):
    name: str
    commit_ref: str
    host: str = ""  # the node to run it on ('' : lifecycle picks)


class AskRequest(msgspec.Struct, kw_only=True):
    question: str
    options: list[str] | None = None
    multi: bool = False


class ApprovalInfo(msgspec.Struct, kw_only=True):
    id: int
    kind: ApprovalKind
    agent: str
    state: ApprovalState
    commit_ref: str = ""
    fetched_sha: str = ""
    note: str = ""
    error: str = ""
    tag: str = ""
    created_at: float = 0.0
    resolved_at: float | None = None
    decided_by: str = ""  # who approved or denied it ("" while pending)
    decided_at: float | None = None  # when (an approve: before its build)
    host: str = ""  # Spawn: the node asked for ('' : lifecycle picks)


class ApprovalQueued(msgspec.Struct, kw_only=True):
    """Reply to a manager tool that queued something for the operator."""

    id: int
    state: ApprovalState = "pending"
    fetched_sha: str = ""


class ApprovalsRequest(msgspec.Struct, kw_only=True):
    state: ApprovalState | None = None  # None: every approval
    limit: int = 200


class ApprovalsReply(msgspec.Struct, kw_only=True):
    approvals: list[ApprovalInfo] = msgspec.field(default_factory=list)


class ApprovalIdRequest(msgspec.Struct, kw_only=True):
    id: int


class ApproveRequest(msgspec.Struct, kw_only=True):
    id: int
    decided_by: str = ""  # who approves (see MAX_DECIDED_BY)


class DenyRequest(msgspec.Struct, kw_only=True):
    id: int
    note: str = ""
    decided_by: str = ""


class DiffReply(msgspec.Struct, kw_only=True):
    id: int
    sha: str
    diff: str
    files: list[str] = msgspec.field(default_factory=list)


class QuestionInfo(msgspec.Struct, kw_only=True):
    id: int
    question: str
    options: list[str] | None = None
    multi: bool = False
    answer: list[str] | None = None
    asked_at: float = 0.0
    answered_at: float | None = None
    answered_by: str = ""


class QuestionsRequest(msgspec.Struct, kw_only=True):
    answered: bool | None = None  # None: all


class QuestionsReply(msgspec.Struct, kw_only=True):
    questions: list[QuestionInfo] = msgspec.field(default_factory=list)


class AnswerRequest(msgspec.Struct, kw_only=True):
    id: int
    answer: list[str]
    decided_by: str = ""  # who answers
