"""The agent registry's rules: one operation per agent, states, flags, events.

Every operation on one agent runs under that agent's lock (an asyncio lock in
this process plus a Postgres advisory lock, so a second lifecycle instance
cannot interleave either): a second operation waits up to
``lifecycle.op_wait_s`` and then gets ``Conflict``. Operations that stop a
running container set a transient flag (``flag.<n>`` in the KV bucket, with
the time it was set, and in the ``agent.state`` event) so that crash-watch can
tell them from a crash. A flag left by a lifecycle that died in the middle of
an operation is deleted at the next start (:meth:`Registry.clear_leftover_flags`),
and crash-watch ignores one older than ``crashwatch.flag_max_age_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import msgspec
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from hyperhive.common import outbox, subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import Conflict, HiveError, NotFound
from hyperhive.common.outbox import OutboxRelay, make_event
from hyperhive.common.wire.events import AgentStateChanged, HiveEvent
from hyperhive.common.wire.lifecycle import AgentInfo, TransientFlag
from hyperhive.common.wire.node import NodeAgentSpec
from hyperhive.common.wire.states import (
    AgentFlag,
    AgentState,
)
from hyperhive.lifecycle import store

log = logging.getLogger(__name__)

_LOCK_SPACE = 0x48495645  # "HIVE": first key of the per-agent advisory locks
_encoder = msgspec.json.Encoder()


class Registry:
    """Rows of ``lifecycle.agents``, the per-agent locks and transient flags."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        kv: KeyValue,
        relay: OutboxRelay | None,
        rev: str,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.kv = kv
        self.relay = relay
        self.rev = rev
        self.manager = settings.lifecycle.manager
        self._locks: dict[str, asyncio.Lock] = {}
        self.busy: dict[str, str] = {}  # name → operation in progress
        self._flags: dict[str, str] = {}  # name → transient flag
        self.lost_nodes: set[str] = set()  # nodes whose heartbeat stopped

    # --- rows -----------------------------------------------------------------

    @staticmethod
    def agent(row: store.AgentRow) -> NodeAgentSpec:
        """What the row's node needs to know of it."""
        return NodeAgentSpec(name=row.name, port=row.port or 0, manager=row.manager, rev=row.rev)

    def info(self, row: store.AgentRow) -> AgentInfo:
        placed = row.state not in (store.DRAFT, store.DESTROYED)
        return AgentInfo(
            name=row.name,
            kind=row.kind,
            state=row.state,
            port=row.port or 0,
            rev=row.rev,
            stale=row.rev != self.rev and placed,
            flag=self._flags.get(row.name),
            state_flag=row.state_flag or None,
            created_at=row.created_at,
            destroyed_at=row.destroyed_at,
            kept_state=row.kept_state,
            backend=row.backend,
            state_seq=row.state_seq,
            state_since=row.state_since,
            error=row.error,
            node=row.node,
            node_state=("lost" if row.node in self.lost_nodes else "up") if placed else "",
        )

    async def live(self, conn: asyncpg.Connection, name: str) -> store.AgentRow:
        row = await store.get(conn, name)
        if row is None or not row.live:
            raise NotFound(f"no agent named {name!r}")
        return row

    async def container(self, conn: asyncpg.Connection, name: str) -> store.AgentRow:
        row = await self.live(conn, name)
        if row.state == store.DRAFT:
            raise Conflict(f"agent {name} is a draft: it has no container yet")
        if row.state == store.CREATING:
            raise Conflict(f"agent {name} is still being created")
        return row

    # --- one operation at a time ----------------------------------------------

    def locked(self, name: str) -> bool:
        lock = self._locks.get(name)
        return lock is not None and lock.locked()

    @asynccontextmanager
    async def operation(
        self, name: str, op: str, flag: AgentFlag | None = None
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
            busy = self.busy.get(name, "another operation")
            raise Conflict(f"agent {name} is busy ({busy}); try again later") from None
        try:
            async with self.pool.acquire() as conn:
                await self._advisory_lock(conn, name, wait_s)
                self.busy[name] = op
                try:
                    if flag:
                        await self._set_flag(name, flag)
                    try:
                        yield conn
                    finally:
                        if flag:
                            await self._clear_flag(name)
                finally:
                    self.busy.pop(name, None)
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

    async def _set_flag(self, name: str, flag: AgentFlag) -> None:
        self._flags[name] = flag
        value = TransientFlag(flag=flag, since=time.time())
        await self.kv.put(subjects.flag_key(name), _encoder.encode(value))

    async def _clear_flag(self, name: str) -> None:
        self._flags.pop(name, None)
        try:
            await self.kv.delete(subjects.flag_key(name))
        except Exception as exc:  # NATS down: a stale flag only hides a crash report
            log.warning("could not clear flag of %s: %s", name, exc)

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

    # --- state changes --------------------------------------------------------

    async def record(
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
        self.kick()
        return row

    async def emit(self, conn: asyncpg.Connection | asyncpg.Pool, events: list[HiveEvent]) -> None:
        """Commits events that change no agent row (a node's), then kicks the relay."""
        if isinstance(conn, asyncpg.Pool):
            async with conn.acquire() as c, c.transaction():
                await outbox.add_many(c, events)
        else:
            async with conn.transaction():
                await outbox.add_many(conn, events)
        self.kick()

    def kick(self) -> None:
        if self.relay is not None:
            self.relay.kick()


__all__ = ["Registry"]
