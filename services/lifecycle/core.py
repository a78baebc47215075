"""Lifecycle's operations on agents: the control half.

The registry (:mod:`.registry`) says which operation may run and records its
outcome; placement (:mod:`.placement`) picks a node for a new agent; the
container work happens on the agent's node (:mod:`.node`), reached through a
link (:mod:`.links`): in-process for the node ``hive serve lifecycle`` runs,
over NATS for the others. The repos (proposed, applied) and the NATS
credentials stay here, on the hub; a node gets the deployed tree and the
agent's seed in the request. Noticing exits and lost nodes is
:mod:`.nodes`'s, rebuilding stale agents :mod:`.autoupdate`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from nats.aio.client import Client as NATS

from hyperhive.common import outbox, subjects
from hyperhive.common.errors import (
    BackendFailed,
    BadRequest,
    Conflict,
    HiveError,
    NotFound,
    RequestTimeout,
    Unavailable,
)
from hyperhive.common.outbox import make_event
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.events import (
    AgentCreated,
    AgentDestroyed,
    AgentDrafted,
    AgentPurged,
    AgentStateChanged,
)
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    ApplyReply,
    ConfigReply,
    DraftInfo,
    KeptState,
    LogsReply,
    NotesReply,
)
from hyperhive.common.wire.node import NodeAgentSpec, NodeExit, NodeListReply
from hyperhive.common.wire.states import DESTROYING, REBUILDING, RESTARTING, STOPPING, AgentFlag
from hyperhive.lifecycle import agentconf, creds, placement, ports, repos, store
from hyperhive.lifecycle.backends.base import RUNNING
from hyperhive.lifecycle.links import LocalLink, NodeLink, RemoteLink
from hyperhive.lifecycle.node import NodeAgent, pack_tree
from hyperhive.lifecycle.registry import Registry

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_LOG_LINES = 10_000


class Lifecycle:
    """The control half: registry rows, repos, credentials, and the nodes' links."""

    def __init__(self, reg: Registry, nc: NATS | None, local: NodeAgent) -> None:
        self.reg = reg
        self.settings = reg.settings
        self.pool = reg.pool
        self.rev = reg.rev
        self.manager = reg.manager
        self.nc = nc
        self.local = LocalLink(local, reg.settings)
        self.backend_name = local.backend.name
        self._links: dict[str, NodeLink] = {local.name: self.local}
        self.up_nodes: set[str] = {local.name}  # kept by .nodes from the heartbeats

    # --- helpers --------------------------------------------------------------

    def paths(self, name: str) -> AgentPaths:
        return AgentPaths.of(self.settings, name)

    def link(self, node: str) -> NodeLink:
        link = self._links.get(node)
        if link is None:
            if self.nc is None:
                raise NotFound(f"no node named {node!r}")
            link = self._links[node] = RemoteLink(node, self.settings, self.nc)
        return link

    async def _tree(self, link: NodeLink, paths: AgentPaths) -> tuple[bytes | None, str]:
        """The deployed tree a node on another host gets (none for the local one)."""
        if link.shared:
            return None, ""
        sha, files = await asyncio.to_thread(repos.worktree_files, paths.applied)
        return await asyncio.to_thread(pack_tree, files), sha

    # --- reads ----------------------------------------------------------------

    async def list(self, include_destroyed: bool = False) -> list[AgentInfo]:
        rows = await store.list_agents(self.pool)
        hidden = {store.DRAFT} if include_destroyed else {store.DRAFT, store.DESTROYED}
        return [self.reg.info(r) for r in rows if r.state not in hidden]

    async def get(self, name: str) -> AgentInfo:
        async with self.pool.acquire() as conn:
            row = await store.get(conn, name)
        if row is None or row.state in (store.DESTROYED, store.DRAFT):
            raise NotFound(f"no agent named {name!r}")
        return self.reg.info(row)

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
        """Destroyed agents' kept state dirs, each with its size as the node
        that keeps it reports (all nodes asked at once; a lost one is an error)."""
        rows = [r for r in await store.list_agents(self.pool, (store.DESTROYED,)) if r.kept_state]
        by_node: dict[str, list[str]] = {}
        for r in rows:
            by_node.setdefault(r.node, []).append(r.name)
        replies = await asyncio.gather(
            *(
                self._ask_node(node, "kept states", lambda link, n=names: link.kept(n))
                for node, names in by_node.items()
            )
        )
        sizes = {(reply.node, k.name): k.bytes for reply in replies for k in reply.kept}
        return [
            KeptState(
                name=r.name,
                destroyed_at=r.destroyed_at,
                bytes=sizes.get((r.node, r.name), 0),
                node=r.node,
            )
            for r in rows
        ]

    async def _ask_node(self, node: str, what: str, ask: Callable[[NodeLink], Awaitable[T]]) -> T:
        """``ask(link)`` of ``node``, or an ``unavailable`` error that names the
        node (a lost node is not asked: its files are out of reach, not gone)."""
        if node in self.reg.lost_nodes:
            raise Unavailable(f"node {node} is lost: {what} on it cannot be read until it is back")
        try:
            return await ask(self.link(node))
        except (Unavailable, RequestTimeout) as exc:
            raise Unavailable(f"node {node} does not answer: {what} on it: {exc}") from None

    async def logs(self, name: str, lines: int, after: int | None, cursor: str) -> LogsReply:
        async with self.pool.acquire() as conn:
            row = await self.reg.live(conn, name)
        if row.state == store.DRAFT:
            return LogsReply()
        lines = max(0, min(lines, MAX_LOG_LINES))
        return await self.link(row.node).logs(self.reg.agent(row), lines, after, cursor)

    async def config(self, name: str) -> ConfigReply:
        async with self.pool.acquire() as conn:
            row = await self.reg.live(conn, name)
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
        # the state dir is on the agent's node (a draft's on the hub)
        node = self.local.node if row.state == store.DRAFT else row.node
        agent = self.reg.agent(row)
        return await self._ask_node(
            node, f"{name}'s notes", lambda link: link.notes(agent, history, version)
        )

    # --- creating -------------------------------------------------------------

    async def draft(self, name: str, reuse_state: bool = True) -> DraftInfo:
        """A proposed repo (default commit), an empty applied repo, a state dir."""
        async with self.reg.operation(name, "draft") as conn:
            row = await store.get(conn, name)
            if row is not None and row.live:
                raise Conflict(f"agent {name} already exists ({row.state})")
            paths = self.paths(name)
            await asyncio.to_thread(_prepare_dirs, paths, reuse_state)
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
                    backend=self.backend_name,
                    node=self.local.node,
                )
                await outbox.add(conn, make_event(AgentDrafted(head=head), agent=name))
            self.reg.kick()
            await self.local.expose(name)
            return DraftInfo(name=name, created_at=row.created_at, head=head)

    async def create(
        self,
        name: str,
        *,
        sha: str | None = None,
        reuse_state: bool = True,
        manager: bool = False,
        host: str = "",
    ) -> AgentInfo:
        """Registers, places, provisions and starts an agent (or a draft's container).

        Raises:
            Conflict: the agent exists.
            BadRequest, NotFound, Unavailable: ``host`` is no node that is up.
            BackendFailed: the build or start failed; the registry is as before.
        """
        async with self.reg.operation(name, "create") as conn:
            row = await store.get(conn, name)
            if row is not None and row.live and row.state != store.DRAFT:
                raise Conflict(f"agent {name} already exists ({row.state})")
            was_draft = row is not None and row.state == store.DRAFT
            paths = self.paths(name)
            if sha is not None and not (was_draft and repos.exists(paths.applied)):
                raise BadRequest(f"agent {name} has no draft to create from commit {sha}")
            node = await placement.pick(
                conn, host, up=self.up_nodes, local=self.local.node, manager=manager
            )
            link = self.link(node)
            if not was_draft:
                await asyncio.to_thread(_prepare_dirs, paths, reuse_state)
                await asyncio.to_thread(
                    repos.init_with_files,
                    paths.proposed,
                    agentconf.default_files(),
                    f"{name}: default config",
                )
            if sha is None:
                await asyncio.to_thread(repos.deploy_default, paths.applied, paths.proposed)
            row = await self._register(conn, name, manager, node)
            agent = self.reg.agent(row)
            try:
                seed = await creds.issue(self.settings, name)
                tree, tree_sha = await self._tree(link, paths)
                await link.create(
                    agent,
                    seed="" if link.shared else seed.decode(),
                    tree=tree,
                    sha=tree_sha,
                    fresh_state=not reuse_state,
                )
                await link.start(agent)
                if not manager and not was_draft:
                    await self.local.expose(name)
            except Exception as exc:
                await self._undo_create(conn, agent, link, was_draft, exc)
                if isinstance(exc, BackendFailed):
                    raise
                if isinstance(exc, HiveError):
                    raise BackendFailed(f"creating {name} failed: {exc}") from exc
                raise
            row = await self.reg.record(
                conn,
                name,
                store.RUNNING,
                before=[
                    make_event(
                        AgentCreated(
                            agent_kind=row.kind, port=row.port, backend=self.backend_name, node=node
                        ),
                        agent=name,
                    )
                ],
            )
            return self.reg.info(row)

    async def _register(
        self, conn: asyncpg.Connection, name: str, manager: bool, node: str
    ) -> store.AgentRow:
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
                        backend=self.backend_name,
                        node=node,
                    )
                    await outbox.add(
                        conn,
                        make_event(
                            AgentStateChanged(state=store.CREATING, seq=row.state_seq),
                            agent=name,
                        ),
                    )
                return row
            except asyncpg.UniqueViolationError:
                if manager:
                    raise Conflict(f"manager port {port} is taken by another agent") from None
                continue  # another agent took the port meanwhile: pick again
        raise Conflict(f"could not find a free port for {name}")

    async def _undo_create(
        self,
        conn: asyncpg.Connection,
        agent: NodeAgentSpec,
        link: NodeLink,
        was_draft: bool,
        exc: BaseException,
    ) -> None:
        """Leaves the registry and the files as they were before a failed create."""
        name = agent.name
        log.warning("create of %s failed: %s", name, exc)
        seed = await asyncio.to_thread(creds.read_seed, self.settings, name)
        kept = False
        try:
            kept = await link.destroy(agent)
        except Exception as cleanup:
            log.warning("cleanup of %s's container failed: %s", name, cleanup)
        try:
            await creds.revoke(self.settings, name, seed)
        except Exception as cleanup:
            log.warning("revoking %s's credentials failed: %s", name, cleanup)
        error = str(exc)[:4000]
        if was_draft:
            await self.reg.record(conn, name, store.DRAFT, port=None, error=error)
            return
        await asyncio.to_thread(_remove_hub_files, self.paths(name), kept and link.shared)
        await self.reg.record(conn, name, store.DESTROYED, port=None, error=error, kept_state=kept)

    # --- container operations -------------------------------------------------

    async def start(self, name: str) -> AgentInfo:
        async with self.reg.operation(name, "start") as conn:
            row = await self.reg.container(conn, name)
            agent, link = self.reg.agent(row), self.link(row.node)
            try:
                await link.start(agent)
            except BackendFailed as exc:
                await self._after_failure(conn, row, None, exc)
                raise
            row = await self.reg.record(conn, name, store.RUNNING, error="")
            return self.reg.info(row)

    async def stop(self, name: str, *, kill: bool = False) -> AgentInfo:
        async with self.reg.operation(name, "kill" if kill else "stop", STOPPING) as conn:
            row = await self.reg.container(conn, name)
            try:
                await self.link(row.node).stop(self.reg.agent(row), kill=kill)
            except BackendFailed as exc:
                await self._after_failure(conn, row, STOPPING, exc)
                raise
            row = await self.reg.record(conn, name, store.STOPPED, flag=STOPPING, error="")
            return self.reg.info(row)

    async def restart(self, name: str) -> AgentInfo:
        async with self.reg.operation(name, "restart", RESTARTING) as conn:
            row = await self.reg.container(conn, name)
            try:
                await self.link(row.node).restart(self.reg.agent(row))
            except BackendFailed as exc:
                await self._after_failure(conn, row, RESTARTING, exc)
                raise
            row = await self.reg.record(conn, name, store.RUNNING, flag=RESTARTING, always=True)
            return self.reg.info(row)

    async def _seen_running(self, row: store.AgentRow) -> bool | None:
        """Whether the container runs; None when its node cannot tell."""
        try:
            reply = await self.link(row.node).state(self.reg.agent(row))
        except HiveError as exc:
            log.warning("cannot see %s's container: %s", row.name, exc)
            return None
        return reply.state == RUNNING

    async def _after_failure(
        self, conn: asyncpg.Connection, row: store.AgentRow, flag: AgentFlag | None, exc: HiveError
    ) -> None:
        """Records what the container is left in after a failed operation.

        Running → ``running``, else ``failed`` (with the operation's flag, so a
        stop that failed halfway is no crash); when the node cannot tell, the
        state stays as it was. The error is kept either way.
        """
        error = str(exc)[:4000]
        running = await self._seen_running(row)
        if running is None:
            async with conn.transaction():
                await store.set_fields(conn, row.name, error=error)
            return
        state = store.RUNNING if running else store.FAILED
        await self.reg.record(conn, row.name, state, flag=flag, error=error)

    async def update(self, name: str) -> AgentInfo:
        """Rebuilds from the applied working tree (restarting a running agent).

        Raises:
            BackendFailed: the build failed; a running agent keeps its config.
        """
        async with self.reg.operation(name, "update", REBUILDING) as conn:
            row = await self.reg.container(conn, name)
            row = await self.rebuild(conn, row)
            return self.reg.info(row)

    async def rebuild(self, conn: asyncpg.Connection, row: store.AgentRow) -> store.AgentRow:
        """The rebuild of an update or an auto-update, under the agent's operation."""
        was_running = row.state == store.RUNNING
        link = self.link(row.node)
        agent = NodeAgentSpec(name=row.name, port=row.port or 0, manager=row.manager, rev=self.rev)
        try:
            tree, sha = await self._tree(link, self.paths(row.name))
            await link.update(agent, running=was_running, tree=tree, sha=sha)
        except BackendFailed as exc:
            if not was_running or await self._seen_running(row) is not False:
                async with conn.transaction():
                    await store.set_fields(conn, row.name, error=str(exc)[:4000])
            else:
                await self._after_failure(conn, row, REBUILDING, exc)
            raise
        state = store.RUNNING if was_running else row.state
        return await self.reg.record(
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
        async with self.reg.operation(name, "destroy", DESTROYING) as conn:
            row = await self.reg.live(conn, name)
            agent = self.reg.agent(row)
            # a draft has no container; its (empty) state dir is on the hub
            link = self.local if row.state == store.DRAFT else self.link(row.node)
            seed = await asyncio.to_thread(creds.read_seed, self.settings, name)
            try:
                kept = await link.destroy(agent, purge=purge, container=row.state != store.DRAFT)
            except BackendFailed as exc:
                await self._after_failure(conn, row, DESTROYING, exc)
                raise
            await creds.revoke(self.settings, name, seed)
            await asyncio.to_thread(_remove_hub_files, self.paths(name), kept and link.shared)
            after = [make_event(AgentDestroyed(purged=purge), agent=name)]
            if purge:
                after.append(make_event(AgentPurged(), agent=name))
            await self.reg.record(
                conn,
                name,
                store.DESTROYED,
                flag=DESTROYING,
                after=after,
                port=None,
                kept_state=kept,
            )
            try:
                await self.reg.kv.delete(subjects.heartbeat_key(name))
            except Exception:
                pass  # no heartbeat was ever written

    async def purge(self, name: str) -> None:
        """Deletes a destroyed agent's kept state (on the node that keeps it)."""
        async with self.reg.operation(name, "purge") as conn:
            row = await store.get(conn, name)
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            if row.live:
                raise Conflict(f"agent {name} is not destroyed; destroy it with --purge")
            if not row.kept_state:
                raise NotFound(f"agent {name} has no kept state")
            await self.link(row.node).destroy(self.reg.agent(row), purge=True, container=False)
            await asyncio.to_thread(repos.remove, self.paths(name).root)
            async with conn.transaction():
                await store.set_fields(conn, name, kept_state=False)
                await outbox.add(conn, make_event(AgentPurged(), agent=name))
            self.reg.kick()

    # --- what the nodes report ------------------------------------------------

    async def reconcile_node(self, node: str, held: NodeListReply) -> tuple[list[str], list[str]]:
        """Matches a node's containers to the registry rows placed on it:
        running ones are adopted (never started twice), rows that should run
        are started again, a create that was cut short is failed. Returns
        ``(adopted, restarted)``."""
        states = {c.name: c.state for c in held.containers}
        rows = await store.list_agents(
            self.pool, (store.RUNNING, store.STOPPED, store.FAILED, store.CREATING)
        )
        link = self.link(node)
        adopted: list[str] = []
        restarted: list[str] = []
        for row in rows:
            if row.node != node:
                continue
            agent = self.reg.agent(row)
            try:
                if row.state == store.CREATING:
                    async with self.reg.operation(row.name, "reconcile") as conn:
                        await self.reg.record(
                            conn, row.name, store.FAILED, error="interrupted while being created"
                        )
                elif states.get(row.name) == RUNNING:
                    async with self.reg.operation(row.name, "reconcile") as conn:
                        await link.start(agent)  # a running one: only watched from now on
                        if row.state != store.RUNNING:
                            await self.reg.record(conn, row.name, store.RUNNING)
                    adopted.append(row.name)
                    log.info("adopted %s's running container on %s", row.name, node)
                elif row.state == store.RUNNING:
                    log.info("%s should run on %s but does not: starting it", row.name, node)
                    async with self.reg.operation(row.name, "reconcile", RESTARTING) as conn:
                        try:
                            await link.start(agent)
                            restarted.append(row.name)
                        except BackendFailed as exc:
                            await self.reg.record(
                                conn, row.name, store.FAILED, flag=RESTARTING, error=str(exc)
                            )
            except HiveError as exc:
                log.warning("could not reconcile %s on %s: %s", row.name, node, exc)
        return adopted, restarted

    async def notice_exit(self, node: str, name: str, exit_: NodeExit | None) -> None:
        """A node saw ``name``'s container stop by itself: record it at once
        (crash-watch reads the ``agent.state`` event without a flag)."""
        if self.reg.locked(name):
            return  # an operation is under way; it records the outcome
        async with self.reg.operation(name, "monitor") as conn:
            row = await store.get(conn, name)
            if row is None or row.state != store.RUNNING or row.node != node:
                return
            try:
                seen = await self.link(node).state(self.reg.agent(row))
            except HiveError as exc:  # unknown is not stopped: no crash
                log.warning("cannot see %s's container: %s", name, exc)
                return
            if seen.state == RUNNING:
                return
            code = exit_.exit_code if exit_ is not None else seen.exit_code
            detail = (exit_.detail if exit_ is not None else "") or seen.detail
            log.warning("%s's container stopped by itself: %s", name, detail)
            await self.reg.record(
                conn,
                name,
                store.STOPPED,
                data={"exit_code": code, "detail": detail},
                error=detail,
            )


def _prepare_dirs(paths: AgentPaths, reuse: bool) -> None:
    """Clears what a previous life of the name left, except a reused state dir."""
    for d in (paths.proposed, paths.applied, paths.run, paths.workdir, paths.creds):
        repos.remove(d)
    repos.remove(paths.root / "flake")
    if not reuse:
        repos.remove(paths.state)
    paths.state.mkdir(parents=True, exist_ok=True)


def _remove_hub_files(paths: AgentPaths, state_kept_here: bool) -> None:
    """Removes the hub's files of a destroyed agent (its repos, its seed);
    the root goes too unless its kept state lives in it (the local node)."""
    for d in (paths.proposed, paths.applied, paths.run):
        repos.remove(d)
    if not state_kept_here:
        repos.remove(paths.root)


__all__ = ["Lifecycle"]
