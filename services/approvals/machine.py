"""The approval state machine: approve, deny, and finishing what a crash interrupted.

pending → approved → deployed | failed, or pending → denied. The database row
is the system of record; the applied repo's tags must agree with it. The
order of steps makes every crash point recoverable:

0. A request fetches the commit, commits the ``pending`` row (unpinned), then
   tags ``proposal/<id>``: a crash leaves a row whose tag :meth:`Machine.pin`
   writes later, never a tag without a row.
1. ``approved`` is committed together with ``base_sha`` (main before the change).
2. The working tree moves to the proposal (detached HEAD); lifecycle builds.
3. The end tag is written first (``deployed/<id>`` or ``failed/<id>``): it is
   the commit point of the build's outcome.
4. ``main`` moves (or the tree rolls back to ``base_sha``), then the row ends.

A build holds the agent's guard (an asyncio lock plus a Postgres session
lock, which dies with a crashed holder's connection). At start and every few
seconds :meth:`Machine.recover` looks at each ``approved`` row whose guard is
free: an end tag means step 3 happened, so it finishes step 4; no end tag
means the build's outcome is unknown, so it builds again (once; waiting while
lifecycle is still busy with the agent), else gives up as ``failed``; so does
an approval whose applied repo is gone. A deny commits first and tags
``denied/<id>`` after (:meth:`Machine.settle` writes a missing one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import asyncpg

from hyperhive.approvals import gitops, store
from hyperhive.approvals.peers import Peers
from hyperhive.common.config import Settings
from hyperhive.common.errors import BackendFailed, Conflict, HiveError, NotFound
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import ApprovalInfo
from hyperhive.common.wire.events import ApprovalResolved, OperatorAnswered, SpawnResolved
from hyperhive.common.wire.states import CREATING, DRAFT

log = logging.getLogger(__name__)

# builds of one approval: the first, and one retry after a crash interrupted it
MAX_ATTEMPTS: Final = 2
INTERRUPTED: Final = "interrupted: the approvals service stopped during the build"
MAX_EVENT_NOTE: Final = 2000


class Machine:
    """Drives approvals through their states; one approval per agent at a time."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, peers: Peers, kick: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._peers = peers
        self._kick = kick  # publish committed outbox rows now
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._current: dict[str, int] = {}  # agent → approval holding its lock

    def applied(self, agent: str) -> Path:
        return AgentPaths.of(self._settings, agent).applied

    # --- operator verbs ---------------------------------------------------------

    async def approve(self, approval_id: int, decided_by: str) -> ApprovalInfo:
        """Approves (recording ``decided_by``), builds, and returns the approval
        in its end state.

        Raises:
            NotFound: no such approval.
            Conflict: not pending any more, another approval of the agent is
                being deployed, or the proposal does not descend from the
                deployed main (approving it would revert what shipped since;
                it stays pending, for the operator to deny).
        """
        row = await self._pending(approval_id)
        agent = row["agent"]
        async with self._guard(agent, approval_id) as held:
            if not held:  # fail fast instead of waiting out someone else's build
                raise await self._busy(approval_id, agent)
            return await self._approve_locked(approval_id, agent, decided_by)

    async def _approve_locked(self, approval_id: int, agent: str, decided_by: str) -> ApprovalInfo:
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                started = await store.begin(conn, approval_id, decided_by)
            except asyncpg.UniqueViolationError:
                # an earlier approval of this agent is unfinished (recovery ends it)
                raise Conflict(
                    f"another approval of {agent} is being deployed; try again when it ends"
                ) from None
            if started is None:
                raise await self._not_pending(approval_id, conn)
            base = ""
            sha = started["fetched_sha"]
            if sha:
                # inside the transaction: if the repo is gone, or the proposal
                # would not fast-forward main, the row stays pending
                applied = self.applied(agent)
                base = await asyncio.to_thread(gitops.main_sha, applied)
                if base and not await asyncio.to_thread(gitops.is_ancestor, applied, base, sha):
                    raise not_based_on_main(approval_id)
            await store.set_base(conn, approval_id, base)
        self._kick()
        row = await store.get(self._pool, approval_id)
        assert row is not None
        return await self._build(row)

    async def deny(self, approval_id: int, note: str, decided_by: str) -> ApprovalInfo:
        """Denies a pending approval; ``denied/<id>`` carries ``note`` and who
        decided when.

        Raises:
            NotFound: no such approval.
            Conflict: not pending any more.
        """
        row = await self._pending(approval_id)
        sha = row["fetched_sha"]
        tag = gitops.tag_name(store.DENIED, approval_id) if sha else ""
        async with self._pool.acquire() as conn, conn.transaction():
            denied = await store.deny(conn, approval_id, note, tag, decided_by)
            if denied is None:
                raise await self._not_pending(approval_id, conn)
        self._kick()
        await self.settle(denied)
        final = await store.get(self._pool, approval_id)
        assert final is not None
        return store.approval_info(final)

    async def _pending(self, approval_id: int) -> asyncpg.Record:
        row = await store.get(self._pool, approval_id)
        if row is None:
            raise NotFound(f"no approval {approval_id}")
        if row["state"] != store.PENDING:
            raise _conflict(approval_id, row["state"])
        return row

    @contextlib.asynccontextmanager
    async def _guard(self, agent: str, approval_id: int) -> AsyncIterator[bool]:
        """Holds the right to move ``agent``'s applied repo; yields False if
        someone holds it already (this process, or another instance).

        The in-process lock fails fast; the session advisory lock in Postgres
        covers other instances and dies with its holder's connection, so an
        ``approved`` row whose lock is free has nobody driving it.
        """
        lock = self._locks[agent]
        if lock.locked():
            yield False
            return
        async with lock:
            self._current[agent] = approval_id
            try:
                async with self._pool.acquire() as conn:
                    if not await store.try_lock_agent(conn, agent):
                        yield False
                        return
                    try:
                        yield True
                    finally:
                        await store.unlock_agent(conn, agent)
            finally:
                self._current.pop(agent, None)

    async def _busy(self, approval_id: int, agent: str) -> HiveError:
        if self._current.get(agent) == approval_id:
            return _conflict(approval_id, store.APPROVED)
        row = await store.get(self._pool, approval_id)
        if row is not None and row["state"] != store.PENDING:
            return _conflict(approval_id, row["state"])
        return Conflict(f"another approval of {agent} is being deployed; try again when it ends")

    async def _not_pending(self, approval_id: int, conn: asyncpg.Connection) -> HiveError:
        row = await store.get(conn, approval_id)
        return _conflict(approval_id, row["state"] if row else "gone")

    # --- the build --------------------------------------------------------------

    async def _build(self, row: asyncpg.Record, *, recovering: bool = False) -> ApprovalInfo:
        """Moves the tree, asks lifecycle to build, and concludes.

        Raises:
            Conflict: only when ``recovering``: lifecycle is still busy with the
                agent (likely the interrupted build itself); try again later.
        """
        agent, sha = row["agent"], row["fetched_sha"]
        resync = False
        try:
            if sha:
                await asyncio.to_thread(gitops.checkout_detached, self.applied(agent), sha)
            if row["kind"] == store.APPLY_COMMIT:
                reply = await self._peers.apply(agent)
                ok, error = reply.ok, reply.error
            else:
                await self._peers.create(agent, sha or None, row["host"])
                ok, error = True, ""
        except BackendFailed as exc:
            ok, error = False, exc.message
        except Conflict:
            if recovering:
                raise
            ok, error, resync = False, "lifecycle is busy with this agent; try again", False
        except HiveError as exc:
            # timeout or lifecycle down: the container's state is unknown, so
            # after the rollback ask lifecycle to rebuild from main
            ok, error = False, f"{exc.code}: {exc.message}"
            resync = True
        return await self._conclude(row, ok, error, resync=resync)

    async def _conclude(
        self, row: asyncpg.Record, ok: bool, error: str, *, resync: bool = False
    ) -> ApprovalInfo:
        approval_id, agent, sha = row["id"], row["agent"], row["fetched_sha"]
        applied = self.applied(agent)
        if ok:
            tag = gitops.tag_name(store.DEPLOYED, approval_id)
            message = _decision(row, f"approval {approval_id} for {agent} deployed")
            if sha:
                await asyncio.to_thread(gitops.create_tag, applied, tag, sha, message)
                await asyncio.to_thread(gitops.advance_main, applied, sha, row["base_sha"])
            else:
                tag = await asyncio.to_thread(_tag_default_main, applied, tag, message)
            done = await store.finish(self._pool, approval_id, store.DEPLOYED, tag=tag)
        else:
            error = error or "the build failed"
            tag = ""
            if sha:
                tag = gitops.tag_name(store.FAILED, approval_id)
                message = _decision(
                    row, f"approval {approval_id} for {agent} failed to build\n\n{error}"
                )
                await asyncio.to_thread(gitops.create_tag, applied, tag, sha, message)
                await asyncio.to_thread(gitops.restore_main, applied, row["base_sha"])
                if resync and row["kind"] == store.APPLY_COMMIT:
                    await self._resync(agent)
            done = await store.finish(self._pool, approval_id, store.FAILED, tag=tag, error=error)
        self._kick()
        if done is None:  # someone else concluded it (cannot happen under the lock)
            done = await store.get(self._pool, approval_id)
            assert done is not None
        else:
            log.info(
                "approval ended",
                extra={"approval": approval_id, "agent": agent, "state": done["state"]},
            )
            await self.settle(done)
        return store.approval_info(done)

    async def _resync(self, agent: str) -> None:
        try:
            reply = await self._peers.apply(agent)
            if not reply.ok:
                log.warning("rebuild of %s from main failed: %s", agent, reply.error[:500])
        except HiveError as exc:
            log.warning("could not rebuild %s from main after a failed approval: %s", agent, exc)

    # --- after a crash ------------------------------------------------------------

    async def recover(self) -> None:
        """Brings every ``approved`` row that no approve of this run is driving
        (a previous run's, or one whose git step failed) to an end state."""
        for stale in await store.in_flight(self._pool):
            async with self._guard(stale["agent"], stale["id"]) as held:
                if not held:
                    continue  # being driven right now
                row = await store.get(self._pool, stale["id"])
                if row is None or row["state"] != store.APPROVED:
                    continue
                try:
                    await self._recover_one(row)
                except Exception:
                    log.exception("could not recover approval %s", row["id"])

    async def _recover_one(self, row: asyncpg.Record) -> None:
        try:
            await self._recover_steps(row)
        except NotFound as exc:
            # the agent's repo (or the agent) went away meanwhile: no build can
            # ever end this approval, so it fails instead of being retried
            await self._give_up(row, f"cannot finish the approval: {exc}")

    async def _recover_steps(self, row: asyncpg.Record) -> None:
        approval_id, agent, sha = row["id"], row["agent"], row["fetched_sha"]
        log.info("recovering approval", extra={"approval": approval_id, "agent": agent})
        applied = self.applied(agent)
        if sha:
            deployed = gitops.tag_name(store.DEPLOYED, approval_id)
            failed = gitops.tag_name(store.FAILED, approval_id)
            if await asyncio.to_thread(gitops.tag_sha, applied, deployed):
                await self._conclude(row, True, "")
                return
            if await asyncio.to_thread(gitops.tag_sha, applied, failed):
                message = await asyncio.to_thread(gitops.tag_message, applied, failed)
                body = gitops.message_body(message)
                await self._conclude(row, False, body.split("\n\n", 1)[-1])
                return
        if row["kind"] == store.SPAWN:
            info = await self._peers.agent(agent)
            if info is not None and info.state == CREATING:
                return  # the interrupted create is still running: look again later
            if info is not None and info.state != DRAFT:
                await self._conclude(row, True, "")  # the create finished before the crash
                return
        if row["attempts"] >= MAX_ATTEMPTS:
            await self._conclude(row, False, INTERRUPTED, resync=True)
            return
        await store.count_attempt(self._pool, approval_id, 1)
        try:
            await self._build(row, recovering=True)
        except Conflict as exc:
            # lifecycle is still busy (likely the interrupted build): not an attempt
            await store.count_attempt(self._pool, approval_id, -1)
            log.info("approval %s waits for lifecycle: %s", approval_id, exc)

    async def pin(self, row: asyncpg.Record) -> bool:
        """Writes ``proposal/<id>`` at ``fetched_sha`` (idempotent). Returns
        whether it is there; a failure is logged and :meth:`settle_all` retries."""
        approval_id = row["id"]
        tag = gitops.tag_name("proposal", approval_id)
        try:
            await asyncio.to_thread(
                gitops.create_tag, self.applied(row["agent"]), tag, row["fetched_sha"]
            )
        except NotFound as exc:  # the agent and its repo are gone: nothing to pin
            log.warning("not tagging %s: %s", tag, exc)
        except HiveError as exc:
            log.warning("could not tag %s yet: %s", tag, exc)
            return False
        await store.mark_pinned(self._pool, approval_id)
        return True

    async def _give_up(self, row: asyncpg.Record, error: str) -> None:
        """Ends an in-flight approval as failed without touching its repo
        (which is gone): recovery must not retry it forever."""
        log.warning("approval %s of %s fails: %s", row["id"], row["agent"], error)
        done = await store.finish(self._pool, row["id"], store.FAILED, tag="", error=error)
        self._kick()
        if done is not None:
            await self.settle(done)

    # --- reporting ---------------------------------------------------------------

    async def settle(self, row: asyncpg.Record) -> None:
        """Writes a missing deny tag and reports the outcome to the manager.

        Failures are logged; :meth:`settle_all` retries them.
        """
        approval_id = row["id"]
        if not row["tagged"]:
            if row["tag"] and row["fetched_sha"]:
                try:
                    await asyncio.to_thread(
                        gitops.create_tag,
                        self.applied(row["agent"]),
                        row["tag"],
                        row["fetched_sha"],
                        _decision(row, row["note"] or "denied by the operator"),
                    )
                except NotFound as exc:  # the agent and its repo are gone
                    log.warning("not tagging %s: %s", row["tag"], exc)
                except HiveError as exc:
                    log.warning("could not tag %s: %s", row["tag"], exc)
                    return
            await store.mark_tagged(self._pool, approval_id)
        if not row["notified"]:
            try:
                await self._peers.deliver(_resolved_event(row), f"approval-{approval_id}")
            except HiveError as exc:
                log.warning("outcome of approval %s not delivered yet: %s", approval_id, exc)
                return
            await store.mark_notified(self._pool, approval_id)

    async def notify_answer(self, row: asyncpg.Record) -> None:
        """Puts an answered question into the manager's inbox (retried if it fails)."""
        info = store.question_info(row)
        event = OperatorAnswered(
            question_id=info.id,
            question=info.question,
            answer=info.answer or [],
            answered_by=info.answered_by,
        )
        try:
            await self._peers.deliver(event, f"question-{info.id}")
        except HiveError as exc:
            log.warning("answer to question %s not delivered yet: %s", info.id, exc)
            return
        await store.mark_question_notified(self._pool, info.id)

    async def settle_all(self) -> None:
        """Retries every missing tag and undelivered report."""
        for row in await store.unpinned(self._pool):
            await self.pin(row)
        for row in await store.unsettled(self._pool):
            await self.settle(row)
        for row in await store.unnotified_answers(self._pool):
            await self.notify_answer(row)

    async def settle_loop(self) -> None:
        """Background: recovery and retries of reports, now and periodically."""
        while True:
            try:
                await self.recover()
                await self.settle_all()
            except Exception:
                log.exception("settling approvals failed")
            await asyncio.sleep(self._settings.approvals.notify_retry_s)


