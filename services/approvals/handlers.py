"""Request handlers: the manager's tools and the operator's verbs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import asyncpg

from hyperhive.approvals import gitops, store
from hyperhive.approvals.machine import DRAFT, Machine, not_based_on_main
from hyperhive.approvals.peers import Peers
from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest, Conflict, NotFound
from hyperhive.common.names import check_agent_name, check_node_name
from hyperhive.common.paths import AgentPaths
from hyperhive.common.rpc import Call
from hyperhive.common.wire.approvals import (
    MAX_DECIDED_BY,
    AnswerRequest,
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    ApproveRequest,
    AskRequest,
    DenyRequest,
    DiffReply,
    QuestionInfo,
    QuestionsReply,
    QuestionsRequest,
    SpawnCommitRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.lifecycle import DraftInfo

log = logging.getLogger(__name__)

MAX_QUESTION: Final = 8_000
MAX_OPTIONS: Final = 50
MAX_OPTION: Final = 500
MAX_ANSWER: Final = 16_000
MAX_NOTE: Final = 16_000
MAX_LIST: Final = 1_000
# an operator request that does not say who sent it (an older CLI or script)
UNATTRIBUTED: Final = "operator (unattributed)"


class Handlers:
    """One instance per running service; methods are ``rpc`` handlers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        peers: Peers,
        machine: Machine,
        kick: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._peers = peers
        self._machine = machine
        self._kick = kick

    # --- manager tools (hive.agent.hm1nd.<tool>) ----------------------------------

    async def request_apply_commit(self, req: ApplyCommitRequest, _call: Call) -> ApprovalQueued:
        """Pins the manager's commit as ``proposal/<id>`` and queues it."""
        name = check_agent_name(req.name, allow_manager=True)
        ref = gitops.check_ref(req.commit_ref)
        info = await self._peers.agent(name)
        if info is None or info.state == DRAFT:
            if await self._is_draft(name):
                raise BadRequest(
                    f"{name} is a draft: submit its first commit with request_spawn_commit"
                )
            raise NotFound(f"unknown agent {name!r}")
        return await self._pin_and_queue(store.APPLY_COMMIT, name, ref)

    async def request_spawn(self, req: SpawnToolRequest, _call: Call) -> ApprovalQueued:
        """Queues a new agent with the default config."""
        name = check_agent_name(req.name)
        host = check_node_name(req.host) if req.host else ""
        if await self._peers.agent(name) is not None:
            raise Conflict(f"agent {name} already exists")
        if await self._is_draft(name):
            raise Conflict(f"{name} is a draft: submit it with request_spawn_commit")
        try:
            row = await store.queue(self._pool, kind=store.SPAWN, agent=name, host=host)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a spawn of {name} is already waiting for the operator") from None
        self._kick()
        return ApprovalQueued(id=row["id"])

    async def request_spawn_draft(self, req: SpawnToolRequest, _call: Call) -> DraftInfo:
        """Creates the draft's proposed repo and state dir (through lifecycle)."""
        name = check_agent_name(req.name)
        return await self._peers.draft(name)

    async def request_spawn_commit(self, req: SpawnCommitRequest, _call: Call) -> ApprovalQueued:
        """Pins a draft's first commit and queues its spawn."""
        name = check_agent_name(req.name)
        ref = gitops.check_ref(req.commit_ref)
        if not await self._is_draft(name):
            if await self._peers.agent(name) is not None:
                raise Conflict(f"agent {name} already exists: use request_apply_commit")
            raise NotFound(f"no draft {name!r}: create it with request_spawn_draft first")
        host = check_node_name(req.host) if req.host else ""
        return await self._pin_and_queue(store.SPAWN, name, ref, host)

    async def _is_draft(self, name: str) -> bool:
        return name in {d.name for d in await self._peers.drafts()}

    async def _pin_and_queue(
        self, kind: str, name: str, ref: str, host: str = ""
    ) -> ApprovalQueued:
        """Fetches the commit into the applied repo, records it, then tags it.

        The row comes before the tag so that a crash leaves a row whose tag
        recovery writes (``pinned`` false), never a tag without a row. The
        fetched objects alone change nothing: no ref points at them.
        """
        paths = AgentPaths.of(self._settings, name)
        sha = await asyncio.to_thread(gitops.resolve_commit, paths.proposed, ref)
        # refused before anything is written; checked again on the fetched
        # objects, which the manager's repo (its config, alternates) cannot dress up
        await asyncio.to_thread(gitops.check_tree, paths.proposed, sha, "proposed")
        await asyncio.to_thread(gitops.fetch_commit, paths.applied, paths.proposed, sha)
        await asyncio.to_thread(gitops.check_tree, paths.applied, sha, "applied")
        try:
            row = await store.queue(
                self._pool, kind=kind, agent=name, commit_ref=ref, fetched_sha=sha, host=host
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a spawn of {name} is already waiting for the operator") from None
        self._kick()
        approval_id = row["id"]
        await self._machine.pin(row)
        log.info("approval queued", extra={"approval": approval_id, "agent": name, "sha": sha})
        return ApprovalQueued(id=approval_id, fetched_sha=sha)

    async def ask_operator(self, req: AskRequest, call: Call) -> ApprovalQueued:
        """Queues a question: free text, radio (options) or checkboxes (multi)."""
        question = req.question.strip()
        if not question:
            raise BadRequest("question is empty")
        if len(question) > MAX_QUESTION or "\x00" in question:
            raise BadRequest(f"question too long (max {MAX_QUESTION} characters) or has NUL")
        options = None if req.options is None else _check_options(req.options, req.multi)
        if options is None and req.multi:
            raise BadRequest("multi needs options (a checkbox list)")
        row = await store.ask(self._pool, call.agent, question, options, req.multi)
        self._kick()
        return ApprovalQueued(id=row["id"])

    # --- operator verbs (hive.admin.approvals.<verb>) -----------------------------

    async def list_approvals(self, req: ApprovalsRequest, _call: Call) -> ApprovalsReply:
        rows = await store.list_approvals(self._pool, req.state, max(1, min(req.limit, MAX_LIST)))
        return ApprovalsReply(approvals=[store.approval_info(r) for r in rows])

    async def diff(self, req: ApprovalIdRequest, _call: Call) -> DiffReply:
        """``git diff main..proposal/<id>`` of the agent's applied repo, taken from
        ``fetched_sha`` (the commit the tag pinned), never from the tag itself."""
        row = await store.get(self._pool, req.id)
        if row is None:
            raise NotFound(f"no approval {req.id}")
        agent, sha = row["agent"], row["fetched_sha"]
        if not sha:
            return DiffReply(id=req.id, sha="", diff=f"(new agent {agent} with the default config)")
        applied = AgentPaths.of(self._settings, agent).applied
        if row["state"] in (store.PENDING, store.DENIED):
            base = await asyncio.to_thread(gitops.main_sha, applied)
        else:  # what it was compared against when approved
            base = row["base_sha"]
        # the fetched commit itself, not whatever proposal/<id> names now: a
        # tag can be moved, fetched_sha is what approve deploys
        text, files = await asyncio.to_thread(gitops.diff, applied, base, sha)
        tag = gitops.tag_name("proposal", req.id)
        tagged = await asyncio.to_thread(gitops.tag_sha, applied, tag)
        if row["state"] == store.PENDING and base:
            if not await asyncio.to_thread(gitops.is_ancestor, applied, base, sha):
                text = f"(warning: {not_based_on_main(req.id).message})\n" + text
        if tagged and tagged != sha:
            log.warning("tag %s of %s moved to %s (fetched %s)", tag, agent, tagged, sha)
            text = (
                f"(warning: tag {tag} now points at {tagged}, not at the fetched commit;"
                f" this is the fetched commit {sha}, which approve deploys)\n" + text
            )
        return DiffReply(id=req.id, sha=sha, diff=text, files=files)

    async def approve(self, req: ApproveRequest, _call: Call) -> ApprovalInfo:
        return await self._machine.approve(req.id, _decided_by(req.decided_by))

    async def deny(self, req: DenyRequest, _call: Call) -> ApprovalInfo:
        note = req.note.strip()
        if len(note) > MAX_NOTE or "\x00" in note:
            raise BadRequest(f"note too long (max {MAX_NOTE} characters) or has NUL")
        return await self._machine.deny(req.id, note, _decided_by(req.decided_by))

    async def questions(self, req: QuestionsRequest, _call: Call) -> QuestionsReply:
        rows = await store.list_questions(self._pool, req.answered)
        return QuestionsReply(questions=[store.question_info(r) for r in rows])

    async def answer(self, req: AnswerRequest, _call: Call) -> QuestionInfo:
        """Records the operator's answer and puts it into the manager's inbox."""
        row = await store.get_question(self._pool, req.id)
        if row is None:
            raise NotFound(f"no question {req.id}")
        info = store.question_info(row)
        if info.answer is not None:
            raise Conflict(f"question {req.id} is already answered")
        value = _check_answer(info, req.answer)
        done = await store.answer(self._pool, req.id, value, _decided_by(req.decided_by))
        if done is None:
            raise Conflict(f"question {req.id} is already answered")
        self._kick()
        await self._machine.notify_answer(done)
        return store.question_info(done)


def _decided_by(value: str) -> str:
    """Who decided, as the operator's tool said (``hive.admin.*`` only: no
    agent can send it); one printable line, since it goes into git tags.

    Raises:
        BadRequest: too long, or a control character.
    """
    value = value.strip()
    if len(value) > MAX_DECIDED_BY or any(not c.isprintable() for c in value):
        raise BadRequest(
            f"decided_by must be one printable line of at most {MAX_DECIDED_BY} characters"
        )
    return value or UNATTRIBUTED


def _check_options(options: list[str], multi: bool) -> list[str]:
    cleaned = [o.strip() for o in options]
    if not cleaned:
        kind = "checkbox" if multi else "radio"
        raise BadRequest(f"a {kind} question needs at least one option")
    if len(cleaned) > MAX_OPTIONS:
        raise BadRequest(f"too many options (max {MAX_OPTIONS})")
    if any(not o or len(o) > MAX_OPTION or "\x00" in o for o in cleaned):
        raise BadRequest(f"options must be non-empty, at most {MAX_OPTION} characters")
    if len(set(cleaned)) != len(cleaned):
        raise BadRequest("options must be distinct")
    return cleaned


def _check_answer(info: QuestionInfo, answer: list[str]) -> list[str]:
    """The answer if it fits the question's form.

    Raises:
        BadRequest: free text that is empty, or choices not among the options.
    """
    if info.options is None:
        if len(answer) != 1 or not answer[0].strip():
            raise BadRequest("this question takes one non-empty text answer")
        if len(answer[0]) > MAX_ANSWER or "\x00" in answer[0]:
            raise BadRequest(f"answer too long (max {MAX_ANSWER} characters) or has NUL")
        return [answer[0].strip()]
    unknown = [a for a in answer if a not in info.options]
    if unknown:
        raise BadRequest(f"not an option: {unknown[0]!r}; options: {', '.join(info.options)}")
    if len(set(answer)) != len(answer):
        raise BadRequest("an option was chosen twice")
    if not info.multi and len(answer) != 1:
        raise BadRequest("choose exactly one option")
    return list(answer)
