"""Lifecycle's operations on agents: registry, files, credentials, containers.

Every operation on one agent runs under that agent's lock (an asyncio lock in
this process plus a Postgres advisory lock, so a second lifecycle instance
cannot interleave either): a second operation waits up to
``lifecycle.op_wait_s`` and then gets ``Conflict``. Operations that stop a
running container set a transient flag (``flag.<n>`` in the KV bucket, with
the time it was set, and in the ``agent.state`` event) so that crash-watch can
tell them from a crash. A flag left by a lifecycle that died in the middle of
an operation is deleted at the next start (:meth:`Lifecycle.reconcile`), and
crash-watch ignores one older than ``crashwatch.flag_max_age_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import msgspec
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from hyperhive.common import notes as agent_notes
from hyperhive.common import outbox, subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BackendFailed, BadRequest, Conflict, HiveError, NotFound
from hyperhive.common.outbox import OutboxRelay, make_event
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.events import (
    AgentCreated,
    AgentDestroyed,
    AgentDrafted,
    AgentPurged,
    AgentStateChanged,
    HiveEvent,
)
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    ApplyReply,
    ConfigReply,
    DraftInfo,
    KeptState,
    LogsReply,
    NotesReply,
    TransientFlag,
)
from hyperhive.common.wire.states import (
    DESTROYING,
    REBUILDING,
    RESTARTING,
    STOPPING,
    AgentFlag,
    AgentState,
)
from hyperhive.lifecycle import agentconf, creds, ports, repos, store
from hyperhive.lifecycle.backends.base import RUNNING, AgentSpec, Backend

log = logging.getLogger(__name__)


_LOCK_SPACE = 0x48495645  # "HIVE": first key of the per-agent advisory locks
MAX_LOG_LINES = 10_000
_encoder = msgspec.json.Encoder()


class Lifecycle:
    """The registry and its containers, for one lifecycle service."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        kv: KeyValue,
        relay: OutboxRelay | None,
        backend: Backend,
        rev: str,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.kv = kv
        self.relay = relay
        self.backend = backend
        self.rev = rev
        self.manager = settings.lifecycle.manager
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: dict[str, str] = {}  # name → operation in progress
        self._flags: dict[str, str] = {}  # name → transient flag
        self._running: dict[str, AgentSpec] = {}  # what the monitor watches

    # --- helpers --------------------------------------------------------------

    def paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self.settings, name)

    def spec(self, row: store.AgentRow) -> AgentSpec:
        return AgentSpec(
            name=row.name,
            port=row.port or 0,
            manager=row.manager,
            paths=self.paths(row.name),
            rev=self.rev,
        )

    def info(self, row: store.AgentRow) -> AgentInfo:
        return AgentInfo(
            name=row.name,
            kind=row.kind,
            state=row.state,
            port=row.port or 0,
            rev=row.rev,
            stale=row.rev != self.rev and row.state not in (store.DRAFT, store.DESTROYED),
            flag=self._flags.get(row.name),
            state_flag=row.state_flag or None,
            created_at=row.created_at,
            destroyed_at=row.destroyed_at,
            kept_state=row.kept_state,
            backend=row.backend,
            state_seq=row.state_seq,
            state_since=row.state_since,
            error=row.error,
        )

    @asynccontextmanager
    async def operation(
        self, name: str, op: str, flag: str | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """Runs one operation on ``name`` alone; yields the connection to use.

        Raises:
            Conflict: another operation on ``name`` did not finish in time.
        """
        lock = self._locks.setdefault(name, asyncio.Lock())
        wait_s = self.settings.lifecycle.op_wait_s
        try:
            await asyncio.wait_for(lock.acquire(), wait_s)
        except TimeoutError:
            busy = self._busy.get(name, "another operation")
            raise Conflict(f"agent {name} is busy ({busy}); try again later") from None
        try:
            async with self.pool.acquire() as conn:
                await self._advisory_lock(conn, name, wait_s)
                self._busy[name] = op
                try:
                    if flag:
                        await self._set_flag(name, flag)
                    try:
                        yield conn
                    finally:
                        if flag:
                            await self._clear_flag(name)
                finally:
                    self._busy.pop(name, None)
                    await conn.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))", _LOCK_SPACE, name
                    )
        finally:
            lock.release()

    async def _advisory_lock(self, conn: asyncpg.Connection, name: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", _LOCK_SPACE, name
        ):
            if time.monotonic() > deadline:
                raise Conflict(f"agent {name} is busy in another lifecycle instance")
            await asyncio.sleep(0.1)

    async def _set_flag(self, name: str, flag: str) -> None:
        self._flags[name] = flag
        value = TransientFlag(flag=flag, since=time.time())
        await self.kv.put(subjects.flag_key(name), _encoder.encode(value))

    async def _clear_flag(self, name: str) -> None:
        self._flags.pop(name, None)
        try:
            await self.kv.delete(subjects.flag_key(name))
        except Exception as exc:  # NATS down: a stale flag only hides a crash report
            log.warning("could not clear flag of %s: %s", name, exc)

    async def _record(
        self,
        conn: asyncpg.Connection,
        name: str,
        state: AgentState,
        *,
        flag: AgentFlag | None = None,
        always: bool = False,
        before: list[HiveEvent] | None = None,
        after: list[HiveEvent] | None = None,
        data: dict[str, object] | None = None,
        **fields: object,
    ) -> store.AgentRow:
        """Commits a state change and its events (outbox), then kicks the relay."""
        async with conn.transaction():
            prev = await store.get(conn, name, for_update=True)
            if prev is None:
                raise NotFound(f"no agent named {name!r}")
            changed = always or prev.state != state
            if changed:
                row = await store.set_state(conn, name, state, flag=flag or "", **fields)  # type: ignore[arg-type]
            else:  # nothing happened: no new sequence number, no event
                fields.pop("port", None)
                await store.set_fields(conn, name, **fields)  # type: ignore[arg-type]
                row = await store.get(conn, name)
                assert row is not None
            events = list(before or [])
            if changed:
                events.append(
                    make_event(
                        AgentStateChanged(
                            state=state,
                            previous=prev.state,
                            flag=flag,
                            seq=row.state_seq,
                            **(data or {}),
                        ),
                        agent=name,
                    )
                )
            events += after or []
            if events:
                await outbox.add_many(conn, events)
        if self.relay is not None:
            self.relay.kick()
        if state == store.RUNNING:
            self._running[name] = self.spec(row)
        else:
            self._running.pop(name, None)
        return row

    async def _live(self, conn: asyncpg.Connection, name: str) -> store.AgentRow:
        row = await store.get(conn, name)
        if row is None or not row.live:
            raise NotFound(f"no agent named {name!r}")
        return row

    async def _container(self, conn: asyncpg.Connection, name: str) -> store.AgentRow:
        row = await self._live(conn, name)
        if row.state == store.DRAFT:
            raise Conflict(f"agent {name} is a draft: it has no container yet")
        if row.state == store.CREATING:
            raise Conflict(f"agent {name} is still being created")
        return row

    # --- reads ----------------------------------------------------------------

    async def list(self, include_destroyed: bool = False) -> list[AgentInfo]:
        rows = await store.list_agents(self.pool)
        hidden = {store.DRAFT} if include_destroyed else {store.DRAFT, store.DESTROYED}
        return [self.info(r) for r in rows if r.state not in hidden]

    async def get(self, name: str) -> AgentInfo:
        async with self.pool.acquire() as conn:
            row = await store.get(conn, name)
        if row is None or row.state in (store.DESTROYED, store.DRAFT):
            raise NotFound(f"no agent named {name!r}")
        return self.info(row)

    async def drafts(self) -> list[DraftInfo]:
        rows = await store.list_agents(self.pool, (store.DRAFT,))
        heads = await asyncio.gather(
            *(asyncio.to_thread(repos.head, self.paths(r.name).proposed) for r in rows)
        )
        return [
            DraftInfo(name=r.name, created_at=r.created_at, head=h)
            for r, h in zip(rows, heads, strict=True)
        ]

    async def kept(self) -> list[KeptState]:
        rows = await store.list_agents(self.pool, (store.DESTROYED,))
        out = []
        for r in rows:
            if r.kept_state:
                size = await asyncio.to_thread(_du, self.paths(r.name).state)
                out.append(KeptState(name=r.name, destroyed_at=r.destroyed_at, bytes=size))
        return out

    async def logs(self, name: str, lines: int, after: int | None, cursor: str) -> LogsReply:
        async with self.pool.acquire() as conn:
            row = await self._live(conn, name)
        if row.state == store.DRAFT:
            return LogsReply()
        lines = max(0, min(lines, MAX_LOG_LINES))
        return await self.backend.logs(self.spec(row), lines, after, cursor)

    async def config(self, name: str) -> ConfigReply:
        async with self.pool.acquire() as conn:
            row = await self._live(conn, name)
        paths = self.paths(row.name)
        sha, files = await asyncio.to_thread(repos.read_tree, paths.applied)
        return ConfigReply(name=name, files=files, sha=sha)

    async def notes(self, name: str, history: bool, version: int | None) -> NotesReply:
        """An agent's notes (or one kept version), and the list of versions.

        Also for a destroyed agent whose state was kept. The state dir is the
        agent's to write: it is read without following symlinks, bounded.
        """
        async with self.pool.acquire() as conn:
            row = await store.get(conn, name)
        if row is None or not (row.live or row.kept_state):
            raise NotFound(f"no agent (or kept state) named {name!r}")
        return await asyncio.to_thread(
            _read_notes, self.paths(row.name).state, row.name, history, version
        )

    # --- creating -------------------------------------------------------------

    async def draft(self, name: str, reuse_state: bool = True) -> DraftInfo:
        """A proposed repo (default commit), an empty applied repo, a state dir."""
        async with self.operation(name, "draft") as conn:
            row = await store.get(conn, name)
            if row is not None and row.live:
                raise Conflict(f"agent {name} already exists ({row.state})")
            paths = self.paths(name)
            await asyncio.to_thread(self._prepare_dirs, paths, row, reuse_state)
            head = await asyncio.to_thread(
                repos.init_with_files,
                paths.proposed,
                agentconf.default_files(),
                f"{name}: default config",
            )
            await asyncio.to_thread(repos.init_empty, paths.applied)
            async with conn.transaction():
                row = await store.register(
                    conn,
                    name=name,
                    kind="agent",
                    state=store.DRAFT,
                    port=None,
                    rev="",
                    backend=self.backend.name,
                )
                await outbox.add(conn, make_event(AgentDrafted(head=head), agent=name))
            if self.relay is not None:
                self.relay.kick()
            await self.backend.expose_to_manager(name)
            return DraftInfo(name=name, created_at=row.created_at, head=head)

    def _prepare_dirs(self, paths: AgentPaths, row: store.AgentRow | None, reuse: bool) -> None:
        """Clears what a previous life of the name left, except a reused state dir."""
        for d in (paths.proposed, paths.applied, paths.run, paths.workdir, paths.creds):
            repos.remove(d)
        repos.remove(paths.root / "flake")
        if not reuse:
            repos.remove(paths.state)
        paths.state.mkdir(parents=True, exist_ok=True)

    async def create(
        self, name: str, *, sha: str | None = None, reuse_state: bool = True, manager: bool = False
    ) -> AgentInfo:
        """Registers, provisions and starts an agent (or a draft's container).

        Raises:
            Conflict: the agent exists.
            BackendFailed: the build or start failed; the registry is as before.
        """
        async with self.operation(name, "create") as conn:
            row = await store.get(conn, name)
            if row is not None and row.live and row.state != store.DRAFT:
                raise Conflict(f"agent {name} already exists ({row.state})")
            was_draft = row is not None and row.state == store.DRAFT
            paths = self.paths(name)
            if sha is not None and not (was_draft and repos.exists(paths.applied)):
                raise BadRequest(f"agent {name} has no draft to create from commit {sha}")
            if not was_draft:
                await asyncio.to_thread(self._prepare_dirs, paths, row, reuse_state)
                await asyncio.to_thread(
                    repos.init_with_files,
                    paths.proposed,
                    agentconf.default_files(),
                    f"{name}: default config",
                )
            if sha is None:
                await asyncio.to_thread(repos.deploy_default, paths.applied, paths.proposed)
            row = await self._register(conn, name, manager)
            spec = self.spec(row)
            try:
                await creds.issue(self.settings, name)
                await self.backend.create(spec)
                await self.backend.start(spec)
                if not manager and not was_draft:
                    await self.backend.expose_to_manager(name)
            except Exception as exc:
                await self._undo_create(conn, spec, was_draft, exc)
                if isinstance(exc, BackendFailed):
                    raise
                if isinstance(exc, HiveError):
                    raise BackendFailed(f"creating {name} failed: {exc}") from exc
                raise
            row = await self._record(
                conn,
                name,
                store.RUNNING,
                before=[
                    make_event(
                        AgentCreated(agent_kind=row.kind, port=row.port, backend=self.backend.name),
                        agent=name,
                    )
                ],
            )
            return self.info(row)

    async def _register(self, conn: asyncpg.Connection, name: str, manager: bool) -> store.AgentRow:
        lc = self.settings.lifecycle
        for _ in range(5):
            used = await store.used_ports(conn, name)
            if manager:
                port = lc.manager_port
            else:
                port = ports.pick_port(name, used | {lc.manager_port}, lc.port_base, lc.port_count)
            try:
                async with conn.transaction():
                    row = await store.register(
                        conn,
                        name=name,
                        kind="manager" if manager else "agent",
                        state=store.CREATING,
                        port=port,
                        rev=self.rev,
                        backend=self.backend.name,
                    )
                    await outbox.add(
                        conn,
                        make_event(
                            AgentStateChanged(state=store.CREATING, seq=row.state_seq), agent=name
                        ),
                    )
                return row
            except asyncpg.UniqueViolationError:
                if manager:
                    raise Conflict(f"manager port {port} is taken by another agent") from None
                continue  # another agent took the port meanwhile: pick again
        raise Conflict(f"could not find a free port for {name}")

    async def _undo_create(
        self, conn: asyncpg.Connection, spec: AgentSpec, was_draft: bool, exc: BaseException
    ) -> None:
        """Leaves the registry and the files as they were before a failed create."""
        log.warning("create of %s failed: %s", spec.name, exc)
        try:
            await self.backend.destroy(spec)
        except Exception as cleanup:
            log.warning("cleanup of %s's container failed: %s", spec.name, cleanup)
        try:
            await creds.revoke(self.settings, spec.name)
        except Exception as cleanup:
            log.warning("revoking %s's credentials failed: %s", spec.name, cleanup)
        paths = spec.paths
        error = str(exc)[:4000]
        if was_draft:
            await self._record(conn, spec.name, store.DRAFT, port=None, error=error)
            return
        kept = await asyncio.to_thread(self._remove_files, paths, False)
        await self._record(
            conn, spec.name, store.DESTROYED, port=None, error=error, kept_state=kept
        )

    async def ensure_manager(self) -> None:
        """Creates the manager when it is missing (not when ``manager`` is empty).

        Called at start and at every auto-update pass: the operator may destroy
        the manager (to reset it, say); it comes back, with its kept state, at
        the next pass (``lifecycle.auto_update_interval_s``).
        """
        if not self.manager:
            return
        async with self.pool.acquire() as conn:
            row = await store.get(conn, self.manager)
        if row is not None and row.live:
            return
        log.info("creating the manager %s", self.manager)
        await self.create(self.manager, manager=True)

    # --- container operations -------------------------------------------------

    async def start(self, name: str) -> AgentInfo:
        async with self.operation(name, "start") as conn:
            row = await self._container(conn, name)
            spec = self.spec(row)
            try:
                await self.backend.start(spec)
            except BackendFailed as exc:
                await self._after_failure(conn, spec, None, exc)
                raise
            row = await self._record(conn, name, store.RUNNING, error="")
            return self.info(row)

    async def stop(self, name: str, *, kill: bool = False) -> AgentInfo:
        async with self.operation(name, "kill" if kill else "stop", STOPPING) as conn:
            row = await self._container(conn, name)
            spec = self.spec(row)
            try:
                await self.backend.stop(spec, kill=kill)
            except BackendFailed as exc:
                await self._after_failure(conn, spec, STOPPING, exc)
                raise
            row = await self._record(conn, name, store.STOPPED, flag=STOPPING, error="")
            return self.info(row)

    async def restart(self, name: str) -> AgentInfo:
        async with self.operation(name, "restart", RESTARTING) as conn:
            row = await self._container(conn, name)
            spec = self.spec(row)
            try:
                await self.backend.restart(spec)
            except BackendFailed as exc:
                await self._after_failure(conn, spec, RESTARTING, exc)
                raise
            row = await self._record(conn, name, store.RUNNING, flag=RESTARTING, always=True)
            return self.info(row)

    async def _seen_running(self, spec: AgentSpec) -> bool | None:
        """Whether the container runs; None when the backend cannot tell."""
        try:
            return await self.backend.state(spec) == RUNNING
        except HiveError as exc:
            log.warning("cannot see %s's container: %s", spec.name, exc)
            return None

    async def _after_failure(
        self, conn: asyncpg.Connection, spec: AgentSpec, flag: str | None, exc: HiveError
    ) -> None:
        """Records what the container is left in after a failed operation.

        Running → ``running``, else ``failed`` (with the operation's flag, so a
        stop that failed halfway is no crash); when the backend cannot tell,
        the state stays as it was. The error is kept either way.
        """
        error = str(exc)[:4000]
        running = await self._seen_running(spec)
        if running is None:
            async with conn.transaction():
                await store.set_fields(conn, spec.name, error=error)
            return
        state = store.RUNNING if running else store.FAILED
        await self._record(conn, spec.name, state, flag=flag, error=error)

    async def update(self, name: str) -> AgentInfo:
        """Rebuilds from the applied working tree (restarting a running agent).

        Raises:
            BackendFailed: the build failed; a running agent keeps its config.
        """
        async with self.operation(name, "update", REBUILDING) as conn:
            row = await self._container(conn, name)
            row = await self._rebuild(conn, row)
            return self.info(row)

    async def _rebuild(self, conn: asyncpg.Connection, row: store.AgentRow) -> store.AgentRow:
        spec = self.spec(row)
        was_running = row.state == store.RUNNING
        try:
            await self.backend.update(spec, running=was_running)
        except BackendFailed as exc:
            if not was_running or await self._seen_running(spec) is not False:
                async with conn.transaction():
                    await store.set_fields(conn, row.name, error=str(exc)[:4000])
            else:
                await self._after_failure(conn, spec, REBUILDING, exc)
            raise
        state = store.RUNNING if was_running else row.state
        return await self._record(
            conn, row.name, state, flag=REBUILDING, always=True, rev=self.rev, error=""
        )

    async def apply(self, name: str) -> ApplyReply:
        """Approvals moved the applied tree: rebuild; a failure is a reply, not an error."""
        try:
            await self.update(name)
        except BackendFailed as exc:
            return ApplyReply(ok=False, error=str(exc))
        return ApplyReply(ok=True)

    async def destroy(self, name: str, *, purge: bool = False) -> None:
        async with self.operation(name, "destroy", DESTROYING) as conn:
            row = await self._live(conn, name)
            spec = self.spec(row)
            if row.state != store.DRAFT:
                try:
                    await self.backend.destroy(spec)
                except BackendFailed as exc:
                    await self._after_failure(conn, spec, DESTROYING, exc)
                    raise
            await creds.revoke(self.settings, name)
            kept = await asyncio.to_thread(self._remove_files, spec.paths, purge)
            after = [make_event(AgentDestroyed(purged=purge), agent=name)]
            if purge:
                after.append(make_event(AgentPurged(), agent=name))
            await self._record(
                conn,
                name,
                store.DESTROYED,
                flag=DESTROYING,
                after=after,
                port=None,
                kept_state=kept,
            )
            try:
                await self.kv.delete(subjects.heartbeat_key(name))
            except Exception:
                pass  # no heartbeat was ever written

    def _remove_files(self, paths: AgentPaths, purge: bool) -> bool:
        """Removes a destroyed agent's files. Returns whether a state is kept.

        A state dir with nothing in it is no kept state: it goes with the rest
        (destroy and a failed create agree on this).
        """
        if not purge:
            for d in (paths.proposed, paths.applied, paths.run, paths.workdir, paths.creds):
                repos.remove(d)
            repos.remove(paths.root / "flake")
            if _has_state(paths):
                return True
        repos.remove(paths.root)
        return False

    async def purge(self, name: str) -> None:
        """Deletes a destroyed agent's kept state."""
        async with self.operation(name, "purge") as conn:
            row = await store.get(conn, name)
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            if row.live:
                raise Conflict(f"agent {name} is not destroyed; destroy it with --purge")
            if not row.kept_state:
                raise NotFound(f"agent {name} has no kept state")
            await asyncio.to_thread(repos.remove, self.paths(name).root)
            async with conn.transaction():
                await store.set_fields(conn, name, kept_state=False)
                await outbox.add(conn, make_event(AgentPurged(), agent=name))
            if self.relay is not None:
                self.relay.kick()

    # --- background -----------------------------------------------------------

    async def clear_leftover_flags(self) -> None:
        """Deletes the flags a lifecycle that died mid-operation left in the bucket.

        Each under the agent's lock, so an operation of another lifecycle
        instance keeps its flag until it is done.
        """
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return
        for key in keys:
            name = key.partition(".")[2]
            try:
                if key != subjects.flag_key(name):
                    continue  # a heartbeat
            except ValueError:
                continue  # not a key of ours
            try:
                async with self.operation(name, "reconcile"):
                    await self.kv.delete(key)
                log.warning("deleted %s's leftover transient flag", name)
            except HiveError as exc:
                log.warning("could not clear %s's leftover flag: %s", name, exc)

    async def reconcile(self) -> None:
        """At start: clear leftover flags, adopt running containers, restart
        those that should run."""
        await self.clear_leftover_flags()
        rows = await store.list_agents(
            self.pool, (store.RUNNING, store.STOPPED, store.FAILED, store.CREATING)
        )
        for row in rows:
            spec = self.spec(row)
            try:
                actual = await self.backend.state(spec)
            except HiveError as exc:
                log.warning("cannot see %s's container: %s", row.name, exc)
                continue
            if row.state == store.CREATING:
                async with self.operation(row.name, "reconcile") as conn:
                    await self._record(
                        conn, row.name, store.FAILED, error="interrupted while being created"
                    )
            elif actual == RUNNING:
                if row.state != store.RUNNING:
                    async with self.operation(row.name, "reconcile") as conn:
                        await self._record(conn, row.name, store.RUNNING)
                else:
                    self._running[row.name] = spec
                log.info("adopted %s's running container", row.name)
            elif row.state == store.RUNNING:
                log.info("%s should run but does not: starting it", row.name)
                try:
                    async with self.operation(row.name, "reconcile", RESTARTING) as conn:
                        try:
                            await self.backend.start(spec)
                            self._running[row.name] = spec
                        except BackendFailed as exc:
                            await self._record(
                                conn, row.name, store.FAILED, flag=RESTARTING, error=str(exc)
                            )
                except HiveError as exc:
                    log.warning("could not restart %s: %s", row.name, exc)

    async def monitor(self) -> None:
        """Notices a container that stopped by itself, and records it at once."""
        while True:
            await asyncio.sleep(self.backend.poll_interval_s)
            for name, spec in list(self._running.items()):
                if name in self._busy:
                    continue
                try:
                    if await self.backend.state(spec) == RUNNING:
                        continue
                except HiveError as exc:  # unknown is not stopped: no crash
                    log.warning("cannot see %s's container: %s", name, exc)
                    continue
                try:
                    await self._notice_exit(name, spec)
                except HiveError as exc:
                    log.warning("could not record %s's exit: %s", name, exc)

    async def _notice_exit(self, name: str, spec: AgentSpec) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked():
            return  # an operation is under way; it records the outcome
        async with self.operation(name, "monitor") as conn:
            row = await store.get(conn, name)
            if row is None or row.state != store.RUNNING:
                self._running.pop(name, None)
                return
            if await self.backend.state(spec) == RUNNING:
                return
            exit_ = self.backend.last_exit(spec)
            log.warning("%s's container stopped by itself: %s", name, exit_.detail)
            await self._record(
                conn,
                name,
                store.STOPPED,
                data={"exit_code": exit_.code, "detail": exit_.detail},
                error=exit_.detail,
            )

    async def auto_update(self) -> None:
        """Creates the manager again if it was destroyed, and rebuilds every
        container whose recorded hyperhive revision is stale."""
        try:
            await self.ensure_manager()
        except HiveError as exc:
            log.warning("could not create the manager %s: %s", self.manager, exc)
        rows = await store.list_agents(self.pool, (store.RUNNING, store.STOPPED))
        for row in rows:
            if row.rev == self.rev:
                continue
            log.info("rebuilding %s: revision %s → %s", row.name, row.rev or "-", self.rev)
            try:
                async with self.operation(row.name, "auto-update", REBUILDING) as conn:
                    current = await store.get(conn, row.name)
                    if current is None or current.state not in (store.RUNNING, store.STOPPED):
                        continue
                    await self._rebuild(conn, current)
            except HiveError as exc:
                log.warning("auto-update of %s failed: %s", row.name, exc)

    async def auto_update_loop(self) -> None:
        interval = self.settings.lifecycle.auto_update_interval_s
        while True:
            try:
                await self.auto_update()
            except Exception:
                log.exception("auto-update pass failed")
            await asyncio.sleep(max(1.0, interval))