def _conflict(approval_id: int, state: str) -> Conflict:
    return Conflict(f"approval {approval_id} is already {state}")


def not_based_on_main(approval_id: int) -> Conflict:
    """Approving would not fast-forward main (it would revert what was deployed since)."""
    return Conflict(
        f"proposal {approval_id} is not based on the deployed main; rebase and request again"
    )


def _decision(row: asyncpg.Record, body: str) -> str:
    """An end tag's message: ``body`` and who decided when (from the row)."""
    return gitops.decision_message(body, row["decided_by"], row["decided_at"])


def _tag_default_main(applied: Path, tag: str, message: str) -> str:
    """Tags the default config lifecycle committed for a one-step spawn ("" if none)."""
    try:
        sha = gitops.main_sha(applied)
        if sha:
            gitops.create_tag(applied, tag, sha, message)
            return tag
    except HiveError as exc:
        log.warning("could not tag %s: %s", tag, exc)
    return ""


def _resolved_event(row: asyncpg.Record) -> ApprovalResolved | SpawnResolved:
    # note: the operator's note, or the build error of a failure (what the
    # inbox line shows); error: the full build error
    note = row["note"] or row["error"][:MAX_EVENT_NOTE]
    if row["kind"] == store.SPAWN:
        return SpawnResolved(
            approval_id=row["id"],
            agent=row["agent"],
            state=row["state"],
            note=note,
            error=row["error"],
            tag=row["tag"],
            sha=row["fetched_sha"],
            decided_by=row["decided_by"],
            decided_at=store.ts(row["decided_at"]),
        )
    return ApprovalResolved(
        approval_id=row["id"],
        agent=row["agent"],
        state=row["state"],
        tag=row["tag"],
        note=note,
        sha=row["fetched_sha"],
        error=row["error"],
        decided_by=row["decided_by"],
        decided_at=store.ts(row["decided_at"]),
    )
