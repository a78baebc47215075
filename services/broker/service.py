"""Broker wiring: the subjects it serves and the loops it runs.

Handlers live in :mod:`hyperhive.broker.handlers`, SQL in
:mod:`hyperhive.broker.store`.
"""

from __future__ import annotations

from hyperhive.broker import store
from hyperhive.broker.handlers import Broker
from hyperhive.broker.known import KnownAgents
from hyperhive.broker.turns import Turns
from hyperhive.broker.wake import Waiters
from hyperhive.common import delivery
from hyperhive.common import endpoints as E
from hyperhive.common.errors import ConfigError
from hyperhive.common.service import SPECS, Runtime

# room left in a reply for everything around the turn events
_REPLY_MARGIN = 4096


async def start(rt: Runtime) -> None:
    """Follows the agent registry, starts group commit, consumes system events,
    serves every broker subject."""
    if rt.pool is None or rt.outbox is None:
        raise ConfigError("the broker needs its database")
    known = KnownAgents(rt.nc, timeout_s=rt.settings.nats.request_timeout_s / 2)
    await known.start()
    rt.stack.push_async_callback(known.stop)
    rt.spawn(known.load_forever(), "known-agents")

    waiters = Waiters(rt.nc)
    await waiters.start()
    rt.stack.push_async_callback(waiters.stop)
    rt.spawn(_release_on_stop(rt, waiters), "recv-release")

    relaxed = await store.open_relaxed_pool(
        rt.settings.database.url, SPECS[rt.part].schema or rt.part, rt.settings.database.pool_max
    )
    rt.stack.push_async_callback(relaxed.close)
    broker = Broker(rt.pool, relaxed, rt.outbox, rt.settings.broker, known, waiters, rt.stop)
    broker.start()
    rt.stack.push_async_callback(broker.stop)
    rt.spawn(broker.retain_forever(), "retention")
    # every system event for an inbox comes through HIVE_DELIVERIES
    rt.spawn(delivery.consume(rt.js, broker.deliver_event, rt.stop), "deliveries")
    turns = Turns(rt.js, max_bytes=max(rt.nc.max_payload - _REPLY_MARGIN, 64 * 1024))

    handlers = {
        E.SEND: broker.send,
        E.RECV: broker.recv,
        E.ACK: broker.ack,
        E.STATUS: broker.status,
        E.STATS: broker.ingest_stats,
        E.TURNS: turns.handle,
        E.DELIVER: broker.deliver,
        E.ADMIN_SEND: broker.admin_send,
        E.MESSAGES: broker.messages,
        E.INBOX: broker.inbox,
        E.PRUNE: broker.admin_prune,
        E.ADMIN_STATUS: broker.admin_status,
        E.TURN_STATS: broker.stats,
        E.USAGE: broker.usage,
    }
    await rt.serve_all(handlers)


async def _release_on_stop(rt: Runtime, waiters: Waiters) -> None:
    """When the service stops, waiting ``recv`` calls return ``empty`` at once."""
    await rt.stop.wait()
    waiters.notify_all()