def _has_state(paths: AgentPaths) -> bool:
    """The state dir exists and holds something."""
    return paths.state.is_dir() and any(paths.state.iterdir())


def _read_notes(state: Path, name: str, history: bool, version: int | None) -> NotesReply:
    reply = NotesReply(name=name, version=version)
    log = agent_notes.read_file(
        state, *agent_notes.history_parts(), agent_notes.LOG_FILE, limit=16 * 1024 * 1024
    )
    versions = agent_notes.parse_log(log[0]) if log else []
    if history:  # the list only (the newest MAX_LISTED), no text
        reply.versions = versions[-agent_notes.MAX_LISTED :]
        reply.exists = bool(versions)
        return reply
    if version is None:
        found = agent_notes.read_file(state, agent_notes.NOTES_FILE)
    elif any(v.v == version for v in versions):
        found = agent_notes.read_file(
            state, *agent_notes.history_parts(), agent_notes.version_name(version)
        )
    else:
        raise NotFound(f"{name} has no notes version {version}")
    if found is not None:
        data, size = found
        reply.exists = True
        reply.text = data.decode(errors="replace")
        reply.bytes = size
        reply.truncated = size > len(data)
    return reply


def _du(root: Path) -> int:
    """Bytes in the files under ``root``."""
    total = 0
    if not root.exists():
        return 0
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


__all__ = ["DESTROYING", "REBUILDING", "RESTARTING", "STOPPING", "Lifecycle"]
