"""Lifecycle service wiring: the control half and the hub's in-process node."""

from __future__ import annotations

import logging

from hyperhive.common.service import Runtime, hyperhive_version
from hyperhive.common.wire.base import Empty
from hyperhive.lifecycle.autoupdate import auto_update_loop, ensure_manager
from hyperhive.lifecycle.backends import make_backend
from hyperhive.lifecycle.core import Lifecycle
from hyperhive.lifecycle.handlers import Handlers
from hyperhive.lifecycle.join import Joins
from hyperhive.lifecycle.node import NodeAgent
from hyperhive.lifecycle.nodes import Nodes
from hyperhive.lifecycle.registry import Registry

log = logging.getLogger(__name__)


async def start(rt: Runtime) -> None:
    """Adopts or restarts agents, creates the manager, serves the subjects."""
    assert rt.pool is not None and rt.kv is not None
    backend = make_backend(rt.settings)
    rev = rt.settings.lifecycle.rev or hyperhive_version()
    node = NodeAgent(rt.settings, backend, rev, shared=True)
    reg = Registry(rt.settings, rt.pool, rt.kv, rt.outbox, rev)
    lc = Lifecycle(reg, rt.nc, node)
    nodes = Nodes(lc, rt.nc, rt.kv)
    await nodes.load()
    await reg.clear_leftover_flags()
    await node.adopt()
    await lc.reconcile_node(node.name, await node.list(Empty()))
    rt.spawn(node.monitor(), "node-monitor")

    async def publish(subject: str, data: bytes) -> None:
        await rt.nc.publish(subject, data)

    rt.spawn(node.heartbeat_loop(publish), "node-heartbeat")
    rt.spawn(nodes.watch(), "nodes-watch")
    rt.spawn(nodes.watch_silence(), "nodes-silence")
    rt.stack.push_async_callback(nodes.close)
    # joining nodes (docs/multihost.md): the control half records each one
    joins = Joins(rt.settings, nodes.register_join)
    await rt.serve_all({**Handlers(lc, nodes).endpoints(), **joins.endpoints()})
    await rt.serve_node(node.name, node.endpoints())  # the hub is a node like any other
    rt.spawn(joins.sweep_loop(), "join-token-sweep")
    try:
        await ensure_manager(lc)
    except Exception:  # the service still serves; `hive spawn hm1nd` can retry
        log.exception("could not create the manager")
    rt.spawn(auto_update_loop(lc), "lifecycle-auto-update")
