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
from hyperhive.common import delivery, subjects
from hyperhive.common.errors import ConfigError
from hyperhive.common.service import SPECS, Runtime
from hyperhive.common.wire.broker import (
    AckRequest,
    AdminSendRequest,
    DeliverRequest,
    InboxRequest,
    MessagesRequest,
    PruneRequest,
    RecvRequest,
    SendRequest,
    StatsRequest,
    StatusRequest,
    TurnsRequest,
    TurnStats,
    UsageRequest,
)

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

    serve = rt.responder.serve
    agent = subjects.agent_wildcard
    await serve(agent(subjects.AGENT_SEND), SendRequest, broker.send)
    await serve(agent(subjects.AGENT_RECV), RecvRequest, broker.recv)
    await serve(agent(subjects.AGENT_ACK), AckRequest, broker.ack)
    await serve(agent(subjects.AGENT_STATUS), StatusRequest, broker.status)
    await serve(agent(subjects.AGENT_STATS), TurnStats, broker.ingest_stats)
    await serve(agent(subjects.AGENT_TURNS), TurnsRequest, turns.handle)
    await serve(subjects.system("broker", "deliver"), DeliverRequest, broker.deliver)
    await serve(subjects.admin("broker", "send"), AdminSendRequest, broker.admin_send)
    await serve(subjects.admin("broker", "messages"), MessagesRequest, broker.messages)
    await serve(subjects.admin("broker", "inbox"), InboxRequest, broker.inbox)
    await serve(subjects.admin("broker", "prune"), PruneRequest, broker.admin_prune)
    await serve(subjects.admin("broker", "status"), StatusRequest, broker.admin_status)
    await serve(subjects.admin("broker", "stats"), StatsRequest, broker.stats)
    await serve(subjects.admin("broker", "usage"), UsageRequest, broker.usage)


async def _release_on_stop(rt: Runtime, waiters: Waiters) -> None:
    """When the service stops, waiting ``recv`` calls return ``empty`` at once."""
    await rt.stop.wait()
    waiters.notify_all()
