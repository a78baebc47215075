"""Keeping agents current: the manager exists, containers match this revision.

Every ``lifecycle.auto_update_interval_s`` (and at start): the manager is
created again if it was destroyed (with its kept state), and every container
whose recorded hyperhive revision differs from the running one is rebuilt,
on whichever node it runs (not on a lost one: it is rebuilt once it is back).
"""

from __future__ import annotations

import asyncio
import logging

from hyperhive.common.errors import HiveError
from hyperhive.common.wire.states import REBUILDING
from hyperhive.lifecycle import store
from hyperhive.lifecycle.core import Lifecycle

log = logging.getLogger(__name__)


async def ensure_manager(lc: Lifecycle) -> None:
    """Creates the manager when it is missing (not when ``manager`` is empty).

    Called at start and at every auto-update pass: the operator may destroy
    the manager (to reset it, say); it comes back, with its kept state, at
    the next pass (``lifecycle.auto_update_interval_s``).
    """
    if not lc.manager:
        return
    async with lc.pool.acquire() as conn:
        row = await store.get(conn, lc.manager)
    if row is not None and row.live:
        return
    log.info("creating the manager %s", lc.manager)
    await lc.create(lc.manager, manager=True)


async def auto_update(lc: Lifecycle) -> None:
    """One pass: the manager, then every stale container."""
    try:
        await ensure_manager(lc)
    except HiveError as exc:
        log.warning("could not create the manager %s: %s", lc.manager, exc)
    rows = await store.list_agents(lc.pool, (store.RUNNING, store.STOPPED))
    for row in rows:
        if row.rev == lc.rev or row.node in lc.reg.lost_nodes:
            continue
        log.info("rebuilding %s: revision %s → %s", row.name, row.rev or "-", lc.rev)
        try:
            async with lc.reg.operation(row.name, "auto-update", REBUILDING) as conn:
                current = await store.get(conn, row.name)
                if current is None or current.state not in (store.RUNNING, store.STOPPED):
                    continue
                await lc.rebuild(conn, current)
        except HiveError as exc:
            log.warning("auto-update of %s failed: %s", row.name, exc)


async def auto_update_loop(lc: Lifecycle) -> None:
    interval = lc.settings.lifecycle.auto_update_interval_s
    while True:
        try:
            await auto_update(lc)
        except Exception:
            log.exception("auto-update pass failed")
        await asyncio.sleep(max(1.0, interval))


__all__ = ["auto_update", "auto_update_loop", "ensure_manager"]
