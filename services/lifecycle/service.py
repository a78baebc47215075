"""Lifecycle service wiring: the registry, the backend, background loops."""

from __future__ import annotations

import logging

from hyperhive.common.service import Runtime, hyperhive_version
from hyperhive.lifecycle.backends import make_backend
from hyperhive.lifecycle.core import Lifecycle
from hyperhive.lifecycle.handlers import Handlers
from hyperhive.lifecycle.join import Joins

log = logging.getLogger(__name__)


async def start(rt: Runtime) -> None:
    """Adopts or restarts agents, creates the manager, serves the subjects."""
    assert rt.pool is not None
    backend = make_backend(rt.settings)
    rev = rt.settings.lifecycle.rev or hyperhive_version()
    lc = Lifecycle(rt.settings, rt.pool, rt.kv, rt.outbox, backend, rev)
    await lc.reconcile()
    rt.spawn(lc.monitor(), "lifecycle-monitor")
    # joining nodes (docs/multihost.md); the node registry records them once
    # it exists (branch `node`): pass its register function here
    joins = Joins(rt.settings)
    await rt.serve_all({**Handlers(lc).endpoints(), **joins.endpoints()})
    rt.spawn(joins.sweep_loop(), "join-token-sweep")
    try:
        await lc.ensure_manager()
    except Exception:  # the service still serves; `hive spawn hm1nd` can retry
        log.exception("could not create the manager")
    rt.spawn(lc.auto_update_loop(), "lifecycle-auto-update")
